"""Command-line plumbing shared by the scripts: bad input ends in one line; a bug keeps its traceback."""
import argparse
import sys

from utils.errors import ONE_LINE_ERRORS, OneLineError, one_line


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors (unknown flag, bad value) are one line on stderr, exit code 2."""

    def error(self, message):
        self.exit(2, f'error: {message} (see --help)\n')


def run_cli(fn, opt):
    """Call ``fn(**vars(opt))``; bad input, a missing file, a failed write (``ONE_LINE_ERRORS``, utils/errors.py)
    ends the program with one line on stderr and a non-zero exit code. Any other exception (a bug) propagates with
    its traceback."""
    try:
        return fn(**vars(opt))
    except ONE_LINE_ERRORS as e:
        if isinstance(e, OneLineError) and e.exit_code != 1:
            print(f'error: {one_line(e)}', file=sys.stderr)
            sys.exit(e.exit_code)
        sys.exit(f'error: {one_line(e)}')  # SystemExit carries the line (printed to stderr, exit code 1)
    except KeyboardInterrupt:  # Ctrl-C outside training's own handling (set-up, validation, detect.py ...)
        print('interrupted', file=sys.stderr)
        sys.exit(130)

"""Command-line plumbing shared by the scripts: bad input ends in one line, never a traceback."""
import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors (unknown flag, bad value) are one line on stderr, exit code 2."""

    def error(self, message):
        self.exit(2, f'error: {message} (see --help)\n')


def run_cli(fn, opt):
    """Call ``fn(**vars(opt))``; a missing file or bad value raised by the library ends the program with one line."""
    try:
        return fn(**vars(opt))
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f'error: {e}')

"""utils/cli.py: bad input is one line on stderr; a bug deep in the training path keeps its traceback (file, line)."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from utils.cli import run_cli
from utils.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--cfg', 'v6/yolov5n.yaml', '--epochs', '1', '--imgsz', '64', '--batch-size', '4', '--workers', '0',
        '--noplots', '--noautoanchor']


def run_train(code, *args, cwd=ROOT):
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_input_errors_and_os_errors_are_one_line_others_propagate(capsys):
    def fail(error):
        def fn():
            raise error
        return fn

    for error, code in ((InputError('--x 3: bad'), 1), (FileNotFoundError(2, 'No such file', 'a.yaml'), 1)):
        with pytest.raises(SystemExit) as e:
            run_cli(lambda: fail(error)(), type('Opt', (), {})())
        assert str(e.value.code).startswith('error: ') and '\n' not in str(e.value.code)
    for bug in (ValueError('too many values to unpack (expected 2)'), KeyError('lr0'), TypeError('x')):
        with pytest.raises(type(bug)):  # a bug is not an input error: the traceback stays
            run_cli(lambda: fail(bug)(), type('Opt', (), {})())


@pytest.mark.slow
def test_malformed_label_via_the_cli_is_one_line(tmp_path):
    """A label file that cannot be read is named in one line (the scan counts it; with nothing left, the run stops
    with one line naming the source)."""
    from tests.conftest import shapes_yaml
    data = shapes_yaml(tmp_path, 4, 2)
    for label in (tmp_path / 'shapes' / 'labels' / 'train').glob('*.txt'):
        label.write_text('0 0.5 0.5 0.2\n')  # four columns: malformed
    out = run_train('import sys, train; train.cli(sys.argv[1:])', '--data', data, *TINY,
                    '--project', tmp_path / 'runs')
    assert out.returncode == 1, out.stderr[-2000:]
    assert 'Traceback' not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and 'images/train' in last and 'no usable images' in last, last


@pytest.mark.slow
def test_a_bug_in_the_training_path_keeps_its_traceback(tiny_shapes, tmp_path):
    """A ValueError from a programming error (here an unpacking bug injected into the epoch) is not an input
    error: the CLI shows the traceback with the file and line where it happened."""
    code = '''
        import sys, train
        from utils.train import engine
        def buggy_warmup(hyp, nb, epochs):
            first, second = [nb]  # the bug: unpacks one value into two
            return first
        engine.warmup_iterations = buggy_warmup
        train.cli(sys.argv[1:])
    '''
    out = run_train(code, '--data', tiny_shapes, *TINY, '--project', tmp_path / 'runs')
    assert out.returncode == 1
    assert 'Traceback (most recent call last)' in out.stderr
    assert 'ValueError: not enough values to unpack (expected 2, got 1)' in out.stderr
    assert 'utils/train/engine.py", line' in out.stderr and 'line 5, in buggy_warmup' in out.stderr

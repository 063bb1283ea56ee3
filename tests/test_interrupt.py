"""SIGINT / SIGTERM sent to a real train.py: stop after the current batch with a last.pt that resumes exactly;
a second signal exits at once."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from utils.weights.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # training subprocesses

# train.py with every loss computation slowed by SLOW_STEP seconds (numerics untouched), touching STEP_FILE when
# the training loop is running, so that a test can send its signal in the middle of an epoch.
SLOWED_TRAIN = '''
import os, sys, time
from pathlib import Path
import utils.train.loss
real_call = utils.train.loss.ComputeLoss.__call__
def slow_call(self, *args, **kwargs):
    Path(os.environ['STEP_FILE']).touch()
    time.sleep(float(os.environ['SLOW_STEP']))
    return real_call(self, *args, **kwargs)
utils.train.loss.ComputeLoss.__call__ = slow_call
import train
train.cli(sys.argv[1:])
'''


def start_slowed(cmd, tmp_path, slow, group=False):
    env = {**os.environ, 'STEP_FILE': str(tmp_path / 'stepping'), 'SLOW_STEP': str(slow)}
    return subprocess.Popen([sys.executable, '-c', SLOWED_TRAIN, *cmd[2:]], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=group)


def wait_for(condition, proc, timeout=300):
    deadline = time.time() + timeout
    while not condition() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, 'train.py ended before the signal: ' + proc.communicate()[1][-2000:]


def last_line(text):
    return text.strip().splitlines()[-1]


def test_sigint_mid_epoch_saves_and_resumes_exactly(tmp_path, tiny_shapes, train_cmd):
    # batch 2: four batches per epoch; the signal arrives during the second epoch
    cmd = train_cmd(tiny_shapes, tmp_path / 'runs', '--batch-size', '2', '--name', 'cut', epochs=2)
    proc = start_slowed(cmd, tmp_path, 0.3)
    last = tmp_path / 'runs' / 'cut' / 'weights' / 'last.pt'
    wait_for(last.exists, proc)
    (tmp_path / 'stepping').unlink()
    wait_for((tmp_path / 'stepping').exists, proc)  # epoch 2's first step has begun
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert 'SIGINT: stopping after the current batch' in out
    line = last_line(err)
    assert line.startswith('error: SIGINT: stopped epoch 2/2 after batch ') and line.endswith(
        f'saved {last}; resume with: python train.py --resume {last}'), err[-2000:]
    ck = load_checkpoint(last)
    batch = ck['resume_at']['batch']
    assert ck['epoch'] == 0 and ck['optimizer'] is not None and 1 <= batch < 4 and f'batch {batch}/4' in line
    assert ck['pending_grads']  # batch 2 accumulates towards 64 images: the stop fell inside an accumulation
    train.run(resume=str(last), workers=0)  # the command the message gives, from Python
    full = tmp_path / 'runs' / 'full' / 'weights' / 'last.pt'
    train.cli(train_cmd(tiny_shapes, tmp_path / 'runs', '--batch-size', '2', '--name', 'full', epochs=2)[2:])
    a, b = load_checkpoint(last), load_checkpoint(full)
    assert a['epoch'] == b['epoch'] == 1 and 'resume_at' not in a
    for k in a['ema']:  # the interrupted + resumed run ends bit-identical to the uninterrupted one
        assert torch.equal(a['ema'][k], b['ema'][k]), k


def test_sigterm_to_the_process_group_with_a_loader_worker(tmp_path, tiny_shapes, train_cmd):
    cmd = train_cmd(tiny_shapes, tmp_path / 'runs', '--batch-size', '2', epochs=2)
    cmd[cmd.index('--workers') + 1] = '1'
    proc = start_slowed(cmd, tmp_path, 0.3, group=True)
    wait_for((tmp_path / 'stepping').exists, proc)
    os.killpg(proc.pid, signal.SIGTERM)  # as a scheduler or `kill -- -PGID` does: the worker gets it too
    out, err = proc.communicate(timeout=300)
    last = tmp_path / 'runs' / 'exp' / 'weights' / 'last.pt'
    assert proc.returncode == 143 and 'Traceback' not in err, err[-2000:]
    assert last_line(err).startswith('error: SIGTERM: stopped ') and f'--resume {last}' in last_line(err)
    ck = load_checkpoint(last)
    assert ck['optimizer'] is not None and (ck['epoch'] >= 0 or ck['resume_at']['batch'] >= 1)


def test_second_signal_exits_at_once(tmp_path, tiny_shapes, train_cmd):
    cmd = train_cmd(tiny_shapes, tmp_path / 'runs', epochs=2)
    proc = start_slowed(cmd, tmp_path, 120)  # a step that would take two minutes
    wait_for((tmp_path / 'stepping').exists, proc)
    proc.send_signal(signal.SIGINT)
    wait_for(lambda: False, proc, timeout=1)  # the first one is handled: the process goes on
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=100)  # far less than the step: only an immediate exit gets here
    assert proc.returncode == 130
    assert last_line(err) == 'SIGINT again: exiting now; the last complete last.pt stays valid'
    assert not (tmp_path / 'runs' / 'exp' / 'weights' / 'last.pt').exists()  # nothing half-written either

"""Runs started at the same moment with the same --project/--name get distinct expN folders."""
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from utils.runs import increment_path

ROOT = Path(__file__).resolve().parents[1]

# train.py behind a start gate: import everything, say "ready", wait for "go", then run (so both runs reach
# their run-folder choice together instead of one import time apart). Every mkdir takes 0.2 s, as on a slow
# network filesystem: it widens the gap between looking for a free folder and creating it.
GATED_TRAIN = '''
import sys, time
from pathlib import Path
real_mkdir = Path.mkdir
def slow_mkdir(self, *args, **kwargs):
    time.sleep(0.2)
    return real_mkdir(self, *args, **kwargs)
Path.mkdir = slow_mkdir
import train
gate = Path(sys.argv[1])
(gate / f'ready{sys.argv[2]}').touch()
while not (gate / 'go').exists():
    time.sleep(0.001)
train.cli(sys.argv[3:])
'''


def test_threads_claim_distinct_folders(tmp_path, monkeypatch):
    n = 12
    barrier, claimed = threading.Barrier(n), []
    real_mkdir = Path.mkdir

    def slow_mkdir(self, *args, **kwargs):  # a slow filesystem: others may look while one creates
        time.sleep(0.01)
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, 'mkdir', slow_mkdir)

    def claim():
        barrier.wait()
        claimed.append(increment_path(tmp_path / 'runs' / 'exp', mkdir=True))

    threads = [threading.Thread(target=claim) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = sorted(p.name for p in claimed)
    assert len(set(names)) == n and all(p.is_dir() for p in claimed)
    assert names == sorted(['exp'] + [f'exp{i}' for i in range(2, n + 1)])


@pytest.mark.slow
def test_two_train_processes_started_together(tmp_path, tiny_shapes, train_cmd):
    argv = train_cmd(tiny_shapes, tmp_path / 'runs', '--name', 'same', epochs=1)[2:]
    procs = [subprocess.Popen([sys.executable, '-c', GATED_TRAIN, str(tmp_path), str(i), *argv], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    deadline = time.time() + 120
    while not all((tmp_path / f'ready{i}').exists() for i in range(2)) and time.time() < deadline:
        time.sleep(0.01)
    (tmp_path / 'go').touch()
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    folders = sorted(p.name for p in (tmp_path / 'runs').iterdir())
    assert folders == ['same', 'same2']
    saved_to = [{line.split('Results saved to ')[1].split(':')[0] for line in out.splitlines()
                 if 'Results saved to' in line} for out, _ in outs]  # each run reports its own folder only
    assert sorted(s.pop() for s in saved_to if len(s) == 1) == [str(tmp_path / 'runs' / f) for f in folders]
    for f in folders:  # one epoch each: a shared folder would hold two results rows
        rows = (tmp_path / 'runs' / f / 'results.csv').read_text().strip().splitlines()
        assert len(rows) == 2, f
        assert (tmp_path / 'runs' / f / 'weights' / 'last.pt').is_file()

"""utils.runs.keep_freed_memory: glibc keeps freed memory, so repeated forwards stop page-faulting it back in.
Each check runs in a subprocess: the setting is process-wide. glibc's own thresholds move with what the process
did before, so the subprocess first fixes them at their documented starting values, which hand memory back."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc mallopt')]

FAULTS = """
import ctypes, resource, torch
from utils.runs import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, keep_freed_memory

def faults_per_round(n=5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        maps = [torch.ones(2_000_000) for _ in range(3)]  # three 8 MB tensors alive at once, as a forward's are
        del maps
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n

mallopt = ctypes.CDLL(None).mallopt
mallopt(M_TRIM_THRESHOLD, 128 * 1024)  # glibc's documented starting values, fixed: trim and mmap at 128 KiB, so
mallopt(M_MMAP_THRESHOLD, 128 * 1024)  # that 'before' faults whatever this process allocated earlier
faults_per_round()
default = faults_per_round()
kept = keep_freed_memory()
faults_per_round(8)  # the heap settles in a few rounds
print(kept, default, faults_per_round())
"""


def run_faults(env):
    out = subprocess.run([sys.executable, '-c', FAULTS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    kept, default, after = out.stdout.split()
    return kept == 'True', float(default), float(after)


def test_freed_memory_is_kept_and_no_longer_faulted_in_again():
    env = {k: v for k, v in os.environ.items() if not k.startswith('MALLOC_')}
    kept, default, after = run_faults(env)
    assert kept
    assert default > 1000  # glibc trimming at 128 KiB hands the 24 MB back and faults it in again each round
    assert after < default / 20


def test_a_users_own_malloc_setting_wins():
    kept, _, _ = run_faults({**os.environ, 'MALLOC_ARENA_MAX': '2'})
    assert not kept

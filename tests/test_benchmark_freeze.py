"""benchmarks/freeze.py's worker: the GPU step candidates (--channels-last, --optimizer-impl) run on CPU too."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_worker_runs_the_step_candidates_and_records_them(tiny_shapes):
    out = subprocess.run([sys.executable, 'benchmarks/freeze.py', '--worker', '--freeze', '10', '--cfg',
                          'v6/yolov5n.yaml', '--data', str(tiny_shapes), '--imgsz', '64', '--batch-size', '2',
                          '--iters', '2', '--warmup', '1', '--channels-last', '--optimizer-impl', 'fused'],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row['channels_last'] is True and row['optimizer_impl'] == 'fused'
    assert row['freeze'] == '10' and row['images_per_s'] > 0 and row['frozen_flops_share'] > 0

"""Where a run's time goes (utils/runs.py) and the cuts to what is not training (utils/train/trainer.py)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import val
from utils.runs import PhaseTimer, seconds_since_process_start

ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_phase_timer_sums_phases_and_keeps_them_per_epoch():
    clock = FakeClock()
    timer = PhaseTimer(clock=clock, already=2.0)
    timer.add('imports', 2.0)
    for epoch in range(2):
        with timer.phase('train', epoch):
            clock.t += 3.0
        clock.t += 0.5  # outside any phase: 'other'
        with timer.phase('val', epoch):
            clock.t += 1.0
    assert timer.totals == {'imports': 2.0, 'train': 6.0, 'val': 2.0}
    assert timer.per_epoch['train'] == {0: 3.0, 1: 3.0}
    assert timer.wall() == pytest.approx(11.0) and timer.other() == pytest.approx(1.0)
    assert timer.summary() == 'Time: 11.0 s = imports 2.0 + train 6.0 (2 ep) + val 2.0 (2 ep) + other 1.0'
    table = timer.table()
    assert 'wall time' in table and re.search(r'^1\s+3\.00\s+1\.00$', table, re.M)


def test_phases_do_not_nest_and_count_a_phase_that_raised():
    timer = PhaseTimer(clock=FakeClock())
    with pytest.raises(RuntimeError, match="opened inside phase 'train'"):
        with timer.phase('train'):
            with timer.phase('val'):
                pass
    assert 'train' in timer.totals and 'val' not in timer.totals
    with timer.phase('val'):  # the timer is usable again
        pass
    assert 'val' in timer.totals


def test_process_start_is_read_on_linux():
    since = seconds_since_process_start()
    if sys.platform.startswith('linux'):
        assert since is not None and 0 < since < 24 * 3600
    timer = PhaseTimer.since_process_start()
    assert ('imports' in timer.totals) == (since is not None)


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    """One 1-epoch CLI run with plots (its stdout), on 64 px shapes."""
    from utils.data.shapes import ensure_shapes
    root = tmp_path_factory.mktemp('phases')
    ensure_shapes(root / 'shapes', splits={'train': 16, 'val': 8}, img_size=128)
    data = root / 'tiny.yaml'
    data.write_text('path: shapes\ntrain: images/train\nval: images/val\nnc: 4\nnames: [a, b, c, d]\n')
    cmd = [sys.executable, 'train.py', '--data', data, '--cfg', 'v6/yolov5n.yaml', '--imgsz', '64', '--epochs', '1',
           '--batch-size', '8', '--workers', '0', '--project', root / 'runs', '--name', 'exp', '--weights', '']
    out = subprocess.run([str(c) for c in cmd], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout, root / 'runs' / 'exp', data


@pytest.mark.slow
def test_train_ends_with_one_line_breakdown_that_adds_up(tiny_run):
    stdout, _, _ = tiny_run
    last = stdout.strip().splitlines()[-1]
    m = re.fullmatch(r'Time: ([\d.]+) s = (.*)', last)
    assert m, last
    parts = dict(re.fullmatch(r'(.+?) ([\d.]+)(?: \(\d+ ep\))?', p).groups() for p in m.group(2).split(' + '))
    for name in ('imports', 'scans and caches', 'model build and transfer', 'labels plot', 'autoanchor', 'train',
                 'val', 'checkpoint and plots', 'final val', 'other'):
        assert name in parts, (name, last)
    assert sum(float(v) for v in parts.values()) <= float(m.group(1)) + 0.05 * len(parts)  # rounding to 0.1 s


@pytest.mark.slow
def test_best_pt_is_linked_and_the_final_val_is_what_val_py_measures(tiny_run, tmp_path, capsys):
    import train
    _, run_dir, data = tiny_run
    for f in ('results.png', 'results.csv', 'labels.jpg', 'PR_curve.png', 'confusion_matrix.png', 'val_batch0_pred.jpg'):
        assert (run_dir / f).is_file(), f
    for k, weights in enumerate(('', str(run_dir / 'weights/best.pt'))):  # from scratch, then a fine-tune of it
        returned = train.run(data=str(data), cfg='v6/yolov5n.yaml', imgsz=64, epochs=1, batch_size=8, workers=0,
                             weights=weights, project=str(tmp_path), name=f'exp{k}', noplots=True)
        w = tmp_path / f'exp{k}' / 'weights'
        ck = __import__('torch').load(w / 'best.pt', weights_only=True)
        # one epoch: the last epoch is the best, so best.pt is last.pt's checkpoint, one file, stripped once
        assert ck['epoch'] == 0 and os.path.samefile(w / 'best.pt', w / 'last.pt')
        r = val.run(weights=str(w / 'best.pt'), data=str(data), imgsz=64, batch_size=16, workers=0,
                    project=str(tmp_path / 'val'))  # the trainer's val loader: batch 2 x 8, rectangular
        assert (r.p, r.r, r.map50, r.map, r.seen) == (returned.p, returned.r, returned.map50, returned.map,
                                                     returned.seen)


@pytest.mark.slow
def test_inference_decode_equals_the_differentiable_one_bit_for_bit():
    import torch
    from models.yolo import Model
    torch.manual_seed(0)
    model = Model('v6/yolov5n.yaml', nc=7).eval()
    for shape in ((2, 3, 128, 96), (3, 3, 64, 160)):
        x = torch.rand(shape)
        with torch.no_grad():
            fast, raw = model(x)  # decode_into
        slow = model(x)[0].detach()  # with autograd: per-level decode and concatenation
        assert fast.shape == slow.shape == (shape[0], sum(r[0].numel() // 12 for r in raw), 12)
        assert torch.equal(fast, slow)


def test_class_aware_nms_equals_torchvision_batched_nms():
    import torch
    import torchvision
    from utils.boxes import class_aware_nms
    g = torch.Generator().manual_seed(0)
    for n in (0, 7, 900, 1001, 4000):  # both sides of the 4000-coordinate switch
        boxes = torch.rand(n, 4, generator=g) * 500
        boxes[:, 2:] += boxes[:, :2] * 0.3 + 1
        scores, classes = torch.rand(n, generator=g), torch.randint(0, 20, (n,), generator=g)
        assert torch.equal(class_aware_nms(boxes, scores, classes, 0.5),
                           torchvision.ops.batched_nms(boxes, scores, classes, 0.5))



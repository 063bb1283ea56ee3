"""Training on a CUDA device: AMP with a frozen backbone, and --deterministic resume.

These need a GPU and skip elsewhere (CI has none); they were run on the device machine (docs/development.md, "Tests").
"""
from pathlib import Path

import pytest
import torch

import detect
import train
import val
from test_train import FAST, assert_same_ema, kill_after_epoch, run_train  # tests/ is on sys.path (pytest rootdir)
from utils.boxes import box_iou
from utils.weights.checkpoint import load_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
SHARED = Path(__file__).resolve().parents[1].parent / 'shared'
YOLOV5N, COCO64 = SHARED / 'weights/yolov5n.pt', SHARED / 'data/coco64dev/coco64dev.yaml'
needs_shared = pytest.mark.skipif(not (YOLOV5N.is_file() and COCO64.is_file()), reason='../shared not present')


def test_amp_fine_tune_keeps_frozen_tensors_bit_identical(tiny_data, tmp_path):
    """AMP (FP16 autocast, GradScaler) on CUDA: model.0-9 weights and BN buffers unchanged, the rest trained."""
    src = run_train(tmp_path, tiny_data, 'src', epochs=1, device='0') / 'last.pt'
    start = load_checkpoint(src)['ema']
    w = run_train(tmp_path, tiny_data, 'ft', epochs=2, weights=str(src), freeze=['10'], noautoanchor=True,
                  device='0')
    end = load_checkpoint(w / 'last.pt')['ema']
    changed = [k for k in start if not torch.equal(start[k], end[k].to(start[k].dtype))]
    assert not [k for k in changed if int(k.split('.')[1]) < 10], changed  # model.0-9: weights and BN buffers
    assert any(k.endswith('running_mean') for k in changed), changed  # the rest trained (GradScaler may skip
    # the few optimizer steps of so short a run on overflow, but BatchNorm statistics move in every forward)


def test_deterministic_resume_after_sigkill_matches_uninterrupted(tiny_data, tmp_path):
    """--deterministic on CUDA: a run killed after epoch 0 and resumed ends bit-identical to one never stopped."""
    assert FAST['workers'] == 0
    full = run_train(tmp_path, tiny_data, 'full', epochs=3, device='0', deterministic=True)
    last = kill_after_epoch(tmp_path, tiny_data, 'killed', 0, extra=['--device', '0', '--deterministic'])
    train.run(resume=str(last), workers=0)
    assert_same_ema(full / 'last.pt', last)


@needs_shared
def test_fp16_val_on_cuda_agrees_with_fp32_on_cpu(tmp_path):
    kw = dict(weights=str(YOLOV5N), data=str(COCO64), imgsz=320, workers=0, project=str(tmp_path), plots=False)
    cpu = val.run(device='cpu', name='cpu', **kw)
    gpu = val.run(device='0', half=True, name='gpu', **kw)
    assert cpu.seen == gpu.seen == 64 and cpu.map50 > 0.3
    assert abs(gpu.map50 - cpu.map50) < 0.01 and abs(gpu.map - cpu.map) < 0.01


@needs_shared
def test_fp16_detect_on_cuda_finds_what_fp32_on_cpu_finds(tmp_path):
    kw = dict(weights=str(YOLOV5N), source=str(SHARED / 'images'), imgsz=640, nosave=True, verbose=False,
              project=str(tmp_path))
    cpu = detect.run(device='cpu', **kw)
    gpu = detect.run(device='0', half=True, **kw)
    assert [r['path'] for r in cpu] == [r['path'] for r in gpu] and len(cpu) >= 2
    for a, b in zip(cpu, gpu):
        a, b = a['det'].cpu().float(), b['det'].cpu().float()
        assert len(a) == len(b) > 0 and torch.equal(a[:, 5].sort().values, b[:, 5].sort().values)
        iou = box_iou(a[:, :4], b[:, :4]) * (a[:, 5:6] == b[:, 5].view(1, -1))  # same class only
        assert iou.max(1).values.min() > 0.95  # every FP32 box has its FP16 twin

"""train.py's upstream options end to end on a tiny generated set (v6/yolov5n, 64 px, 1-2 epochs)."""
import shutil
import sys
from pathlib import Path

import pytest
import torch

import train
from utils.weights.checkpoint import load_checkpoint
from utils.data.sizes import MultiScale
from utils.eval.report import read_rows

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared'
FAST = dict(cfg='v6/yolov5n.yaml', imgsz=64, batch_size=8, workers=0, noplots=True, noautoanchor=True)


def run_train(tmp_path, data, name, **kw):
    opts = {**FAST, 'data': str(data), 'project': str(tmp_path / 'runs'), 'name': name, **kw}
    train.run(**opts)
    return tmp_path / 'runs' / name


@pytest.mark.slow
def test_multi_scale_trains_on_batches_of_varying_size(tiny_data, tmp_path, monkeypatch):
    shapes = []
    original = MultiScale.__call__

    def spy(self, imgs, epoch, batch_i):
        out = original(self, imgs, epoch, batch_i)
        shapes.append(tuple(out.shape[2:]))
        return out

    monkeypatch.setattr(MultiScale, '__call__', spy)
    run_dir = run_train(tmp_path, tiny_data, 'ms', epochs=1, batch_size=2, multi_scale=True, noval=True)
    assert len(shapes) == 8  # every one of the 8 batches through MultiScale
    assert set(shapes) <= {(32, 32), (64, 64), (96, 96)} and len(set(shapes)) >= 2
    assert (run_dir / 'weights' / 'last.pt').is_file()


@pytest.mark.slow
def test_image_weights_multi_scale_and_save_period_resume_exactly(tiny_shapes, tmp_path):
    kw = dict(epochs=2, image_weights=True, multi_scale=True, save_period=1, seed=5)
    full = run_train(tmp_path, tiny_shapes, 'full', **kw)
    weights = sorted(p.name for p in (full / 'weights').iterdir())
    assert weights == ['best.pt', 'epoch0.pt', 'epoch1.pt', 'last.pt']
    assert load_checkpoint(full / 'weights' / 'epoch0.pt')['optimizer'] is not None  # resumable
    resumed = tmp_path / 'runs' / 'resumed'
    shutil.copytree(full, resumed)
    for name in ('last.pt', 'best.pt', 'epoch1.pt'):
        (resumed / 'weights' / name).unlink()  # as if the run had died after its first epoch
    train.run(resume=str(resumed / 'weights' / 'epoch0.pt'), workers=0)
    a, b = (load_checkpoint(d / 'weights' / 'last.pt')['ema'] for d in (full, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same draws and sizes replayed: bit-identical
    assert (resumed / 'weights' / 'epoch1.pt').is_file()


@pytest.mark.slow
def test_tensorboard_scalars_and_images_from_a_run(tiny_shapes, trained_run, tmp_path, capsys):
    accumulator = pytest.importorskip('tensorboard.backend.event_processing.event_accumulator')
    src = trained_run / 'weights' / 'last.pt'
    run_dir = run_train(tmp_path, tiny_shapes, 'tb', epochs=1, noplots=False, weights=str(src))  # pretrained start
    assert f'tensorboard --logdir {run_dir.parent}' in capsys.readouterr().out
    acc = accumulator.EventAccumulator(str(run_dir), size_guidance={'images': 0, 'scalars': 0})
    acc.Reload()
    scalars = set(acc.Tags()['scalars'])
    for tag in ('train/box_loss', 'train/obj_loss', 'train/cls_loss', 'metrics/precision', 'metrics/recall',
                'metrics/mAP_0.5', 'metrics/mAP_0.5:0.95', 'val/box_loss', 'x/lr0', 'x/lr1', 'x/lr2'):
        assert tag in scalars, tag
        assert [e.step for e in acc.Scalars(tag)] == [0]
    rows = read_rows(run_dir / 'results.csv')
    assert [r['epoch'] for r in rows] == [-1, 0]  # the zero-shot row, then epoch 0
    assert [e.value for e in acc.Scalars('x/lr0')] == pytest.approx([rows[1]['x/lr0']], rel=1e-3)
    baseline = acc.Scalars('baseline/mAP_0.5')  # the zero-shot evaluation of the starting weights
    assert [e.step for e in baseline] == [0] and baseline[0].value == pytest.approx(rows[0]['metrics/mAP_0.5'],
                                                                                    rel=1e-3, abs=1e-5)
    assert {'baseline/precision', 'baseline/recall', 'baseline/mAP_0.5:0.95'} <= scalars
    assert set(acc.Tags()['images']) == {'train/batch0', 'val/PR_curve'}


@pytest.mark.slow
def test_without_tensorboard_training_says_so_and_writes_no_events(tiny_data, tmp_path, capsys, monkeypatch):
    """Also: a tutorial command (no --weights) is told where it differs; --nosave writes no epoch files."""
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)
    run_dir = run_train(tmp_path, tiny_data, 'notb', epochs=1, noval=True, weights=None, save_period=1, nosave=True)
    out = capsys.readouterr().out
    assert out.count('TensorBoard: off (pip install tensorboard to log this run)') == 1
    assert not list(run_dir.glob('events.out.tfevents.*'))
    assert (run_dir / 'results.csv').is_file()
    lines = [ln for ln in out.splitlines() if ln.startswith('Differs from upstream')]
    assert len(lines) == 1 and 'no --weights: training from scratch' in lines[0]
    assert not list((run_dir / 'weights').glob('epoch*.pt'))


def test_autobatch_refused_on_cpu_before_anything_is_built(tiny_data, tmp_path):
    with pytest.raises(ValueError, match=r'^--batch-size -1 \(AutoBatch\) needs a CUDA device'):
        run_train(tmp_path, tiny_data, 'ab', epochs=1, batch_size=-1, device='cpu')
    assert not (tmp_path / 'runs').exists()


@pytest.mark.slow
def test_cache_disk_writes_npy_beside_writable_images(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv('YOLOV5_FREEZE_CACHE', str(tmp_path / 'cache'))
    shutil.copytree(tiny_data.parent / 'shapes', tmp_path / 'shapes')  # a copy: the shared set stays .npy-free
    data = tmp_path / 'tiny.yaml'
    data.write_text(tiny_data.read_text())
    images = tmp_path / 'shapes' / 'images'
    run_train(tmp_path, data, 'disk', epochs=1, cache='disk', noval=True)
    for split in ('train', 'val'):
        pngs = sorted(p.name for p in (images / split).glob('*.*') if p.suffix != '.npy')
        assert sorted(p.stem for p in (images / split).glob('*.npy')) == pngs  # a.png -> a.png.npy
    assert not (tmp_path / 'cache').exists()


@pytest.mark.skipif(not (SHARED / 'data' / 'coco64dev').is_dir(), reason='../shared/data/coco64dev not present')
def test_cache_disk_never_writes_into_the_read_only_share(tmp_path, monkeypatch):
    from utils.data.datasets import check_dataset, create_dataloader
    monkeypatch.setenv('YOLOV5_FREEZE_CACHE', str(tmp_path / 'cache'))
    data = check_dataset(next((SHARED / 'data' / 'coco64dev').glob('*.yaml')))
    before = sorted(str(p) for p in (SHARED / 'data').rglob('*'))
    loader, ds = create_dataloader(data['val'], 64, 4, 32, data=data, cache='disk', workers=0, verbose=False)
    first = ds[0][0]
    assert sorted(str(p) for p in (SHARED / 'data').rglob('*')) == before
    cached = list((tmp_path / 'cache').rglob('*.npy'))
    assert len(cached) == 1
    ds.disk_cache = False
    assert torch.equal(ds[0][0], first)  # the .npy holds the same pixels as decoding the image

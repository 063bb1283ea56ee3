"""Damaged and foreign .pt files are named in one line; a failed checkpoint write keeps the previous one."""
import errno
import io
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torchvision

from models.yolo import Model
from utils.weights.checkpoint import FORMAT, load_checkpoint, load_model, read_weights, save_checkpoint
from utils.errors import WriteFailed

ROOT = Path(__file__).resolve().parents[1]


def fake_module(monkeypatch, name, **classes):
    """Register an importable module ``name`` holding ``classes`` (so torch.save can pickle them by name)."""
    mod = types.ModuleType(name)
    for cls_name, cls in classes.items():
        cls.__module__, cls.__qualname__ = name, cls_name
        setattr(mod, cls_name, cls)
    monkeypatch.setitem(sys.modules, name, mod)
    return mod


def save_ultralytics_lookalike(monkeypatch, path, extra=None):
    """A file laid out like an Ultralytics YOLOv8 checkpoint: its pickle names ``ultralytics.nn.*`` classes."""
    class Conv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.act = torch.nn.Conv2d(3, 16, 3, 2, 1), torch.nn.BatchNorm2d(16), torch.nn.SiLU()

    class DetectionModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Sequential(Conv())
            self.yaml = {'nc': 80, 'scales': {'n': [0.33, 0.25, 1024]}, 'backbone': [], 'head': []}
            self.names = {0: 'person'}

    for name in ('ultralytics', 'ultralytics.nn', 'ultralytics.nn.modules'):
        fake_module(monkeypatch, name)
    fake_module(monkeypatch, 'ultralytics.nn.modules.conv', Conv=Conv)
    fake_module(monkeypatch, 'ultralytics.nn.tasks', DetectionModel=DetectionModel)
    model = DetectionModel().half()
    if extra is not None:
        model.extra = extra
    torch.save({'date': '2024-01-01T00:00:00', 'version': '8.1.0', 'license': 'AGPL-3.0', 'epoch': -1,
                'best_fitness': None, 'model': model, 'ema': None, 'updates': None, 'optimizer': None,
                'train_args': {'task': 'detect', 'imgsz': 640}}, path)
    return path


@pytest.fixture(scope='module')
def ours(tmp_path_factory):
    m = Model('v6/yolov5n.yaml', nc=2)
    ckpt = {'format': FORMAT, 'yaml': m.yaml, 'names': ['a', 'b'], 'nc': 2, 'model': m.state_dict(), 'ema': None,
            'optimizer': {}, 'epoch': 0}
    return m, save_checkpoint(ckpt, tmp_path_factory.mktemp('ours') / 'last.pt')


def truncated(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[:len(data) // 2])
    return dst


def make_foreign(kind, tmp_path, ours, monkeypatch):
    m, ckpt = ours
    path = tmp_path / f'{kind}.pt'
    if kind == 'zero_byte':
        path.touch()
    elif kind == 'truncated_zip':
        truncated(ckpt, path)
    elif kind == 'truncated_legacy':
        legacy = tmp_path / 'legacy.pt'
        torch.save(load_checkpoint(ckpt), legacy, _use_new_zipfile_serialization=False)
        truncated(legacy, path)
    elif kind == 'text':
        path.write_text('version https://git-lfs.github.com/spec/v1\noid sha256:0\n')  # an LFS pointer
    elif kind == 'state_dict':
        torch.save(m.state_dict(), path)
    elif kind == 'torchvision_state_dict':
        torch.save(torchvision.models.squeezenet1_1().state_dict(), path)
    elif kind == 'torchvision_model':
        torch.save(torchvision.models.squeezenet1_1(), path)
    elif kind == 'other_tool_dict':
        torch.save({'epoch': 3, 'state_dict': m.state_dict()}, path)
    elif kind == 'yolov8':
        save_ultralytics_lookalike(monkeypatch, path)
    return path


FOREIGN = {
    'zero_byte': 'an empty file (0 bytes)',
    'truncated_zip': 'truncated: the zip archive torch.save writes ends early',
    'truncated_legacy': 'truncated: a legacy PyTorch pickle that ends early',
    'text': "not a PyTorch file (it starts with text 'version https://git-lfs",
    'state_dict': "a plain state_dict (349 tensors, first 'model.0.conv.weight') with no model YAML",
    'torchvision_state_dict': "a plain state_dict (52 tensors, first 'features.0.weight')",
    'torchvision_model': 'a pickled torchvision model (torchvision.models.squeezenet.SqueezeNet), not a YOLOv5',
    'other_tool_dict': "another tool's checkpoint: a state_dict of 349 tensors under 'state_dict'",
    'yolov8': 'an Ultralytics (YOLOv8-style) checkpoint, its pickle names ultralytics.nn.tasks.DetectionModel',
}


@pytest.mark.parametrize('kind', FOREIGN)
def test_foreign_or_damaged_weights_are_named_in_one_line(kind, tmp_path, ours, monkeypatch):
    path = make_foreign(kind, tmp_path, ours, monkeypatch)
    for loader in (read_weights, load_model, load_checkpoint):  # --weights / detect / val, and --resume
        with pytest.raises(ValueError) as e:
            loader(path)
        msg = str(e.value)
        assert msg.startswith(f'{path}: ') and FOREIGN[kind] in msg and '\n' not in msg, (loader.__name__, msg)


def test_official_pickles_with_foreign_classes_stay_refused(tmp_path, monkeypatch):
    marker = tmp_path / 'ran'

    class Evil:
        def __reduce__(self):
            return os.system, (f'touch {marker}',)

    v8 = save_ultralytics_lookalike(monkeypatch, tmp_path / 'v8_evil.pt', extra=Evil())
    official = tmp_path / 'official_tv.pt'
    model = Model('v6/yolov5n.yaml', nc=1)
    model.model[0].extra = torchvision.ops.FrozenBatchNorm2d(4)  # a torchvision class inside a YOLOv5 model
    torch.save({'model': model}, official)
    with pytest.raises(ValueError, match='Ultralytics .* refused'):
        read_weights(v8)
    with pytest.raises(ValueError, match=r'refused to load, the pickle names torchvision\.ops\.misc\.FrozenBatch'):
        read_weights(official)
    assert not marker.exists()


@pytest.mark.slow
def test_cli_names_the_file_in_one_line(tmp_path, ours, monkeypatch):
    zero = make_foreign('zero_byte', tmp_path, ours, monkeypatch)
    cut = make_foreign('truncated_zip', tmp_path, ours, monkeypatch)
    for cmd, expected in ((['detect.py', '--weights', str(zero), '--source', str(tmp_path)], 'empty file'),
                          (['train.py', '--resume', str(cut)], 'truncated')):
        out = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True, timeout=300)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 1 and len(lines) == 1 and expected in lines[0], out.stderr[-2000:]


def failing_save(fail_from_epoch, written=None):
    """A torch.save that writes half the file and then fails like a full disk for epochs >= ``fail_from_epoch``."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get('epoch', -1) >= fail_from_epoch:
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            f.write(buf.getvalue()[:buf.tell() // 2])
            if written is not None:
                written.append(obj['epoch'])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)
    return save


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch, ours):
    _, src = ours
    last = tmp_path / 'w' / 'last.pt'
    save_checkpoint(load_checkpoint(src), last)
    before = last.read_bytes()
    monkeypatch.setattr(torch, 'save', failing_save(0))
    with pytest.raises(WriteFailed) as e:
        save_checkpoint(load_checkpoint(src), last)
    assert str(e.value) == (f'{last}: checkpoint not saved ([Errno 28] No space left on device); '
                            f'the previous last.pt is unchanged')
    assert last.read_bytes() == before and [p.name for p in last.parent.iterdir()] == ['last.pt']
    with pytest.raises(WriteFailed, match='new.pt: checkpoint not saved .*; no file was written'):
        save_checkpoint(load_checkpoint(src), tmp_path / 'w' / 'new.pt')


@pytest.mark.slow
def test_training_stops_in_one_line_when_the_disk_fills(tmp_path, monkeypatch, capsys, tiny_shapes, train_cmd):
    import train
    attempts = []
    monkeypatch.setattr(torch, 'save', failing_save(1, attempts))
    with pytest.raises(SystemExit) as e:
        train.cli(train_cmd(tiny_shapes, tmp_path / 'runs', epochs=3)[2:])  # in this process, torch.save patched
    err = capsys.readouterr().err  # progress bars, then the error
    weights = tmp_path / 'runs' / 'exp' / 'weights'
    line = e.value.code if isinstance(e.value.code, str) else err.strip().splitlines()[-1]  # SystemExit(line)
    assert e.value.code not in (0, None) and attempts == [1] and 'Traceback' not in err
    assert line == (f'error: {weights / "last.pt"}: checkpoint not saved '
                    f'([Errno 28] No space left on device); the previous last.pt is unchanged')
    for name in ('last.pt', 'best.pt'):  # epoch 0's files, complete and resumable
        ck = load_checkpoint(weights / name)
        assert ck['epoch'] == 0 and ck['optimizer'] is not None
    assert sorted(p.name for p in weights.iterdir()) == ['best.pt', 'last.pt']


SLOW_SAVE = '''
import io, sys, time, torch
real_save = torch.save
def slow_save(obj, f, *args, **kwargs):  # epoch 1 onwards: half the bytes, then hang until killed
    if isinstance(obj, dict) and obj.get('epoch', -1) >= 1:
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[:buf.tell() // 2])
        f.flush()
        time.sleep(600)
    return real_save(obj, f, *args, **kwargs)
torch.save = slow_save
import train
train.cli(sys.argv[1:])
'''


@pytest.mark.slow
def test_resume_after_sigkill_during_checkpoint_write(tmp_path, tiny_shapes, train_cmd):
    import signal
    import time

    import train
    cmd = [sys.executable, '-c', SLOW_SAVE, *train_cmd(tiny_shapes, tmp_path / 'runs', epochs=2)[2:]]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    weights = tmp_path / 'runs' / 'exp' / 'weights'
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        partial = [p for p in weights.glob('last.pt.*') if p.stat().st_size > 0]
        if partial and (weights / 'last.pt').exists():  # epoch 0's last.pt is in place, epoch 1's is being written
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # while epoch 1's last.pt is half written
    proc.wait()
    assert partial, 'the run ended before its second checkpoint write'
    ck = load_checkpoint(weights / 'last.pt')  # the previous one, complete
    assert ck['epoch'] == 0 and ck['optimizer'] is not None
    train.run(resume=True, project=str(tmp_path / 'runs'), workers=0)  # a bare --resume finds it
    assert load_checkpoint(weights / 'last.pt')['epoch'] == 1
    assert sorted(p.name for p in weights.iterdir()) == ['best.pt', 'last.pt']  # the partial file is gone

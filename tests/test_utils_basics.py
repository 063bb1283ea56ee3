from types import SimpleNamespace

import numpy as np
import pytest
import torch

from models.yolo import Model
from utils.data.augment import letterbox
from utils.boxes import (Placement, box_iou, non_max_suppression, scale_boxes, xywh2xyxy, xywhn2xyxy, xyxy2xywh,
                         xyxy2xywhn)
from utils.weights.checkpoint import FORMAT, load_checkpoint, load_model, save_checkpoint
from utils.runs import increment_path, select_device


def test_box_conversions_roundtrip():
    b = torch.tensor([[10., 20., 30., 60.]])
    assert xyxy2xywh(b).tolist() == [[20., 40., 20., 40.]]
    assert torch.equal(xywh2xyxy(xyxy2xywh(b)), b)
    n = xyxy2xywhn(b.numpy(), w=100, h=200)
    assert np.allclose(n, [[0.2, 0.2, 0.2, 0.2]])
    assert np.allclose(xywhn2xyxy(n, w=100, h=200, padw=5), [[15, 20, 35, 60]])


def test_box_iou_hand_values():
    a = torch.tensor([[0., 0., 10., 10.]])
    b = torch.tensor([[5., 0., 15., 10.], [20., 20., 30., 30.], [0., 0., 10., 10.]])
    assert torch.allclose(box_iou(a, b), torch.tensor([[50 / 150, 0., 1.]]), atol=1e-6)


def test_nms_per_class_and_agnostic():
    # two overlapping boxes of different classes and one duplicate of the first
    pred = torch.zeros(1, 3, 7)
    pred[0, :, :4] = torch.tensor([[50., 50., 20., 20.], [51., 50., 20., 20.], [50., 51., 20., 20.]])
    pred[0, :, 4] = torch.tensor([0.9, 0.8, 0.7])
    pred[0, :, 5:] = torch.tensor([[1., 0.], [0., 1.], [1., 0.]])
    out = non_max_suppression(pred, 0.25, 0.45)[0]
    assert out[:, 5].tolist() == [0., 1.] and torch.allclose(out[:, 4], torch.tensor([0.9, 0.8]))
    assert non_max_suppression(pred, 0.25, 0.45, agnostic=True)[0].shape[0] == 1
    assert non_max_suppression(pred, 0.25, 0.45, classes=[1])[0][:, 5].tolist() == [1.]
    assert non_max_suppression(pred, 0.95, 0.45)[0].shape == (0, 6)


def test_nms_multi_label_keeps_each_class_above_threshold():
    pred = torch.zeros(1, 1, 7)
    pred[0, 0] = torch.tensor([50., 50., 20., 20., 1.0, 0.6, 0.5])
    out = non_max_suppression(pred, 0.3, 0.45, multi_label=True)[0]
    assert sorted(out[:, 5].tolist()) == [0., 1.]


def test_letterbox_and_scale_boxes_inverse():
    im = np.zeros((300, 500, 3), np.uint8)
    out, gain, (left, top) = letterbox(im, 640, auto=False)
    assert out.shape == (640, 640, 3) and gain == (1.28, 1.28) and left == 0 and top == (640 - 384) // 2
    auto, _, _ = letterbox(im, 640, auto=True, stride=32)
    assert auto.shape == (384, 640, 3)
    box = torch.tensor([[100., 50., 200., 150.]])
    lb = box * 1.28 + torch.tensor([left, top, left, top])
    assert torch.allclose(scale_boxes(lb.clone(), Placement((300, 500), gain, (left, top))), box, atol=1e-4)
    assert torch.allclose(scale_boxes(lb.clone(), Placement((300, 500), 1.28, (left, top))), box, atol=1e-4)


@pytest.mark.parametrize('h,w', [(301, 500), (300, 499), (97, 131), (131, 97)])
@pytest.mark.parametrize('auto', [False, True])
def test_letterbox_reports_the_pad_it_applied(h, w, auto):
    """An odd total pad puts the extra pixel on one side; the reported pad must be where the image starts."""
    im = np.zeros((h, w, 3), np.uint8)
    im[:] = 255
    out, (gx, gy), (left, top) = letterbox(im, 160, auto=auto, stride=32, color=(0, 0, 0))
    rows, cols = np.nonzero(out[..., 0] > 127)
    assert (top, left) == (rows.min(), cols.min())  # integers, exactly where the image begins
    assert isinstance(top, int) and isinstance(left, int)
    assert (rows.max() + 1 - top, cols.max() + 1 - left) == (round(h * gy), round(w * gx))
    box = np.array([[0.0, 0.0, w, h]])  # the whole original maps onto the pasted region and back
    placed = box * [gx, gy, gx, gy] + [left, top, left, top]
    assert np.allclose(placed, [[left, top, cols.max() + 1, rows.max() + 1]])
    assert np.allclose(scale_boxes(placed, Placement((h, w), (gx, gy), (left, top))), box)


def test_scale_boxes_gain_conventions():
    """A scalar gain means both axes; a pair (numpy or not) is (gain_x, gain_y) and never swapped."""
    box = np.array([[10.0, 20.0, 30.0, 40.0]])
    scalar = scale_boxes(box * 2 + 5, Placement((100, 100), 2, (5, 5)))
    assert np.allclose(scalar, box)
    aniso = box * [2, 4, 2, 4] + [1, 3, 1, 3]  # gain_x 2, gain_y 4, pad (1, 3)
    for gain in ((2, 4), np.array([2.0, 4.0]), torch.tensor([2.0, 4.0])):
        assert np.allclose(scale_boxes(aniso.copy(), Placement((100, 100), gain, np.array([1, 3]))), box)
    meta_like = SimpleNamespace(orig_hw=(100, 100), gain_xy=np.array([2.0, 4.0]), pad_xy=(1, 3))  # ImageMeta fields
    assert np.allclose(scale_boxes(torch.tensor(aniso), meta_like).numpy(), box)
    with pytest.raises(ValueError, match='gain_xy'):
        Placement((100, 100), (1, 2, 3), (0, 0))


def test_increment_path(tmp_path):
    p = tmp_path / 'exp'
    assert increment_path(p) == p
    p.mkdir()
    assert increment_path(p) == tmp_path / 'exp2'
    (tmp_path / 'exp7').mkdir()
    assert increment_path(p, mkdir=True) == tmp_path / 'exp8' and (tmp_path / 'exp8').is_dir()
    assert increment_path(p, exist_ok=True) == p


def test_select_device_errors():
    assert select_device('cpu').type == 'cpu'
    with pytest.raises(ValueError, match="expected 'cpu'"):
        select_device('gpu9')
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match='CUDA is not available'):
            select_device('0')


def test_checkpoint_roundtrip_atomic_and_safe(tmp_path):
    m = Model('v6/yolov5n.yaml', nc=3)
    m.names = ['a', 'b', 'c']
    ckpt = {'format': FORMAT, 'yaml': m.yaml, 'names': m.names, 'model': m.state_dict(), 'ema': None, 'epoch': 1}
    path = save_checkpoint(ckpt, tmp_path / 'w' / 'last.pt')
    assert [p.name for p in path.parent.iterdir()] == ['last.pt']  # no temp file left behind
    torch.load(path, weights_only=True)  # plain tensors and Python types only
    loaded = load_model(path)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], m.eval()(x)[0])
    assert loaded.names == ['a', 'b', 'c']
    (tmp_path / 'junk.pt').write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='junk.pt: not a yolov5-freeze checkpoint'):
        load_checkpoint(tmp_path / 'junk.pt')
    with pytest.raises(FileNotFoundError, match='nothere.pt: checkpoint not found'):
        load_checkpoint(tmp_path / 'nothere.pt')


def test_garbage_weights_file_is_named_in_one_line(tmp_path):
    from utils.weights.checkpoint import read_weights
    bad = tmp_path / 'garbage.pt'
    bad.write_text('not a checkpoint at all\n')
    with pytest.raises(ValueError, match='garbage.pt: not a readable checkpoint'):
        read_weights(bad)


SCRIPT_ENTRIES = [('train', 'cli', []), ('detect', 'main', ['--weights', 'x.pt', '--source', 'images']),
                  ('val', 'main', ['--weights', 'x.pt'])]


@pytest.mark.parametrize('script,entry,argv', SCRIPT_ENTRIES)
def test_scripts_keep_freed_memory_before_they_run(monkeypatch, script, entry, argv):
    """train.py, detect.py and val.py set glibc's thresholds (utils.runs.keep_freed_memory) before the run."""
    import importlib
    module = importlib.import_module(script)
    calls = []
    monkeypatch.setattr(module, 'keep_freed_memory', lambda: calls.append('keep'))
    monkeypatch.setattr(module, 'run_cli', lambda *a, **k: calls.append('run'))
    getattr(module, entry)(argv)
    assert calls == ['keep', 'run']

import numpy as np
import pytest
import torch

from models.yolo import Model
from utils.augment import letterbox
from utils.boxes import box_iou, non_max_suppression, scale_boxes, xywh2xyxy, xywhn2xyxy, xyxy2xywh, xyxy2xywhn
from utils.checkpoint import FORMAT, load_checkpoint, load_model, save_checkpoint
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
    out, ratio, (dw, dh) = letterbox(im, 640, auto=False)
    assert out.shape == (640, 640, 3) and ratio == (1.28, 1.28) and dw == 0 and dh == (640 - 384) / 2
    auto, _, _ = letterbox(im, 640, auto=True, stride=32)
    assert auto.shape == (384, 640, 3)
    box = torch.tensor([[100., 50., 200., 150.]])
    lb = box * 1.28 + torch.tensor([dw, dh, dw, dh])
    assert torch.allclose(scale_boxes((640, 640), lb, (300, 500)), box, atol=1e-4)
    assert torch.allclose(scale_boxes((640, 640), box * 1.28 + torch.tensor([dw, dh, dw, dh]), (300, 500),
                                      ratio_pad=((1.28, 1.28), (dw, dh))), box, atol=1e-4)


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
    from utils.checkpoint import read_weights
    bad = tmp_path / 'garbage.pt'
    bad.write_text('not a checkpoint at all\n')
    with pytest.raises(ValueError, match='garbage.pt: not a readable checkpoint'):
        read_weights(bad)

"""Official YOLOv5 .pt files: safe unpickling, exact rebuild, detections, and refusal of foreign pickles."""
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models.yolo import Model
from utils.data.augment import letterbox
from utils.boxes import non_max_suppression
from utils.weights.checkpoint import load_model, read_weights
from utils.weights.official import Placeholder, restricted_torch_load

SHARED = Path(__file__).resolve().parents[1] / '..' / 'shared'
YOLOV5N = SHARED / 'weights' / 'yolov5n.pt'
needs_yolov5n = pytest.mark.skipif(not YOLOV5N.is_file(), reason='../shared/weights/yolov5n.pt not present')


@pytest.fixture(scope='module')
def yolov5n():
    return load_model(YOLOV5N)


def pickled_modules(module, prefix=''):
    """(dotted path, placeholder) for every module of an unpickled official model, like ``named_modules``."""
    yield prefix, module
    for name, child in module.state['_modules'].items():
        if isinstance(child, Placeholder):
            yield from pickled_modules(child, f'{prefix}.{name}' if prefix else name)


def hyper_params(m):
    """The attributes that decide a layer's output, read from a torch module or a placeholder's state."""
    get = (lambda k: m.state.get(k)) if isinstance(m, Placeholder) else (lambda k: getattr(m, k, None))
    keys = {'Conv2d': ('kernel_size', 'stride', 'padding', 'dilation', 'groups', 'in_channels', 'out_channels'),
            'BatchNorm2d': ('eps', 'num_features'), 'MaxPool2d': ('kernel_size', 'stride', 'padding'),
            'Upsample': ('scale_factor', 'mode'), 'Bottleneck': ('add',), 'Concat': ('d',),
            'LeakyReLU': ('negative_slope',), 'Detect': ('nc', 'no', 'nl', 'na')}
    kind = m.qualname.rsplit('.', 1)[-1] if isinstance(m, Placeholder) else type(m).__name__
    return kind, {k: get(k) for k in keys.get(kind, ())}


@needs_yolov5n
def test_state_dict_keys_shapes_order_equal_official():
    ours = Model('v6/yolov5n.yaml').state_dict()
    theirs = read_weights(YOLOV5N)['state_dict']
    assert [(k, tuple(v.shape)) for k, v in ours.items()] == [(k, tuple(v.shape)) for k, v in theirs.items()]
    assert len(ours) == 349


@needs_yolov5n
def test_every_layer_matches_the_pickled_one(yolov5n):
    pickled = dict(pickled_modules(restricted_torch_load(YOLOV5N)['model']))
    ours = dict(yolov5n.named_modules())
    assert list(pickled) == list(ours)
    for name, m in ours.items():
        assert hyper_params(m) == hyper_params(pickled[name]), name


@needs_yolov5n
def test_loaded_weights_are_fp32_copies_of_the_fp16_file(yolov5n):
    pickled = restricted_torch_load(YOLOV5N)['model']
    w = pickled.child('model').child('0').child('conv').state['_parameters']['weight']
    assert w.dtype == torch.float16
    ours = yolov5n.model[0].conv.weight
    assert ours.dtype == torch.float32 and torch.equal(ours, w.float())
    assert yolov5n.names[0] == 'person' and len(yolov5n.names) == 80 and yolov5n.stride.tolist() == [8, 16, 32]


def detect_names(model, image):
    im0 = cv2.imread(str(image))
    im = letterbox(im0, 640, auto=True, stride=32)[0]
    x = torch.from_numpy(np.ascontiguousarray(im[..., ::-1].transpose(2, 0, 1))).float()[None] / 255
    with torch.no_grad():
        det = non_max_suppression(model(x)[0], conf_thres=0.25, iou_thres=0.45)[0]
    return sorted(model.names[int(c)] for c in det[:, 5])


@needs_yolov5n
@pytest.mark.parametrize('image,expected', [
    ('bus.jpg', ['bus', 'person', 'person', 'person', 'person']),
    ('zidane.jpg', ['person', 'person', 'tie']),
])
@pytest.mark.slow
def test_official_detections(yolov5n, image, expected):
    if not (SHARED / 'images' / image).is_file():
        pytest.skip(f'../shared/images/{image} not present')
    assert detect_names(yolov5n, SHARED / 'images' / image) == expected


@pytest.mark.slow
@needs_yolov5n
def test_fused_model_gives_the_same_output(yolov5n):
    fused = load_model(YOLOV5N, fuse=True)
    x = torch.rand(1, 3, 128, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(fused(x)[0], yolov5n(x)[0], atol=1e-3, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize('act,csp_act,release', [
    ('LeakyReLU', None, 'v1-v2'), ('Hardswish', 'LeakyReLU', 'v3'), ('SiLU', None, 'v4-v5')])
def test_v3_family_activation_and_anchor_grid_detected(tmp_path, official_like_file, act, csp_act, release):
    cfg = dict(Model('yolov5n.yaml', nc=3).yaml, activation=act, csp_activation=csp_act)
    path, expected = official_like_file(tmp_path, cfg, legacy=release == 'v1-v2')
    w = read_weights(path)
    assert w['source'] == 'official' and w['yaml']['activation'] == act, release
    assert w['yaml'].get('csp_activation') == csp_act and w['yaml']['anchor_grid_buffer'] is True
    assert w['names'] == ['class0', 'class1', 'class2']
    model = load_model(path)
    assert isinstance(model.model[2].cv1.act, type(expected.model[2].cv1.act))
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x)[0], expected(x)[0])


def test_malicious_reduce_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / 'pwned'

    class Evil:
        def __reduce__(self):
            return os.system, (f'touch {marker}',)

    path = tmp_path / 'evil.pt'
    torch.save({'model': Evil(), 'epoch': -1}, path)
    for loader in (read_weights, load_model):
        with pytest.raises(ValueError) as e:
            loader(path)
        msg = str(e.value)
        assert str(path) in msg and 'system' in msg and 'refused' in msg and '\n' not in msg
    assert not marker.exists()


def test_unlisted_class_inside_a_model_is_refused(tmp_path):
    model = Model('v6/yolov5n.yaml', nc=1)
    model.model[0].extra = __import__('collections').Counter(a=1)  # a class outside the allow-list
    path = tmp_path / 'odd.pt'
    torch.save({'model': model}, path)
    with pytest.raises(ValueError, match=r'collections\.Counter'):
        read_weights(path)


def test_corrupt_and_missing_files_give_one_line_errors(tmp_path):
    bad = tmp_path / 'bad.pt'
    bad.write_bytes(b'not a checkpoint at all')
    with pytest.raises(ValueError) as e:
        load_model(bad)
    assert str(bad) in str(e.value) and '\n' not in str(e.value)
    with pytest.raises(FileNotFoundError, match='missing.pt'):
        load_model(tmp_path / 'missing.pt')
    with pytest.raises(ValueError, match="a state_dict of 1 tensors under 'model', no model YAML"):
        torch.save({'model': {'a': torch.zeros(1)}}, tmp_path / 'dict.pt')
        read_weights(tmp_path / 'dict.pt')

"""P6 models (models/v6/yolov5?6.yaml): upstream's parameter names and shapes, four detection levels, official
checkpoints, hub entry points, and a train/val/detect run.

The upstream reference is data (tests/data/p6_upstream_shapes.json.gz, written once by
benchmarks/upstream_p6_shapes.py in a separate environment); upstream is never imported here.
"""
import copy
import gzip
import json
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import detect
import hubconf
import train
from models.yolo import Detect, Model, load_yaml_cfg, parse_model
from utils.train.loss import ComputeLoss, check_anchors
from utils.weights.checkpoint import load_model, read_weights

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = ROOT / 'tests' / 'data' / 'p6_upstream_shapes.json.gz'
SIZES = 'nsmlx'
STRIDES = [8.0, 16.0, 32.0, 64.0]


@pytest.fixture(scope='module')
def upstream():
    with gzip.open(UPSTREAM, 'rt') as f:
        return json.load(f)['models']


@pytest.fixture(scope='module')
def n6():
    return Model('v6/yolov5n6.yaml')


def meta_state_dict(cfg):
    """``Model(cfg).state_dict()``'s names and shapes, from layers built on the meta device (nothing allocated:
    yolov5x6 has 141M parameters)."""
    with torch.device('meta'):
        layers, _ = parse_model(load_yaml_cfg(cfg), ch=[3])
    return [(f'model.{k}', list(v.shape)) for k, v in layers.state_dict().items()]


@pytest.mark.parametrize('size', SIZES)
def test_parameter_names_and_shapes_equal_upstream(upstream, size):
    theirs = upstream[f'yolov5{size}6']
    ours = meta_state_dict(f'v6/yolov5{size}6.yaml')
    assert ours == [tuple(x) for x in theirs['state_dict']]
    with torch.device('meta'):
        n_params = sum(p.numel() for p in parse_model(load_yaml_cfg(f'v6/yolov5{size}6.yaml'), ch=[3])[0].parameters())
    assert n_params == theirs['params']


def test_built_model_matches_upstream_strides_and_anchors(upstream, n6):
    theirs = upstream['yolov5n6']
    assert [(k, list(v.shape)) for k, v in n6.state_dict().items()] == [tuple(x) for x in theirs['state_dict']]
    assert sum(p.numel() for p in n6.parameters()) == theirs['params'] == 3_246_940
    assert n6.stride.tolist() == theirs['stride'] == STRIDES
    assert torch.allclose(n6.model[-1].anchors, torch.tensor(theirs['anchors']))
    assert all(upstream[f'yolov5{s}6']['anchors'] == theirs['anchors'] for s in SIZES)


def test_four_levels_from_p3_to_p6(n6):
    det = n6.model[-1]
    assert isinstance(det, Detect) and det.nl == 4 and det.na == 3
    assert [m.f for m in n6.model][-1] == [23, 26, 29, 32] and n6.backbone_len == 12
    assert n6.model[11].type == 'SPPF' and n6.model[9].type == 'Conv'  # SPPF after the P6/64 stage
    n6.train()
    maps = n6(torch.zeros(1, 3, 128, 192))
    assert [tuple(p.shape[2:4]) for p in maps] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    n6.eval()
    with torch.no_grad():
        out = n6(torch.zeros(1, 3, 128, 192))[0]
    assert out.shape == (1, 3 * (16 * 24 + 8 * 12 + 4 * 6 + 2 * 3), 85)


def test_anchors_listed_largest_first_are_reordered(n6):
    cfg = load_yaml_cfg('v6/yolov5n6.yaml')
    cfg['anchors'] = cfg['anchors'][::-1]  # P6 anchors first: they must still go to the stride-64 level
    flipped = Model(cfg)
    assert torch.equal(flipped.model[-1].anchors, n6.model[-1].anchors)
    pixels = (n6.model[-1].anchors * n6.stride.view(-1, 1, 1)).view(4, -1)
    assert pixels[0].tolist() == [19, 27, 44, 40, 38, 94] and pixels[3].tolist() == [436, 615, 739, 380, 925, 792]


def test_loss_weighs_four_levels_as_upstream(n6):
    loss = ComputeLoss(n6, {'box': 0.05, 'obj': 1.0, 'cls': 0.5, 'anchor_t': 4.0})
    assert loss.balance[:4] == [4.0, 1.0, 0.25, 0.06]
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.9, 0.9], [0, 2, 0.3, 0.3, 0.05, 0.05]])
    n6.train()
    total, items = loss(n6(torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))), targets)
    assert torch.isfinite(total).all() and (items > 0).all()


def test_autoanchor_spreads_new_anchors_over_the_four_levels_small_to_large(n6):
    model = copy.deepcopy(n6)
    rng = np.random.default_rng(0)
    sizes = np.geomspace(0.01, 0.8, 60)  # long thin boxes (10:1) from ~13 px to ~1000 px wide at 1280 px
    labels = [np.array([[0, .5, .5, w, w / 10]], np.float32) for w in sizes * rng.uniform(0.95, 1.05, 60)]
    ds = SimpleNamespace(shapes=np.full((60, 2), 1280.0), labels=labels)
    bpr, new_bpr = check_anchors(ds, model, imgsz=1280, log=lambda s: None)
    assert bpr < 0.98 and new_bpr > bpr
    det = model.model[-1]
    area = (det.anchors * det.stride.view(-1, 1, 1)).prod(-1).flatten()  # pixels, level by level
    assert (area[1:] >= area[:-1]).all()  # the smallest anchors at P3/8, the largest at P6/64


@pytest.fixture(scope='module')
def official_n6(tmp_path_factory, official_like_file):
    """A yolov5n6 (3 classes) written in the official checkpoint layout, and the model it must load as."""
    cfg = dict(load_yaml_cfg('v6/yolov5n6.yaml'), nc=3)
    return official_like_file(tmp_path_factory.mktemp('official'), cfg, name='yolov5n6.pt')


def test_official_p6_checkpoint_loads_through_the_allow_list(official_n6):
    path, expected = official_n6
    w = read_weights(path)
    assert w['source'] == 'official' and len(w['yaml']['anchors']) == 4 and w['names'] == ['class0', 'class1', 'class2']
    model = load_model(path)
    assert model.stride.tolist() == STRIDES and model.model[-1].nl == 4
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x)[0], expected(x)[0])


def test_hub_lists_the_p5_and_p6_entry_points():
    names = {n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith('_')}  # as torch.hub.list
    assert {f'yolov5{s}{p}' for s in SIZES for p in ('', '6')} <= names and 'custom' in names
    assert hubconf.yolov5x6.__name__ == 'yolov5x6' and 'yolov5x6.pt' in hubconf.yolov5x6.__doc__


@pytest.mark.slow
def test_hub_p6_from_a_local_file_and_untrained(tmp_path, official_n6, monkeypatch):
    (tmp_path / 'yolov5n6.pt').symlink_to(official_n6[0])  # where resolve_weights looks first: nothing downloaded
    monkeypatch.chdir(tmp_path)
    model = torch.hub.load(str(ROOT), 'yolov5n6', source='local', device='cpu')
    assert model.stride == 64 and model.names == ['class0', 'class1', 'class2']
    assert model(np.zeros((100, 130, 3), np.uint8), size=128).xyxy[0].shape[1] == 6
    fresh = hubconf.yolov5n6(pretrained=False, classes=2, device='cpu')
    assert fresh.stride == 64 and len(fresh.names) == 2


def test_hub_p6_offline_says_where_to_put_the_file(tmp_path, monkeypatch):
    def offline(url, dest):
        raise urllib.error.URLError('no network')
    monkeypatch.setattr('utils.weights.official.fetch', offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        hubconf.yolov5m6(device='cpu')
    msg = str(e.value)
    assert 'yolov5m6.pt' in msg and 'v7.0/yolov5m6.pt' in msg and 'no network' in msg and '\n' not in msg
    assert not (tmp_path / 'yolov5m6.pt').exists()


@pytest.mark.slow
def test_train_and_detect_p6_end_to_end(tiny_shapes, tmp_path):
    runs = tmp_path / 'runs'
    result = train.run(cfg='v6/yolov5n6.yaml', weights='', data=str(tiny_shapes), imgsz=128, batch_size=8,
                       epochs=1, workers=0, noplots=True, project=str(runs), name='p6')
    assert 0.0 <= result.map50 <= 1.0 and result.seen == 4  # best.pt validated as val.py does (fused, val split)
    best = runs / 'p6' / 'weights' / 'best.pt'
    model = load_model(best)
    assert model.stride.tolist() == STRIDES and model.yaml['yaml_file'] == 'yolov5n6.yaml'
    images = sorted((tiny_shapes.parent / 'shapes' / 'images' / 'val').glob('*.jpg'))
    out = detect.run(weights=str(best), source=str(images[0]), imgsz=100, conf_thres=0.001, nosave=True,
                     verbose=False, project=str(runs), name='detect')
    assert len(out) == 1 and out[0]['det'].shape[1] == 6

import hashlib

import pytest
import torch
import torch.nn as nn
import yaml

from models.yolo import layer_table
from models.yolo import Model

# Parameter counts (nc=80). s and m of both families and v6 n are the official figures
# (v3.1 yolov5s 7,468,157; v6/v7 n 1,872,157, s 7,235,389, m 21,190,557); v3-family n/m pinned from our build.
PARAMS = {
    'yolov5n.yaml': 1_930_941, 'yolov5s.yaml': 7_468_157, 'yolov5m.yaml': 21_805_053,
    'v6/yolov5n.yaml': 1_872_157, 'v6/yolov5s.yaml': 7_235_389, 'v6/yolov5m.yaml': 21_190_557,
}
N_KEYS = {'yolov5s.yaml': 370, 'v6/yolov5s.yaml': 349}


def key_digest(model):
    s = ';'.join(f'{k}:{tuple(v.shape)}' for k, v in model.state_dict().items())
    return hashlib.sha256(s.encode()).hexdigest()[:16]


@pytest.mark.parametrize('cfg,n', PARAMS.items())
def test_parameter_counts(cfg, n):
    m = Model(cfg)
    assert sum(p.numel() for p in m.parameters()) == n


def test_v31_yolov5s_keys_and_shapes():
    sd = Model('yolov5s.yaml').state_dict()
    assert len(sd) == N_KEYS['yolov5s.yaml']
    assert tuple(sd['model.0.conv.conv.weight'].shape) == (32, 12, 3, 3)  # Focus: 4*3 channels in
    assert tuple(sd['model.2.cv2.weight'].shape) == (32, 64, 1, 1)  # BottleneckCSP's plain conv
    assert tuple(sd['model.2.bn.running_var'].shape) == (64,)
    assert tuple(sd['model.8.cv2.conv.weight'].shape) == (512, 1024, 1, 1)  # SPP 4 branches
    assert tuple(sd['model.24.anchor_grid'].shape) == (3, 1, 3, 1, 1, 2)
    assert tuple(sd['model.24.m.2.weight'].shape) == (255, 512, 1, 1)
    keys = list(sd)
    assert keys[0] == 'model.0.conv.conv.weight' and keys[-1] == 'model.24.m.2.bias'


def test_v6_yolov5s_keys_and_shapes():
    sd = Model('v6/yolov5s.yaml').state_dict()
    assert len(sd) == N_KEYS['v6/yolov5s.yaml']
    assert tuple(sd['model.0.conv.weight'].shape) == (32, 3, 6, 6)  # 6x6 stem
    assert tuple(sd['model.9.cv2.conv.weight'].shape) == (512, 1024, 1, 1)  # SPPF
    assert 'model.24.anchor_grid' not in sd
    assert tuple(sd['model.24.anchors'].shape) == (3, 3, 2)
    assert tuple(sd['model.24.m.0.weight'].shape) == (255, 128, 1, 1)


def test_key_lists_are_stable():
    # Digest of (key, shape) in order: any change to names, shapes or order of the state_dict fails here.
    assert key_digest(Model('yolov5s.yaml')) == key_digest(Model('yolov5s.yaml'))
    assert key_digest(Model('yolov5s.yaml')) != key_digest(Model('v6/yolov5s.yaml'))


def test_gflops_match_official_figures():
    assert abs(float(Model('yolov5s.yaml').info().split(', ')[-1].split()[0]) - 17.6) <= 0.2
    assert abs(float(Model('v6/yolov5s.yaml').info().split(', ')[-1].split()[0]) - 16.5) <= 0.2


@pytest.mark.slow
def test_strides_anchors_and_output_shape():
    m = Model('v6/yolov5n.yaml', nc=3).eval()
    assert m.stride.tolist() == [8, 16, 32]
    # anchors are stored in grid units
    assert torch.allclose(m.model[-1].anchors[0, 0], torch.tensor([10 / 8, 13 / 8]))
    with torch.no_grad():
        y, raw = m(torch.rand(2, 3, 256, 192))
    assert y.shape == (2, 3 * (32 * 24 + 16 * 12 + 8 * 6), 8)
    assert [tuple(r.shape) for r in raw] == [(2, 3, 32, 24, 8), (2, 3, 16, 12, 8), (2, 3, 8, 6, 8)]
    assert (y[..., 4:] >= 0).all() and (y[..., 4:] <= 1).all()


def test_training_mode_returns_raw_maps():
    m = Model('yolov5n.yaml', nc=2).train()
    out = m(torch.rand(1, 3, 128, 128))
    assert isinstance(out, list) and tuple(out[2].shape) == (1, 3, 4, 4, 7)


def test_decode_matches_formula():
    m = Model('v6/yolov5n.yaml', nc=1).eval()
    det = m.model[-1]
    p = torch.randn(1, 3, 2, 2, 6)
    y = det.decode(p, 1)
    s = p.sigmoid()
    # cell (row 1, col 0), anchor 2 at level 1 (stride 16): anchor (59, 119) px
    assert torch.allclose(y[0, 2, 1, 0, 0], (s[0, 2, 1, 0, 0] * 2 - 0.5 + 0) * 16)
    assert torch.allclose(y[0, 2, 1, 0, 1], (s[0, 2, 1, 0, 1] * 2 - 0.5 + 1) * 16)
    assert torch.allclose(y[0, 2, 1, 0, 3], (s[0, 2, 1, 0, 3] * 2) ** 2 * 119, rtol=1e-5)


@pytest.mark.slow
def test_bias_initialisation():
    m = Model('v6/yolov5n.yaml', nc=80)
    b = m.model[-1].m[0].bias.view(3, -1)
    # default conv bias init is small; the prior dominates: log(8 / (640 / 8) ** 2) ~ -6.68
    assert (b[:, 4] < -6).all() and (b[:, 5:] < -4).all()


@pytest.mark.parametrize('cfg', ['yolov5n.yaml', 'v6/yolov5n.yaml'])
def test_fused_equals_unfused(cfg):
    torch.manual_seed(0)
    m = Model(cfg, nc=5)
    for mod in m.modules():  # non-trivial BN statistics
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.5, 0.5)
    m.eval()
    x = torch.rand(1, 3, 160, 160)
    with torch.no_grad():
        a = m(x)[0]
        b = m.fuse()(x)[0]
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    assert not any(hasattr(mod, 'bn') for mod in m.modules() if type(mod).__name__ == 'Conv')


def test_activation_from_yaml(tmp_path):
    d = yaml.safe_load(open('models/v6/yolov5n.yaml'))
    d['activation'] = 'nn.LeakyReLU(0.1)'
    m = Model(d)
    assert isinstance(m.model[0].act, nn.LeakyReLU) and m.model[0].act.negative_slope == 0.1
    d['activation'] = 'Hardswish'
    assert isinstance(Model(d).model[2].cv1.act, nn.Hardswish)
    d['activation'] = 'Swishy'
    with pytest.raises(ValueError, match="unknown activation 'Swishy'"):
        Model(d)


def test_csp_activation_separate():
    d = yaml.safe_load(open('models/yolov5n.yaml'))
    d.update(activation='Hardswish', csp_activation='LeakyReLU')  # exact release v3.1
    m = Model(d)
    assert isinstance(m.model[2].act, nn.LeakyReLU) and isinstance(m.model[2].cv1.act, nn.Hardswish)


def test_bad_model_yaml_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='yolov5q.yaml'):
        Model('yolov5q.yaml')
    bad = tmp_path / 'bad.yaml'
    bad.write_text('nc: [1, 2\n')
    with pytest.raises(ValueError, match='bad.yaml: invalid YAML'):
        Model(bad)
    bad.write_text('nc: 3\n')
    with pytest.raises(ValueError, match='lacks depth_multiple'):
        Model(bad)
    d = yaml.safe_load(open('models/v6/yolov5n.yaml'))
    d['backbone'][1][2] = 'Transformer'
    with pytest.raises(ValueError, match="model YAML: layer 1 .*unknown module 'Transformer'"):
        Model(d)
    d = yaml.safe_load(open('models/v6/yolov5n.yaml'))
    d['backbone'][3] = [5, 1, 'Conv', [16, 3]]  # reads a later layer
    with pytest.raises(ValueError, match="layer 3 .*'from' index 5 does not name an earlier layer"):
        Model(d)
    d['backbone'][3] = [-1, 1, 'Conv']  # three fields
    with pytest.raises(ValueError, match='layer 3 .*not enough values to unpack'):
        Model(d)


def test_model_yaml_fuzz_findings_are_one_line_errors():
    """Found at 2,000 hypothesis examples: torch's own RuntimeErrors escaped from these two."""
    d = yaml.safe_load(open('models/v6/yolov5n.yaml'))
    d['head'][0] = [-1, 1, 'Conv', [-1, -2]]  # negative channels: torch refused the tensor size
    with pytest.raises(ValueError, match='layer 10 .*output channels -1 must be a positive integer'):
        Model(d)
    d = yaml.safe_load(open('models/v6/yolov5n.yaml'))
    d['anchors'] = d['anchors'][:2]  # three Detect inputs, two anchor levels: a shape mismatch in Detect
    with pytest.raises(ValueError, match=r'layer 24 .*Detect reads \[17, 20, 23\] but the YAML has 2 anchor levels'):
        Model(d)


def test_layer_table_and_cli(capsys):
    from models.yolo import main
    main(['--cfg', 'v6/yolov5s.yaml'])
    out = capsys.readouterr().out
    assert 'SPPF' in out and '7,235,389 parameters' in out and out.count('\n') == 27
    assert layer_table(Model('yolov5s.yaml')).splitlines()[1].split()[:4] == ['0', '-1', '1', '3520']


def test_bad_layer_row_in_a_file_names_the_file(tmp_path):
    d = yaml.safe_load(open('models/v6/yolov5n.yaml'))
    d['head'][0] = [-1, 1, 'Conv', ['x', 1, 1]]
    bad = tmp_path / 'broken.yaml'
    bad.write_text(yaml.safe_dump(d))
    with pytest.raises(ValueError, match=r'broken.yaml: layer 10 '):
        Model(bad)

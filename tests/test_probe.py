"""models/probe.py: the quick probe on real layers agrees with the meta probe, changes nothing, refuses before it
allocates much, and spares every process the torch._dynamo import."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from models import probe
from models.yolo import MODULES, Model, parse_model, run_layers

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared'
# every model YAML; of the P6 family only yolov5n6 (s6-x6 differ in their multiples alone: tests/test_models_p6.py)
YAMLS = sorted(str(p.relative_to(ROOT / 'models')) for p in (ROOT / 'models').rglob('*.yaml')
               if not re.fullmatch(r'yolov5[smlx]6\.yaml', p.name))


def v6n():
    return yaml.safe_load(open(ROOT / 'models' / 'v6' / 'yolov5n.yaml'))


def extra_levels(d, strides=2):
    """``d`` with one or more stride-2 Convs after P5 and Detect also reading the last: a fourth level."""
    head = d['head'][:-1]
    head += [[-1, 1, 'Conv', [768, 3, 2]] for _ in range(strides - 1)] + [[-1, 1, 'C3', [768, False]]]
    d['head'] = head + [[[17, 20, 23, len(d['backbone']) + len(head) - 1], 1, 'Detect', ['nc', 'anchors']]]
    d['anchors'].append([436, 615, 739, 380, 925, 792])
    return d


def both_probes(d, ch=3):
    d.setdefault('yaml_file', 'test.yaml')
    layers, save = parse_model(d, ch=[ch])
    quick = probe.quick_level_sizes(layers, save, ch, run_layers, blocks=set(MODULES.values()))
    with torch.device('meta'):
        meta_layers, save = parse_model(d, ch=[ch])
    return quick, probe.meta_level_sizes(meta_layers, save, ch, d['yaml_file'], run_layers), layers


@pytest.mark.slow
@pytest.mark.parametrize('cfg', YAMLS)
def test_quick_probe_gives_the_meta_probes_grid_sizes(cfg):
    d = yaml.safe_load(open(ROOT / 'models' / cfg))
    quick, meta, _ = both_probes(d)
    assert quick == meta == [32, 16, 8, 4][:len(d['anchors'])]  # P5 models: 3 levels, P6 (yolov5?6.yaml): 4


def test_quick_probe_on_a_p6_model_and_one_channel():
    quick, meta, _ = both_probes(extra_levels(v6n()), ch=1)
    assert quick == meta == [32, 16, 8, 4]
    assert Model(extra_levels(v6n()), ch=1).stride.tolist() == [8, 16, 32, 64]


def test_quick_probe_changes_nothing_the_model_holds():
    d = v6n()
    layers, save = parse_model(d, ch=[3])
    layers[3].eval()  # a mixed state, restored as it was
    before = {k: v.clone() for k, v in layers.state_dict().items()}
    modes, threads = [m.training for m in layers.modules()], torch.get_num_threads()
    assert probe.quick_level_sizes(layers, save, 3, run_layers, set(MODULES.values())) == [32, 16, 8]
    assert all(torch.equal(v, before[k]) for k, v in layers.state_dict().items())  # BatchNorm statistics too
    assert [m.training for m in layers.modules()] == modes and torch.get_num_threads() == threads
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in layers.modules())


def test_inexact_geometry_goes_to_the_meta_probe():
    d = v6n()
    d['backbone'][0] = [-1, 1, 'Conv', [64, 6, 2, 1]]  # 64 px -> 31, 256 px -> 127: not 4x
    quick, meta, _ = both_probes(d)
    assert quick is None and meta == [32, 16, 8]
    quick, meta, _ = both_probes(extra_levels(v6n(), strides=3))  # a stride-128 level: 1 at 64 px, 2 at 256 px
    assert quick is None and meta == [32, 16, 8, 2]


@pytest.mark.parametrize('row,layer,shape', [
    ([-1, 1, 'nn.Upsample', [None, 100000, 'nearest']], 11, '(1, 128, 800000, 800000)'),
    ([-1, 1, 'Conv', [128, 1, 1, 20000]], 11, '(1, 32, 40008, 40008)'),
])
def test_huge_outputs_are_refused_before_they_are_allocated(row, layer, shape):
    d = v6n()
    d['head'][layer - 10] = row
    ran = []
    layers, save = parse_model(d, ch=[3])
    layers[layer].register_forward_hook(lambda *_: ran.append(layer))  # runs only after the op did
    assert probe.quick_level_sizes(layers, save, 3, run_layers, set(MODULES.values())) is None and not ran
    with pytest.raises(ValueError, match=rf'^test.yaml: layer {layer} outputs {re.escape(shape)} for a 256 px image$'):
        Model(dict(d, yaml_file='test.yaml'))


@pytest.mark.slow
def test_probe_budgets_send_large_probes_to_the_meta_probe(monkeypatch):
    d = v6n()
    d['head'][2] = [[-1] * 300 + [6], 1, 'Concat', [1]]  # 300 copies of a 128-channel map, then a wide C3
    quick, meta, _ = both_probes(d)
    assert quick == meta == [32, 16, 8]
    for name, limit in (('QUICK_MAX_VALUES', 100_000), ('QUICK_MAX_MACS', 10 ** 6)):
        with monkeypatch.context() as m:
            m.setattr(probe, name, limit)
            quick, meta, _ = both_probes(v6n())
            assert quick is None and meta == [32, 16, 8] and Model(v6n()).stride.tolist() == [8, 16, 32]
    calls = []
    monkeypatch.setattr(probe, 'QUICK_MAX_PARAMS', 1_000_000)  # v6/yolov5n has 1.9M: meta probe, then one build
    monkeypatch.setattr(probe, 'quick_level_sizes', lambda *a, **k: calls.append(a))
    assert Model(v6n()).stride.tolist() == [8, 16, 32] and not calls


def test_unknown_or_broken_layers_get_the_meta_probes_error():
    d = v6n()
    d['head'][2] = [[-1, 4], 1, 'Concat', [1]]  # maps of different sizes
    layers, save = parse_model(d, ch=[3])
    assert probe.quick_level_sizes(layers, save, 3, run_layers, set(MODULES.values())) is None
    with pytest.raises(ValueError, match=r'^model YAML: the layers do not fit together \(Sizes of tensors must match'):
        Model(d)
    layers, save = parse_model(v6n(), ch=[3])
    assert probe.quick_level_sizes(layers, save, 3, run_layers, blocks=set()) is None  # blocks it does not know
    assert probe.upsample_output(torch.nn.Upsample(scale_factor=2), (8, 4)) == (16, 8)
    for fraction_or_size in (dict(scale_factor=1.5), dict(scale_factor=0.5), dict(size=(16, 16))):
        with pytest.raises(probe.NotQuick):  # floor(h * f) in floating point need not be exact at 4h
            probe.upsample_output(torch.nn.Upsample(**fraction_or_size), (8, 8))


@pytest.mark.slow
def test_building_models_importing_the_scripts_and_nms_import_neither_dynamo_nor_torchvision():
    """The meta device's Python shape functions import torch._dynamo and sympy, and so does torchvision's package
    import: over a second per process each. Only torchvision's NMS kernel is needed, loaded on its own.
    (train.py still imports dynamo when it builds the optimizer: torch.optim's add_param_group asks for it.)"""
    code = ('import sys, torch, train, val, detect\n'
            'from models.yolo import Model\n'
            'from utils.boxes import non_max_suppression\n'
            "Model('v6/yolov5s.yaml', nc=3); Model('yolov5n.yaml')\n"
            'non_max_suppression(torch.rand(1, 50, 9), 0.1, 0.5)\n'
            "print(sorted(m for m in ('torch._dynamo', 'sympy', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-1000:]
    assert out.stdout.strip() == '[]'


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / 'weights' / 'yolov5n.pt').is_file(), reason='needs ../shared/weights/yolov5n.pt')
def test_detect_does_not_import_dynamo(tmp_path):
    code = ('import sys, detect\n'
            f"detect.run({str(SHARED / 'weights' / 'yolov5n.pt')!r}, {str(SHARED / 'images')!r}, imgsz=320, "
            f"nosave=True, project={str(tmp_path)!r}, verbose=False)\n"
            "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))")
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-1000:]
    assert out.stdout.strip().splitlines()[-1] == '[]'

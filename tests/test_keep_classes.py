"""--keep-classes (models/keep.py, utils/freeze/keep.py): the checkpoint's classes come out bit for bit, the names
merge, the overlap rule, the checkpoint round trip, a second keep, the one-line errors, exports and a tiny run."""
import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import export
import train
import val
from models.keep import KeepModel
from models.yolo import Model, build_model
from utils.deploy.backends import load_backend
from utils.errors import InputError
from utils.freeze.keep import branch_point, keep_classes_model, merge_names
from utils.freeze.plan import FreezePlan
from utils.train.engine import ModelEMA
from utils.weights.checkpoint import FORMAT, load_checkpoint, load_model, read_weights, save_checkpoint, \
    strip_optimizer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared'
SOURCE_NAMES = ['person', 'car', 'dog', 'cat']
DATA_NAMES = ['helmet', 'person', 'head']


def randomise_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # BN statistics that matter (folding, eval mode)
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def save_model(model, path, names):
    ckpt = {'format': FORMAT, 'yaml': model.yaml, 'names': list(names), 'nc': model.yaml['nc'], 'model': None,
            'ema': model.state_dict()}
    return save_checkpoint(ckpt, path)


@pytest.fixture(scope='module')
def source(tmp_path_factory):
    """A tiny v6/yolov5n checkpoint of ours with class names (the checkpoint whose classes are kept)."""
    torch.manual_seed(0)
    m = randomise_bn(Model('v6/yolov5n.yaml', nc=len(SOURCE_NAMES)))
    return save_model(m, tmp_path_factory.mktemp('src') / 'src.pt', SOURCE_NAMES)


def kept_from(weights_path, data_names=DATA_NAMES, freeze='10', spec=None):
    model, _ = keep_classes_model(read_weights(weights_path), data_names, spec, freeze, 'data', str(weights_path))
    return model


def trained(model, seed=1):
    """The trainable head changed as a fine-tune would change it (the kept ones must not care)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.model[model.branch:].named_parameters():  # frozen trunk, frozen kept heads
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval()


@pytest.fixture(scope='module')
def kept_path(source, tmp_path_factory):
    m = trained(kept_from(source))
    return save_model(m, tmp_path_factory.mktemp('kept') / 'kept.pt', m.names)


def image(h=64, w=96, b=1):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(0))


def n_preds(h, w):
    return 3 * sum((h // s) * (w // s) for s in (8, 16, 32))


def test_checkpoint_classes_are_bit_identical_to_the_checkpoints_own(source):
    ref = load_model(source)
    model = trained(kept_from(source))
    x = image()
    with torch.no_grad():
        expected, got = ref(x)[0], model(x)[0]
    n = n_preds(64, 96)
    assert got.shape == (1, 2 * n, 5 + 6)  # kept head rows, then the trainable head's; 4 + 2 new classes
    assert torch.equal(got[:, :n, :9], expected)  # box, objectness and the 4 checkpoint classes, bit for bit
    assert (got[:, :n, 9:] == 0).all()  # the checkpoint head says nothing about the new classes
    new = got[:, n:]
    assert (new[..., [5 + 1, 5 + 2, 5 + 3]] == 0).all()  # trainable head: person (merged 0), helmet 4, head 5 only
    assert not torch.equal(new[..., :5], expected[..., :5])  # and it is a different head (trained)


def test_fused_fast_path_is_bit_identical_too(source, kept_path):
    """As val.py and detect.py load both (BN folded, channels_last trunk on CPU)."""
    x = image()
    with torch.no_grad():
        expected = load_model(source, fuse=True)(x)[0]
        got = load_model(kept_path, fuse=True)(x)[0]
    assert torch.equal(got[:, :expected.shape[1], :9], expected)


@pytest.mark.parametrize('data_names,freeze', [(DATA_NAMES, '10'), (['helmet', 'head'], 'all')])
@pytest.mark.parametrize('fast', [False, True])
def test_inference_shortcut_equals_the_exportable_forward(source, data_names, freeze, fast):
    """Inference writes each head's decode into its rows and columns of one tensor; with autograd on (as export
    traces it) the forward pads and concatenates. The two give the same bits, for a head whose classes are a
    run of columns (zeros on either side) and one whose are not (DATA_NAMES: person is merged class 0)."""
    model = trained(kept_from(source, data_names, freeze))
    if fast:
        model.set_frozen_fast_path()
    x = image(b=2)
    with torch.inference_mode():
        quick, quick_maps = model(x)
    with torch.enable_grad():
        traced, traced_maps = model(x)
    assert torch.equal(quick, traced)
    assert all(torch.equal(a, b) for a, b in zip(quick_maps, traced_maps))


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / 'weights/yolov5n.pt').is_file(), reason='needs ../shared/weights/yolov5n.pt')
def test_official_yolov5n_classes_bit_identical():
    w = SHARED / 'weights/yolov5n.pt'
    model = trained(kept_from(w, ['helmet', 'head'], freeze='10'))
    x = image(64, 64, 1)
    with torch.no_grad():
        expected, got = load_model(w)(x)[0], model(x)[0]
    assert model.names[:80] == read_weights(w)['names'] and model.names[80:] == ['helmet', 'head']
    assert torch.equal(got[:, :expected.shape[1], :85], expected)


@pytest.mark.slow
def test_new_head_starts_from_the_checkpoint_rows_of_an_overlapping_class(source):
    """Overlap rule: data 'person' -> merged 0; before training the new head scores it as the checkpoint does."""
    model = kept_from(source).eval()
    x = image()
    with torch.no_grad():
        out = model(x)[0]
    n = n_preds(64, 96)
    # box, objectness, person: the same rows on the same features (a conv of another width: rounding apart)
    assert torch.allclose(out[:, n:, :6], out[:, :n, :6], rtol=1e-5, atol=1e-5)


def test_training_forward_sees_the_data_classes_only(source):
    model = kept_from(source).train()
    maps = model(image())
    assert [tuple(p.shape) for p in maps] == [(1, 3, 8, 12, 8), (1, 3, 4, 6, 8), (1, 3, 2, 3, 8)]
    assert not model.kept.training and all(not m.training for m in model.kept.modules())
    assert not any(p.requires_grad for p in model.kept.parameters())
    model.eval()
    model.trainable_only = True  # what the trainer validates each epoch: the data's 3 classes
    with torch.no_grad():
        assert model(image())[0].shape == (1, n_preds(64, 96), 8)


@pytest.mark.slow
def test_freeze_plan_and_ema_leave_the_kept_heads_alone(source):
    model = kept_from(source)
    plan = FreezePlan.from_spec('10', model).apply(model)
    assert 'kept.' in plan.prefixes and 'kept.0.24.m.0.weight' in plan.ema_skip
    assert 'kept.0.17.cv1.bn.running_var' in plan.ema_skip and 'model.10.conv.weight' not in plan.ema_skip
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith('kept.')}
    model.train()
    model(image())  # a training forward: kept BatchNorms must not move
    ema = ModelEMA(model, tau=0)
    ema.set_frozen(plan.ema_skip)
    ema.update(model)
    assert plan.verify(model, ema.ema, log=lambda *_: None) > 0
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_name_merge_and_synonyms():
    merge = merge_names(['person', 'motorcycle', 'tv'], ['Helmet', 'motorbike', 'head', 'tvmonitor'])
    assert merge.names == ('person', 'motorcycle', 'tv', 'Helmet', 'head')
    assert merge.classes == (3, 1, 4, 2)
    assert merge.overlap == [1, 3]


def test_several_sources_make_a_new_class_and_two_data_classes_on_one_source_are_an_error():
    merge = merge_names(['person', 'car', 'truck'], ['vehicle', 'person'], {'vehicle': ['car', 'truck']})
    assert merge.names == ('person', 'car', 'truck', 'vehicle') and merge.classes == (3, 0)
    with pytest.raises(InputError, match="'worker' and 'person' both map onto checkpoint class 'person'"):
        merge_names(['person', 'car'], ['worker', 'person'], {'worker': 'person'})


def test_branch_point_rules():
    m = Model('v6/yolov5n.yaml', nc=2)
    assert branch_point('10', m) == 10 and branch_point(['backbone'], m) == 10 and branch_point('all', m) == 24
    for spec, msg in (('0', 'nothing to share'), (['0', '2'], 'first whole layers'),
                      (['backbone', 'model.24.m.0'], 'also frozen: model.24.m.0.'), ('25', 'Detect .layer 24. must stay')):
        with pytest.raises(InputError, match=msg) as e:
            branch_point(spec, m)
        assert '\n' not in str(e.value)


def test_freeze_all_doubles_only_detect(source):
    model = kept_from(source, freeze='all')
    assert model.branch == 24 and [[n for n, _ in h.named_children()] for h in model.kept] == [['24']]
    x = image()
    with torch.no_grad():
        assert torch.equal(model.eval()(x)[0][:, :n_preds(64, 96), :9], load_model(source)(x)[0])


def test_checkpoint_without_class_names_is_a_one_line_error(tmp_path):
    m = Model('v6/yolov5n.yaml', nc=3)
    path = save_model(m, tmp_path / 'anon.pt', ['0', '1', '2'])
    with pytest.raises(InputError, match='needs the class names of the checkpoint'):
        kept_from(path)


@pytest.mark.slow
def test_round_trip_rebuilds_from_its_own_file(source, kept_path, tmp_path):
    ck = load_checkpoint(kept_path)
    keep = ck['yaml']['keep']
    assert keep['branch'] == 10 and keep['classes'] == [4, 0, 5] and keep['heads'] == [{'nc': 4, 'classes': [0, 1, 2, 3]}]
    assert ck['names'] == SOURCE_NAMES + ['helmet', 'head']
    model = load_model(kept_path)
    assert isinstance(model, KeepModel) and model.kept_nc == 4
    again = save_model(model, tmp_path / 'again.pt', model.names)
    x = image()
    with torch.no_grad():
        assert torch.equal(load_model(again)(x)[0], model(x)[0])
    ck = load_checkpoint(again)
    ck['model'] = ck['ema']
    save_checkpoint(ck, again)
    strip_optimizer(again)
    with torch.no_grad():
        assert torch.equal(load_model(again)(x)[0], model(x)[0])


@pytest.mark.slow
def test_second_keep_keeps_both_sets(kept_path, source):
    model = trained(kept_from(kept_path, ['bird', 'helmet'], freeze='10'), seed=2)
    assert model.names == SOURCE_NAMES + ['helmet', 'head', 'bird']
    assert [h['nc'] for h in model.yaml['keep']['heads']] == [4, 3] and model.yaml['keep']['classes'] == [6, 4]
    x = image()
    n = n_preds(64, 96)
    with torch.no_grad():
        first = load_model(kept_path)(x)[0]
        got = model(x)[0]
    assert got.shape == (1, 3 * n, 5 + 7)
    assert torch.equal(got[:, :2 * n, :11], first)  # the checkpoint's head and the first new head, bit for bit
    with pytest.raises(InputError, match='needs the same frozen layers'):
        kept_from(kept_path, ['bird'], freeze='backbone 10 11')


def test_train_option_errors_are_one_line(capsys):
    """Through ``train.cli`` in this process (tests/test_train.py runs the real process once): SystemExit whose text
    is the one line printed; any other exception (a traceback) fails the test."""
    for flags, msg in ((['--freeze', '0'], 'nothing to share'), ([], 'needs --weights'),
                       (['--freeze', '10', '--unfreeze-epoch', '1'], '--unfreeze-epoch')):
        weights = [] if flags == [] else ['--weights', 'x.pt']
        with pytest.raises(SystemExit) as e:
            train.cli(['--data', 'data/shapes.yaml', '--keep-classes', '--epochs', '2', *weights, *flags])
        line = e.value.code if isinstance(e.value.code, str) else capsys.readouterr().err.strip()
        assert e.value.code != 0 and msg in line, line
        assert '\n' not in line.strip() and 'Traceback' not in line


class StopAfterFirstEpoch(Exception):
    pass


def stop_after_first_epoch(epoch, fitness):
    if epoch == 0:
        raise StopAfterFirstEpoch


@pytest.mark.slow
def test_train_resume_and_val_of_a_kept_model(source, tiny_data, tmp_path, capsys):
    opt = train.parse_opt(['--data', str(tiny_data), '--weights', str(source), '--freeze', '10', '--keep-classes',
                           '--epochs', '2', '--imgsz', '64', '--batch-size', '4', '--workers', '0', '--noplots',
                           '--noautoanchor', '--project', str(tmp_path), '--name', 'k'])
    with pytest.raises(StopAfterFirstEpoch):  # stopped after epoch 0: last.pt holds optimizer and all
        train.main(opt, on_epoch_end=stop_after_first_epoch)
    out = capsys.readouterr().out
    assert 'circle -> 4 (new)' in out
    weights = tmp_path / 'k' / 'weights'
    assert load_checkpoint(weights / 'last.pt')['epoch'] == 0
    train.run(resume=str(weights / 'last.pt'), workers=0)
    out = capsys.readouterr().out
    assert 'Resuming' in out and 'Frozen tensors verified' in out
    ck = load_checkpoint(weights / 'last.pt')
    assert ck['epoch'] == 1 and ck['optimizer'] is None  # resumed to the end, then stripped
    assert load_checkpoint(weights / 'best.pt')['optimizer'] is None  # best: epoch 0 or 1, whichever scored higher
    model = load_model(weights / 'best.pt')
    assert model.names == SOURCE_NAMES + ['circle', 'square', 'triangle', 'star']
    x = image()
    with torch.no_grad():
        assert torch.equal(model(x)[0][:, :n_preds(64, 96), :9], load_model(source)(x)[0])
    result = val.run(data=str(tiny_data), weights=str(weights / 'best.pt'), imgsz=64, batch_size=4, workers=0,
                     plots=False, project=str(tmp_path / 'val'))
    out = capsys.readouterr().out
    assert result.maps.shape == (4,) and 'kept model: checkpoint classes (0)' in out and 'new classes (4)' in out


@pytest.mark.slow
def test_ddp_two_cpu_processes(source, tiny_data, tmp_path):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', str(port),
           'train.py', '--data', str(tiny_data), '--weights', str(source), '--freeze', '10', '--keep-classes',
           '--epochs', '1', '--imgsz', '64', '--batch-size', '8', '--workers', '0', '--device', 'cpu', '--noplots',
           '--noautoanchor', '--project', str(tmp_path), '--name', 'ddp']
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'},
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'Frozen tensors verified' in out.stdout
    x = image()
    with torch.no_grad():
        got = load_model(tmp_path / 'ddp' / 'weights' / 'last.pt')(x)[0]
        assert torch.equal(got[:, :n_preds(64, 96), :9], load_model(source)(x)[0])


@pytest.mark.slow
@pytest.mark.skipif(not (importlib.util.find_spec('onnx') and importlib.util.find_spec('onnxruntime')),
                    reason='onnx/onnxruntime not installed')
def test_exports_detect_what_the_pt_detects(kept_path, tmp_path):
    pt = Path(tmp_path / 'kept.pt')
    pt.write_bytes(Path(kept_path).read_bytes())
    formats = ['torchscript', 'onnx'] + (['openvino'] if importlib.util.find_spec('openvino') else [])
    paths = export.run(weights=str(pt), include=formats, imgsz=64, dynamic=True)
    x = image()
    expected = load_backend(pt, torch.device('cpu'))(x)
    assert expected.shape == (1, 2 * n_preds(64, 96), 11)
    for p in paths:
        backend = load_backend(p, torch.device('cpu'))
        assert backend.names == load_model(pt).names and backend.kept_nc == 4
        got = backend(x)
        assert got.shape == expected.shape, p
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), p
        checkpoint_part = got[:, :n_preds(64, 96), 9:]
        assert (checkpoint_part == 0).all(), p  # the scatter is exact in every format


@pytest.mark.slow
def test_build_model_dispatches_on_the_keep_section(kept_path):
    ck = load_checkpoint(kept_path)
    assert type(build_model(ck['yaml'])) is KeepModel
    plain = dict(ck['yaml'])
    plain.pop('keep')
    assert type(build_model(plain)) is Model
    bad = dict(ck['yaml'], keep={**ck['yaml']['keep'], 'classes': [0, 0, 5]})
    with pytest.raises(ValueError, match='must be 3 distinct indices'):
        build_model(bad)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / 'weights/yolov5n.pt').is_file() or not (SHARED / 'images/bus.jpg').is_file(),
                    reason='needs ../shared/weights/yolov5n.pt and ../shared/images/bus.jpg')
def test_detect_and_hub_on_a_kept_yolov5n_find_the_checkpoints_boxes(tmp_path):
    import detect
    w = SHARED / 'weights/yolov5n.pt'
    kept = trained(kept_from(w, ['helmet', 'head']))
    path = save_model(kept, tmp_path / 'kept.pt', kept.names)
    bus = SHARED / 'images/bus.jpg'
    runs = [detect.run(weights=str(p), source=str(bus), device='cpu', nosave=True, verbose=False,
                       project=str(tmp_path / 'runs'))[0]['det'] for p in (w, path)]
    assert len(runs[0]) >= 4 and torch.equal(runs[1][runs[1][:, 5] < 80], runs[0])
    hub = torch.hub.load(str(ROOT), 'custom', path=str(path), source='local', device='cpu')
    assert hub.names[80:] == ['helmet', 'head']
    det = hub(str(bus)).xyxy[0]
    assert torch.allclose(det[det[:, 5] < 80], runs[0], atol=1e-4)


def test_val_split_line_means_each_side(capsys):
    import numpy as np
    from types import SimpleNamespace
    from utils.eval.report import print_keep_split
    from utils.freeze.keep import kept_and_new
    kept, new = kept_and_new(SOURCE_NAMES + ['helmet', 'head'], 4, ['helmet', 'person', 'head', 'cat'])
    assert (kept, new) == ([1, 3], [0, 2])
    per_class = SimpleNamespace(classes=np.array([0, 1, 2]), ap50=np.array([0.5, 0.9, 0.7]),
                                ap_mean=np.array([0.2, 0.6, 0.3]))
    out = print_keep_split(SimpleNamespace(per_class=per_class), kept, new)
    assert out == pytest.approx([0.9, 0.6, 0.6, 0.25])  # cat has no labels: person alone on the checkpoint side
    assert capsys.readouterr().out == ('kept model: checkpoint classes (2) mAP50 0.900 mAP50-95 0.600 | '
                                       'new classes (2) mAP50 0.600 mAP50-95 0.250\n')

"""export.py: TorchScript (always) and ONNX (when installed) reproduce the PyTorch model's output."""
import importlib.util
import json
import sys

import pytest
import torch

import export
from models.yolo import Model
from utils.weights.checkpoint import FORMAT, load_model, save_checkpoint


def make_weights(tmp_path, class_rows=None):
    """One of our checkpoints: a small v6 yolov5n with 4 classes and non-trivial weights."""
    torch.manual_seed(0)
    model = Model('v6/yolov5n.yaml', nc=4, class_rows=class_rows)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # make BN folding matter
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ckpt = {'format': FORMAT, 'yaml': model.yaml, 'names': ['a', 'b', 'c', 'd'], 'nc': 4,
            'model': model.state_dict(), 'ema': None}
    return save_checkpoint(ckpt, tmp_path / 'tiny.pt')


@pytest.fixture
def weights(tmp_path):
    return make_weights(tmp_path)


@pytest.mark.slow
def test_torchscript_output_equals_pytorch(weights):
    paths = export.run(weights=weights, include=['torchscript'], imgsz=[128, 160], batch_size=2, device='cpu')
    assert paths == [weights.with_suffix('.torchscript')]
    extra = {'config.txt': ''}
    ts = torch.jit.load(str(paths[0]), _extra_files=extra)
    assert json.loads(extra['config.txt']) == {'shape': [2, 3, 128, 160], 'stride': 32, 'names': ['a', 'b', 'c', 'd'],
                                               'imgsz': [128, 160], 'batch': 2, 'dynamic': True, 'half': False}
    x = torch.rand(2, 3, 128, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = load_model(weights)(x)[0]  # unfused PyTorch model
        got = ts(x)
    assert got.shape == expected.shape == (2, 3 * (16 * 20 + 8 * 10 + 4 * 5), 9)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_onnx_output_equals_pytorch(weights):
    if importlib.util.find_spec('onnx') is None or importlib.util.find_spec('onnxruntime') is None:
        pytest.skip('onnx and onnxruntime are not both installed')
    import onnxruntime
    paths = export.run(weights=weights, include=['onnx'], imgsz=[128, 160], device='cpu')
    assert [p.suffix for p in paths] == ['.onnx']  # only the asked formats
    x = torch.rand(1, 3, 128, 160, generator=torch.Generator().manual_seed(0))
    session = onnxruntime.InferenceSession(str(paths[0]), providers=['CPUExecutionProvider'])
    got = session.run(None, {'images': x.numpy()})[0]
    with torch.no_grad():
        expected = load_model(weights)(x)[0]
    assert torch.allclose(torch.from_numpy(got), expected, atol=1e-3, rtol=1e-3)


@pytest.mark.slow
def test_grouped_class_rows_export_with_their_reduction(tmp_path):
    """A head whose classes keep several checkpoint rows (transfer, max rule) exports with the reduction inside."""
    path = make_weights(tmp_path, class_rows=[1, 3, 1, 2])
    onnx = importlib.util.find_spec('onnx') is not None and importlib.util.find_spec('onnxruntime') is not None
    paths = export.run(weights=path, include=['torchscript', 'onnx'] if onnx else ['torchscript'], imgsz=96)
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = load_model(path)(x)[0]
        got = [torch.jit.load(str(paths[0]))(x)]
    if onnx:
        import onnxruntime
        session = onnxruntime.InferenceSession(str(paths[1]), providers=['CPUExecutionProvider'])
        got.append(torch.from_numpy(session.run(None, {'images': x.numpy()})[0]))
    assert expected.shape == (1, 3 * (12 * 12 + 6 * 6 + 3 * 3), 9)
    for g in got:
        assert torch.allclose(g, expected, atol=1e-3, rtol=1e-3)


@pytest.mark.slow
def test_onnx_missing_is_one_clear_message(weights, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'onnx', None)  # what an absent package looks like to import
    paths = export.run(weights=weights, include=['torchscript', 'onnx'], imgsz=64)
    assert paths == [weights.with_suffix('.torchscript')] and not weights.with_suffix('.onnx').exists()
    err = capsys.readouterr().err
    assert 'onnx export skipped: ONNX export needs the onnx package, which is not installed (pip install onnx)' in err
    with pytest.raises(SystemExit) as e:
        export.main(['--weights', str(weights), '--include', 'onnx', '--imgsz', '64'])
    assert str(e.value) == 'error: --include onnx: nothing could be exported (see the note above)'


def test_cli_errors_are_one_line(tmp_path, weights, capsys):
    with pytest.raises(SystemExit) as e:
        export.main(['--weights', str(tmp_path / 'absent.pt')])
    assert str(e.value) == f'error: {tmp_path / "absent.pt"}: weights file not found'
    with pytest.raises(SystemExit) as e:
        export.main(['--weights', str(weights), '--imgsz', '100'])
    assert 'multiple of the model stride 32' in str(e.value) and '\n' not in str(e.value)
    with pytest.raises(SystemExit) as e:
        export.main(['--weights', str(weights), '--batch-size', '0'])
    assert str(e.value) == 'error: --batch-size 0: must be at least 1'


@pytest.mark.slow
def test_only_the_asked_formats_are_written(tmp_path, weights):
    written = export.run(weights=str(weights), include=['torchscript'], imgsz=64)
    assert [p.suffix for p in written] == ['.torchscript']


def test_export_refuses_read_only_weights_folder(tmp_path):
    import stat
    m = Model('v6/yolov5n.yaml', nc=2)
    path = save_checkpoint({'format': FORMAT, 'yaml': m.yaml, 'names': ['a', 'b'], 'model': m.state_dict(),
                            'ema': None}, tmp_path / 'ro' / 'w.pt')
    path.parent.chmod(stat.S_IRUSR | stat.S_IXUSR)  # read-only, like ../shared
    try:
        with pytest.raises(ValueError, match='read-only folder'):
            export.run(weights=str(path), include=['torchscript'], imgsz=64)
        assert sorted(p.name for p in path.parent.iterdir()) == ['w.pt']
    finally:
        path.parent.chmod(stat.S_IRWXU)


@pytest.mark.slow
def test_img_size_alias_as_the_other_scripts_accept(tmp_path, weights):
    """--img-size (and --img) set the export size, as in train.py, val.py and detect.py."""
    for flag in ('--img-size', '--img', '--imgsz'):
        assert export.parse_args(['--weights', 'w.pt', flag, '96', '128']).imgsz == [96, 128]
    export.main(['--weights', str(weights), '--include', 'torchscript', '--img-size', '96'])
    meta = {'config.txt': ''}
    torch.jit.load(str(weights.with_suffix('.torchscript')), _extra_files=meta)
    assert json.loads(meta['config.txt'])['imgsz'] == [96, 96]

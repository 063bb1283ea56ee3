"""utils/deploy/backends.py and export.py's new flags on a tiny 4-class model: metadata, fixed shapes, missing packages."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import export
from models.yolo import Model
from utils.deploy.backends import load_backend, read_metadata
from utils.weights.checkpoint import FORMAT, load_model, save_checkpoint
from utils.optional import MissingPackage, require

HAVE = {m: importlib.util.find_spec(m) is not None for m in ('onnx', 'onnxruntime', 'onnxslim', 'openvino')}
needs_onnx = pytest.mark.skipif(not (HAVE['onnx'] and HAVE['onnxruntime']), reason='onnx/onnxruntime not installed')
NAMES = ['a', 'b', 'c', 'd']
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = Model('v6/yolov5n.yaml', nc=4)
    ckpt = {'format': FORMAT, 'yaml': model.yaml, 'names': NAMES, 'nc': 4, 'model': model.state_dict(), 'ema': None}
    return save_checkpoint(ckpt, tmp_path_factory.mktemp('w') / 'tiny.pt')


def reference(weights, x):
    with torch.no_grad():
        return load_model(weights)(x)[0]


@pytest.mark.slow
@needs_onnx
def test_fixed_batch_is_split_and_padded(weights):
    onnx_path, = export.run(weights=weights, include=['onnx'], imgsz=64, batch_size=2)
    backend = load_backend(onnx_path, 'cpu')
    assert (backend.batch, backend.imgsz, backend.names, backend.format) == (2, (64, 64), NAMES, 'ONNX')
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(backend(x), reference(weights, x), atol=1e-3)  # 2 + (1 padded to 2)


@pytest.mark.slow
@needs_onnx
def test_fixed_size_export_places_a_smaller_input_on_its_canvas(weights):
    onnx_path, = export.run(weights=weights, include=['onnx'], imgsz=[96, 128])
    backend = load_backend(onnx_path, 'cpu')
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    canvas = torch.full((1, 3, 96, 128), 114 / 255)
    canvas[:, :, 0:64, 32:96] = x  # offsets (128-64)/2 = 32, (96-64)/2 = 16 -> 0 on the stride-32 grid
    expected = reference(weights, canvas)
    expected[..., 0] -= 32
    assert torch.allclose(backend(x), expected, atol=1e-3)
    with pytest.raises(ValueError, match=r'takes 96x128 images \(fixed at export\), got 128x128; re-export'):
        backend(torch.zeros(1, 3, 128, 128))


@pytest.mark.slow
@needs_onnx
def test_dynamic_and_simplified_onnx_takes_any_size(weights):
    if not HAVE['onnxslim']:
        pytest.skip('onnxslim not installed')
    onnx_path, = export.run(weights=weights, include=['onnx'], imgsz=64, dynamic=True, simplify=True)
    backend = load_backend(onnx_path, 'cpu')
    assert backend.dynamic and backend.batch is None
    x = torch.rand(2, 3, 96, 160, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(backend(x), reference(weights, x), atol=1e-3)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE['openvino'], reason='openvino not installed')
def test_openvino_export_folder_and_xml(weights):
    folder, = export.run(weights=weights, include=['openvino'], imgsz=64)
    assert folder.name == 'tiny_openvino_model'
    assert (folder / 'tiny.xml').is_file() and (folder / 'metadata.yaml').is_file()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    for path in (folder, folder / 'tiny.xml'):
        backend = load_backend(path, 'cpu')
        assert (backend.names, backend.imgsz, backend.format) == (NAMES, (64, 64), 'OpenVINO')
        y = backend(x)
        assert torch.allclose(y, reference(weights, x), atol=1e-3)
        # nothing of the caller's stays in OpenVINO's hands, nor of OpenVINO's in the result (a zero-copy input
        # stayed in the cached request after the call, a view of a tensor the caller may free)
        assert not np.shares_memory(backend.request.get_input_tensor().data, x.numpy())
        assert not np.shares_memory(backend.request.get_output_tensor().data, y.numpy())


@pytest.mark.slow
@pytest.mark.skipif(not HAVE['openvino'], reason='openvino not installed')
def test_openvino_models_freed_in_creation_order_leave_signals_working(weights):
    """On AMX CPUs each compiled model put the thread on a signal stack of its own and, when freed, restored the one
    it had found: freeing two models first-made-first left the thread on an unmapped stack, and the next handled
    signal (here SIGUSR1; in the suite, a subprocess's SIGCHLD) killed the process. Elsewhere this passes anyway."""
    folder, = export.run(weights=weights, include=['openvino'], imgsz=64)
    code = ("import gc, os, signal, sys; from utils.deploy.backends import load_backend; "
            "a = load_backend(sys.argv[1], 'cpu'); b = load_backend(sys.argv[1], 'cpu'); "
            "del a; gc.collect(); del b; gc.collect(); "
            "signal.signal(signal.SIGUSR1, lambda *_: print('handled')); os.kill(os.getpid(), signal.SIGUSR1)")
    out = subprocess.run([sys.executable, '-c', code, str(folder)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.split() == ['handled'], (out.returncode, out.stderr[-1000:])


@pytest.mark.parametrize('module, make', [('onnxruntime', lambda d: d / 'm.onnx'),
                                          ('openvino', lambda d: d / 'm_openvino_model')])
def test_missing_runtime_is_one_line(tmp_path, monkeypatch, module, make):
    path = make(tmp_path)
    path.mkdir() if not path.suffix else path.write_bytes(b'not a model')
    monkeypatch.setitem(sys.modules, module, None)  # what an absent package looks like to import
    with pytest.raises(MissingPackage) as e:
        load_backend(path, 'cpu')
    assert str(e.value) == f'running {path.name} needs the {module} package, which is not installed ' \
                           f'(pip install {module})'


@pytest.mark.slow
def test_export_notes_for_missing_packages(weights, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'openvino', None)
    monkeypatch.setitem(sys.modules, 'onnxslim', None)
    written = export.run(weights=weights, include=['torchscript', 'openvino'], imgsz=64)
    assert [p.suffix for p in written] == ['.torchscript']
    assert ('openvino export skipped: OpenVINO export needs the openvino package, which is not installed '
            '(pip install openvino)') in capsys.readouterr().err
    if HAVE['onnx']:
        onnx_path, = export.run(weights=weights, include=['onnx'], imgsz=64, simplify=True)
        assert 'needs the onnxslim package' in capsys.readouterr().err and onnx_path.is_file()


def test_half_refused_on_cpu_and_bad_files(weights, tmp_path):
    with pytest.raises(SystemExit) as e:
        export.main(['--weights', str(weights), '--half', '--device', 'cpu'])
    assert str(e.value) == ('error: --half needs a CUDA device (e.g. --device 0) for torchscript, onnx; exports on '
                            'cpu are FP32 (only --include tflite --half works on any device)')
    (tmp_path / 'x.engine').write_text('')
    with pytest.raises(ValueError, match=r"x\.engine: unknown model format '\.engine'"):
        load_backend(tmp_path / 'x.engine', 'cpu')
    with pytest.raises(FileNotFoundError, match='absent.onnx: weights file not found'):
        load_backend(tmp_path / 'absent.onnx', 'cpu')
    (tmp_path / 'bad.torchscript').write_bytes(b'garbage')
    with pytest.raises(ValueError, match='bad.torchscript: not a TorchScript model'):
        load_backend(tmp_path / 'bad.torchscript', 'cpu')
    if HAVE['onnxruntime']:
        (tmp_path / 'bad.onnx').write_bytes(b'garbage')
        with pytest.raises(ValueError, match='bad.onnx: not a readable ONNX model'):
            load_backend(tmp_path / 'bad.onnx', 'cpu')


def test_metadata_reads_ours_and_upstreams():
    ours = read_metadata({'stride': '32', 'names': '["cat", "dog"]'}, 'x.onnx')
    upstream = read_metadata({'stride': '64', 'names': "{0: 'cat', 1: 'dog'}"}, 'y.onnx')  # a Python literal
    assert (ours['names'], ours['stride'], upstream['names'], upstream['stride']) == (['cat', 'dog'], 32,
                                                                                      ['cat', 'dog'], 64)
    assert read_metadata({}, 'z.onnx', nc=3)['names'] == ['0', '1', '2']  # no names: ids, with a note
    with pytest.raises(ValueError, match='z.torchscript: its metadata has no class names'):
        read_metadata({'names': "__import__('os')"}, 'z.torchscript')  # never evaluated as code


def test_require_distinguishes_absent_from_broken(monkeypatch):
    assert require('json').dumps([]) == '[]'
    monkeypatch.setitem(sys.modules, 'somepkg', None)
    with pytest.raises(MissingPackage, match=r'^x needs the some-pkg package, which is not installed '
                                             r'\(pip install some-pkg\)$'):
        require('somepkg', 'some-pkg', feature='x')

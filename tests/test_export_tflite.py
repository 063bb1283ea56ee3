"""export.py --include tflite (litert-torch) and the LiteRT backend: the official yolov5n at 128 px, FP32 and FP16.

A 128x128 export sees bus.jpg (128x96 after the letterbox) on its 128x128 canvas, so it is compared with the .pt
given that same canvas (as tests/test_export_roundtrip.py does for fixed-size ONNX and OpenVINO exports).
"""
import importlib.util
import json
import shutil
import sys
import zipfile
from pathlib import Path

import cv2
import pytest
import torch

import detect
import export
import val
from tests.test_export import make_weights
from utils.data.config import check_dataset
from utils.deploy.backends import load_backend
from utils.deploy.predict import Predictor, preprocess
from utils.eval.evaluator import EvalConfig, evaluate
from utils.optional import MissingPackage

SHARED = Path(__file__).resolve().parents[2] / 'shared'
WEIGHTS = SHARED / 'weights' / 'yolov5n.pt'
COCO64 = SHARED / 'data' / 'coco64dev'
HAVE = {m: importlib.util.find_spec(m) is not None for m in ('litert_torch', 'ai_edge_litert')}
needs_litert = pytest.mark.skipif(not all(HAVE.values()) or not WEIGHTS.is_file(),
                                  reason='needs litert-torch, ai-edge-litert and ../shared/weights/yolov5n.pt')
SIZE = 128
FP16_BOX_PX = 0.5  # FP16 weights move a decoded box edge by at most this (pixels at 128 px) ...
FP16_SCORE = 0.01  # ... and a sigmoid score by at most this


@pytest.fixture(scope='module')
def exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp('tflite')
    pt = Path(shutil.copy(WEIGHTS, folder / 'yolov5n.pt'))
    fp32, = export.run(weights=str(pt), include=['tflite'], imgsz=SIZE)
    fp16, = export.run(weights=str(pt), include=['tflite'], imgsz=SIZE, half=True)  # on the CPU: FP16 weights
    return {'pt': pt, 'fp32': fp32, 'fp16': fp16}


def canvas_pt(exports):
    """The .pt run as a fixed 128x128 model: a smaller input is placed on the canvas as the export places it."""
    backend = load_backend(exports['pt'], 'cpu')
    backend.imgsz = (SIZE, SIZE)
    return backend


def bus_input():
    return preprocess(cv2.imread(str(SHARED / 'images' / 'bus.jpg')), (SIZE, SIZE), 32, torch.device('cpu'))[0]


@needs_litert
def test_tflite_files_take_channels_last_input_and_carry_metadata(exports):
    assert (exports['fp32'].name, exports['fp16'].name) == ('yolov5n.tflite', 'yolov5n-fp16.tflite')
    for key, half in (('fp32', False), ('fp16', True)):
        with zipfile.ZipFile(exports[key]) as zf:
            meta = json.loads(zf.read('metadata.json'))
        assert (meta['imgsz'], meta['batch'], meta['half'], meta['dynamic']) == ([SIZE, SIZE], 1, half, False)
        backend = load_backend(exports[key], 'cpu')
        assert backend.interpreter.get_input_details()[0]['shape'].tolist() == [1, SIZE, SIZE, 3]  # NHWC
        assert (backend.format, backend.imgsz, backend.batch, backend.stride) == ('TFLite', (SIZE, SIZE), 1, 32)
        assert backend.names[:3] == ['person', 'bicycle', 'car'] and backend.nc == 80
    assert exports['fp16'].stat().st_size < 0.6 * exports['fp32'].stat().st_size  # FP16 weights: half the bytes


@needs_litert
def test_tflite_outputs_equal_the_pt(exports):
    x = bus_input()
    x = torch.cat((x, x.flip(-1)))  # two images through the export's fixed batch of 1
    reference = canvas_pt(exports)(x)
    fp32 = load_backend(exports['fp32'], 'cpu')(x)
    fp16 = load_backend(exports['fp16'], 'cpu')(x)
    assert fp32.shape == fp16.shape == reference.shape == (2, 3 * (16 * 16 + 8 * 8 + 4 * 4), 85)
    assert torch.allclose(fp32, reference, atol=1e-3, rtol=1e-3)
    assert (fp16[..., :4] - reference[..., :4]).abs().max() < FP16_BOX_PX
    assert (fp16[..., 4:] - reference[..., 4:]).abs().max() < FP16_SCORE
    assert not torch.equal(fp16, fp32)  # the FP16 file really holds other weights


@needs_litert
def test_detect_on_tflite_finds_what_the_pt_finds(exports, tmp_path):
    predictor = Predictor(canvas_pt(exports), SIZE)
    images = sorted((SHARED / 'images').glob('*.jpg'))
    reference = {p.name: predictor(cv2.imread(str(p)))[0] for p in images}
    assert sum(len(d) for d in reference.values()) >= 3  # yolov5n finds people in bus.jpg and zidane.jpg at 128
    for key, atol in (('fp32', 0.05), ('fp16', 1.0)):
        found = detect.run(weights=str(exports[key]), source=str(SHARED / 'images'), imgsz=SIZE, device='cpu',
                           nosave=True, verbose=False, project=str(tmp_path))
        for r in found:
            ref = reference[Path(r['path']).name]
            assert r['det'].shape == ref.shape, (key, r['path'])
            assert torch.equal(r['det'][:, 5], ref[:, 5]), (key, r['path'])  # the same classes, in the same order
            assert torch.allclose(r['det'][:, :5], ref[:, :5], atol=atol), (key, r['path'])


@needs_litert
@pytest.mark.skipif(not (COCO64 / 'coco64dev.yaml').is_file(), reason='needs ../shared/data/coco64dev')
def test_val_on_tflite_scores_like_the_pt(exports, tmp_path):
    listing = tmp_path / 'val16.txt'
    listing.write_text(''.join(f'{p}\n' for p in sorted((COCO64 / 'images' / 'train2017').glob('*.jpg'))[:16]))
    data = check_dataset({'path': str(COCO64), 'train': str(listing), 'val': str(listing), 'nc': 80,
                          'names': list(check_dataset(str(COCO64 / 'coco64dev.yaml'))['names'])})
    square = val.build_dataloader(data, 'val', SIZE, 16, 32, 0, False, square=True)
    result = evaluate(load_backend(exports['pt'], 'cpu'), square, EvalConfig.for_data(data))
    assert result.map50 > 0.05  # yolov5n finds something at 128 px
    for key, tol in (('fp32', 0.002), ('fp16', 0.01)):
        got = val.run(data=data, weights=str(exports[key]), imgsz=SIZE, batch_size=16, device='cpu', workers=0,
                      plots=False, project=str(tmp_path))
        assert abs(got.map50 - result.map50) < tol and abs(got.map - result.map) < tol, (key, got, result)


def test_export_tflite_half_is_allowed_on_the_cpu_alone():
    export.check_options(['tflite'], 1, True, torch.device('cpu'))  # FP16 weights need no CUDA
    with pytest.raises(ValueError, match=r'^--half needs a CUDA device \(e.g. --device 0\) for onnx, tflite;'):
        export.check_options(['onnx', 'tflite'], 1, True, torch.device('cpu'))


@pytest.mark.slow
def test_missing_litert_packages_are_one_line(tmp_path, monkeypatch, capsys):
    weights = make_weights(tmp_path)
    monkeypatch.setitem(sys.modules, 'litert_torch', None)  # what an absent package looks like to import
    paths = export.run(weights=weights, include=['torchscript', 'tflite'], imgsz=64)
    assert paths == [weights.with_suffix('.torchscript')] and not weights.with_suffix('.tflite').exists()
    assert ('tflite export skipped: TFLite export needs the litert-torch package, which is not installed '
            '(pip install litert-torch)') in capsys.readouterr().err
    for module in ('ai_edge_litert', 'ai_edge_litert.interpreter'):  # absent, even after another test imported it
        monkeypatch.setitem(sys.modules, module, None)
    (tmp_path / 'm.tflite').write_bytes(b'')
    with pytest.raises(MissingPackage, match=r'^running m\.tflite needs the ai-edge-litert package, which is not '
                                             r'installed \(pip install ai-edge-litert\)$'):
        load_backend(tmp_path / 'm.tflite', 'cpu')


@pytest.mark.skipif(not HAVE['ai_edge_litert'], reason='needs ai-edge-litert')
def test_unreadable_tflite_is_one_line(tmp_path):
    (tmp_path / 'bad.tflite').write_bytes(b'garbage')
    with pytest.raises(ValueError, match=r'bad\.tflite: not a readable TFLite model \(The model is not a valid'):
        load_backend(tmp_path / 'bad.tflite', 'cpu')

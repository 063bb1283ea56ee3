"""Export -> detect/val round trip with the official yolov5n: every format scores and detects as the .pt does.

Exports that take any size (TorchScript; ONNX/OpenVINO with --dynamic) are validated on the same rectangular
batches as the .pt, so their mAP must match it. Exports of a fixed size take square batches of that size, so
they are compared with the .pt validated on square batches too (the letterbox, not the export, moves mAP there).
"""
import importlib.util
import shutil
from collections import Counter
from pathlib import Path

import cv2
import pytest
import torch

import detect
import export
import val
from utils.deploy.backends import load_backend
from utils.boxes import box_iou
from utils.data.config import check_dataset
from utils.eval.evaluator import EvalConfig, evaluate
from utils.deploy.predict import Predictor

SHARED = Path(__file__).resolve().parents[2] / 'shared'
WEIGHTS = SHARED / 'weights' / 'yolov5n.pt'
COCO64 = SHARED / 'data' / 'coco64dev'
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not WEIGHTS.is_file() or not (COCO64 / 'coco64dev.yaml').is_file(),
                                 reason='needs ../shared/weights/yolov5n.pt and ../shared/data/coco64dev')]
HAVE = {m: importlib.util.find_spec(m) is not None for m in ('onnx', 'onnxruntime', 'openvino')}
needs_onnx = pytest.mark.skipif(not (HAVE['onnx'] and HAVE['onnxruntime']), reason='onnx/onnxruntime not installed')
needs_openvino = pytest.mark.skipif(not HAVE['openvino'], reason='openvino not installed')
TOL = 0.002  # mAP agreement asked of every format


@pytest.fixture(scope='module')
def exports(tmp_path_factory):
    """{'pt', 'torchscript', 'onnx_dynamic'} at 320 (any size) and {'pt640', 'onnx640', 'openvino640'} (fixed)."""
    out = {}
    for folder, include, size, dynamic in (('any', ['torchscript', 'onnx'], 320, True),
                                           ('fixed', ['onnx', 'openvino'], 640, False)):
        d = tmp_path_factory.mktemp(folder)
        pt = Path(shutil.copy(WEIGHTS, d / 'yolov5n.pt'))
        include = [f for f in include if f == 'torchscript' or (HAVE['onnx'] if f == 'onnx' else HAVE['openvino'])]
        if include:
            export.run(weights=str(pt), include=include, imgsz=size, dynamic=dynamic, simplify=dynamic)
        key = '' if dynamic else str(size)
        out.update({f'pt{key}': pt, f'torchscript{key}': pt.with_suffix('.torchscript'),
                    f'onnx{key}' if key else 'onnx_dynamic': pt.with_suffix('.onnx'),
                    f'openvino{key}': d / 'yolov5n_openvino_model'})
    return out


def maps(weights, data, tmp_path, imgsz):
    result = val.run(data=data, weights=str(weights), imgsz=imgsz, batch_size=16, device='cpu', workers=0,
                     plots=False, project=str(tmp_path))
    return result.map50, result.map


def test_any_size_exports_validate_like_the_pt(exports, tmp_path, capsys):
    data = str(COCO64 / 'coco64dev.yaml')
    reference = maps(exports['pt'], data, tmp_path, 320)
    assert 0.5 < reference[0] < 0.6 and 0.3 < reference[1] < 0.45  # yolov5n at 320 on these 64 images
    formats = ['torchscript'] + (['onnx_dynamic'] if HAVE['onnx'] and HAVE['onnxruntime'] else [])
    for fmt in formats:
        got = maps(exports[fmt], data, tmp_path, 320)
        assert abs(got[0] - reference[0]) < TOL and abs(got[1] - reference[1]) < TOL, (fmt, got, reference)
    assert 'fixed at export' not in capsys.readouterr().out


@needs_onnx
@needs_openvino
def test_fixed_size_exports_validate_like_the_pt_on_square_batches(exports, tmp_path, capsys):
    listing = tmp_path / 'val16.txt'  # 16 images keep this at 640 cheap
    listing.write_text(''.join(f'{p}\n' for p in sorted((COCO64 / 'images' / 'train2017').glob('*.jpg'))[:16]))
    data = check_dataset({'path': str(COCO64), 'train': str(listing), 'val': str(listing), 'nc': 80,
                          'names': list(check_dataset(str(COCO64 / 'coco64dev.yaml'))['names'])})
    square = val.build_dataloader(data, 'val', 640, 16, 32, 0, False, square=True)
    result = evaluate(load_backend(exports['pt640'], 'cpu'), square, EvalConfig.for_data(data))  # the evaluator seam
    reference = result.map50, result.map
    for fmt in ('onnx640', 'openvino640'):
        got = maps(exports[fmt], data, tmp_path, 320)  # the export's own 640 is used, with a note
        assert abs(got[0] - reference[0]) < TOL and abs(got[1] - reference[1]) < TOL, (fmt, got, reference)
    assert capsys.readouterr().out.count('takes 640x640 images (fixed at export); validating at 640, not 320') == 2


def detections(weights, tmp_path):
    res = detect.run(weights=str(weights), source=str(SHARED / 'images'), device='cpu', nosave=True,
                     verbose=False, project=str(tmp_path))
    return {Path(r['path']).name: r['det'] for r in res}


def counts(det):
    return Counter(int(c) for c in det[:, 5])


def assert_same(found, reference, what, atol=0.05):
    for name, det in found.items():
        assert det.shape == reference[name].shape, (what, name)
        assert torch.allclose(det, reference[name], atol=atol), (what, name)


def test_detect_on_any_size_exports_finds_what_the_pt_finds(exports, tmp_path):
    reference = detections(exports['pt'], tmp_path)
    assert counts(reference['bus.jpg']) == {0: 4, 5: 1} and counts(reference['zidane.jpg']) == {0: 2, 27: 1}
    for fmt in ['torchscript'] + (['onnx_dynamic'] if HAVE['onnx'] and HAVE['onnxruntime'] else []):
        assert_same(detections(exports[fmt], tmp_path), reference, fmt)


@needs_onnx
@needs_openvino
def test_detect_on_fixed_size_exports_matches_the_pt_on_the_same_canvas(exports, tmp_path):
    """A 640x640 export sees bus.jpg (640x480 after the letterbox) on a 640x640 canvas; the .pt given that canvas
    finds the same boxes. Against the .pt on its 640x480 input, objects cut by the image border can differ."""
    canvas = load_backend(exports['pt640'], 'cpu')
    canvas.imgsz = (640, 640)  # the .pt run as a fixed-size model
    predictor = Predictor(canvas, 640)
    reference = {p.name: predictor(cv2.imread(str(p)))[0] for p in sorted((SHARED / 'images').glob('*.jpg'))}
    plain = detections(exports['pt640'], tmp_path)
    for fmt in ('onnx640', 'openvino640'):
        found = detections(exports[fmt], tmp_path)
        assert_same(found, reference, fmt)
        for name, det in found.items():  # every box is one the .pt finds on its own input too
            ref = plain[name]
            same_class = det[:, 5:6].T == ref[:, 5:6]  # (len(ref), len(det))
            assert (box_iou(ref[:, :4], det[:, :4]) * same_class).max(0).values.min() > 0.9, (fmt, name)


def test_exports_carry_their_metadata(exports):
    for key, shape in (('torchscript', None), ('onnx_dynamic', None), ('onnx640', (640, 640)),
                       ('openvino640', (640, 640))):
        if not exports[key].exists():
            continue
        backend = load_backend(exports[key], 'cpu')
        assert backend.names[:3] == ['person', 'bicycle', 'car'] and backend.nc == 80 and backend.stride == 32
        assert backend.imgsz == shape and backend.batch == (1 if shape else None), key

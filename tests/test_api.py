"""The Python API (utils/deploy/api.py, utils/deploy/detections.py) and hubconf.py: the boxes are detect.py's, offline."""
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import detect
from utils.deploy.api import InferenceModel, load, official
from utils.deploy.detections import Detections

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
WEIGHTS = SHARED / 'weights' / 'yolov5n.pt'
BUS = SHARED / 'images' / 'bus.jpg'
needs_weights = pytest.mark.skipif(not WEIGHTS.is_file() or not BUS.is_file(),
                                   reason='needs ../shared/weights/yolov5n.pt and ../shared/images')


@pytest.fixture(scope='module')
def model():
    return torch.hub.load(str(REPO), 'custom', path=str(WEIGHTS), source='local', device='cpu')


@pytest.fixture(scope='module')
def detect_bus(tmp_path_factory):
    """detect.py's boxes on bus.jpg at its defaults (640, conf 0.25, iou 0.45)."""
    res = detect.run(weights=str(WEIGHTS), source=str(BUS), device='cpu', nosave=True, verbose=False,
                     project=str(tmp_path_factory.mktemp('runs')))
    return res[0]['det']


@pytest.mark.slow
@needs_weights
def test_hub_custom_gives_detect_boxes_for_every_input_kind(model, detect_bus):
    assert isinstance(model, InferenceModel) and model.names[5] == 'bus' and model.stride == 32
    rgb = cv2.imread(str(BUS))[..., ::-1]  # numpy images are RGB, as upstream's
    pil = Image.fromarray(np.ascontiguousarray(rgb))  # the same pixels, as a PIL RGB image
    results = model([str(BUS), BUS, rgb, pil, np.dstack((rgb, np.full(rgb.shape[:2], 255, np.uint8)))])  # + RGBA
    assert len(results) == 5 and results.files[:3] == ['bus.jpg', 'bus.jpg', 'image2.jpg']
    for det in results.xyxy:
        assert det.shape == detect_bus.shape == (5, 6)
        assert torch.allclose(det, detect_bus, atol=1e-4)
    assert torch.equal(model(str(BUS)).xyxy[0], results.xyxy[0])  # one image, not in a list


@pytest.mark.slow
@needs_weights
def test_upstream_numpy_idiom_gives_the_file_detections(model):
    """Upstream's documented idiom, cv2.imread(f)[..., ::-1], passes RGB: the same boxes as the file path. The
    array in OpenCV's own BGR order is another picture to the model (as upstream), with other boxes."""
    by_path = model(str(BUS)).xyxy[0]
    assert len(by_path) == 5
    assert torch.equal(model(cv2.imread(str(BUS))[..., ::-1]).xyxy[0], by_path)
    swapped = model(cv2.imread(str(BUS))).xyxy[0]
    assert swapped.shape != by_path.shape or not torch.allclose(swapped, by_path, atol=1e-3)


def test_numpy_images_are_read_as_rgb_without_shared(tmp_path):
    """Without ../shared: a tiny random model gives a file and its RGB array the same boxes; the arrays reach
    the predictor as the BGR image cv2.imread gives (colour, gray and RGBA)."""
    from models.yolo import Model
    from utils.deploy.api import as_bgr
    from utils.deploy.backends import PyTorchBackend
    torch.manual_seed(0)
    im = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    im[:, :48, 2] = 255  # a red left half (BGR)
    path = tmp_path / 'red.png'
    cv2.imwrite(str(path), im)
    rgb = cv2.imread(str(path))[..., ::-1]
    assert np.array_equal(as_bgr(rgb, 0)[0], im)
    assert np.array_equal(as_bgr(np.dstack((rgb, rgb[..., :1])), 0)[0], im)  # RGBA: alpha dropped
    assert np.array_equal(as_bgr(rgb[..., 0], 0)[0], np.dstack([rgb[..., 0]] * 3))  # gray: three equal channels
    model = InferenceModel(PyTorchBackend('tiny.pt', torch.device('cpu'), model=Model('v6/yolov5n.yaml', nc=3)),
                           imgsz=64, conf=0.0)
    by_path, by_array = model(path).xyxy[0], model(rgb).xyxy[0]
    assert len(by_path) > 0 and torch.equal(by_path, by_array)


@pytest.fixture
def weights_in_cwd(tmp_path, monkeypatch):
    """A working directory holding yolov5n.pt, where resolve_weights finds it (so nothing is downloaded)."""
    (tmp_path / 'yolov5n.pt').symlink_to(WEIGHTS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
@needs_weights
def test_hub_official_name_resolves_like_detect(weights_in_cwd, detect_bus):
    model = torch.hub.load(str(REPO), 'yolov5n', source='local', device='cpu')
    assert torch.allclose(model(str(BUS)).xyxy[0], detect_bus, atol=1e-4)


@pytest.mark.slow
@needs_weights
def test_settings_are_read_at_every_call(model, detect_bus):
    try:
        model.classes = [5]
        assert model(str(BUS)).xyxy[0][:, 5].tolist() == [5.0]
        model.classes, model.max_det = None, 2
        assert torch.allclose(model(str(BUS)).xyxy[0], detect_bus[:2], atol=1e-4)
        model.max_det, model.conf = 1000, 0.7
        assert (model(str(BUS)).xyxy[0][:, 4] > 0.7).all() and len(model(str(BUS)).xyxy[0]) == 3
        model.conf = 2.0
        with pytest.raises(ValueError, match='--conf-thres 2.0: must be between 0 and 1'):
            model(str(BUS))
    finally:
        model.conf, model.classes, model.max_det = 0.25, None, 1000


def synthetic_detections():
    ims = [np.full((100, 200, 3), 50, np.uint8), np.full((60, 60, 3), 200, np.uint8)]
    pred = [torch.tensor([[20.0, 10.0, 120.0, 90.0, 0.9, 1.0], [0.0, 0.0, 40.0, 20.0, 0.5, 0.0]]), torch.zeros(0, 6)]
    return Detections(ims, pred, ['a.jpg', 'image1.jpg'], ['cat', 'dog'], (1.0, 2.0, 3.0))


def test_detections_views_and_outputs(tmp_path, capsys):
    r = synthetic_detections()
    assert torch.allclose(r.xywh[0][0], torch.tensor([70.0, 50.0, 100.0, 80.0, 0.9, 1.0]))
    assert torch.allclose(r.xyxyn[0][0], torch.tensor([0.1, 0.1, 0.6, 0.9, 0.9, 1.0]))
    assert torch.allclose(r.xywhn[0][0], torch.tensor([0.35, 0.5, 0.5, 0.8, 0.9, 1.0]))
    assert all(v[1].shape == (0, 6) for v in (r.xyxy, r.xywh, r.xyxyn, r.xywhn))
    r.print()
    out = capsys.readouterr().out
    assert 'image 1/2 a.jpg: 100x200 1 cat, 1 dog' in out and 'image 2/2 image1.jpg: 60x60 (no detections)' in out
    assert 'Speed: 1.0ms pre-process, 2.0ms inference, 3.0ms NMS per image' in out
    rendered = r.render()
    assert not np.array_equal(rendered[0], r.ims[0]) and (r.ims[0] == 50).all()  # drawn on copies
    assert np.array_equal(rendered[1], r.ims[1])  # nothing to draw
    saved = r.save(save_dir=tmp_path / 'exp')
    assert saved == tmp_path / 'exp' and sorted(p.name for p in saved.iterdir()) == ['a.jpg', 'image1.jpg']
    assert r.save(save_dir=tmp_path / 'exp') == tmp_path / 'exp2'
    crops = r.crop(save_dir=tmp_path / 'c')
    assert [c['label'] for c in crops] == ['dog 0.90', 'cat 0.50'] and crops[0]['im'].shape[:2] == (91, 112)
    assert crops[0]['file'] == tmp_path / 'c' / 'crops' / 'dog' / 'a.jpg' and crops[0]['file'].is_file()
    assert r.crop(save=False)[1]['cls'] == 0 and not (tmp_path / 'runs').exists()


def test_pandas_views_and_missing_pandas(monkeypatch):
    pytest.importorskip('pandas', reason='pandas is optional (requirements-extra.txt)')
    r = synthetic_detections()
    df = r.pandas().xyxy[0]
    assert list(df.columns) == ['xmin', 'ymin', 'xmax', 'ymax', 'confidence', 'class', 'name']
    assert df['name'].tolist() == ['dog', 'cat'] and df['xmax'].tolist() == [120.0, 40.0]
    assert list(r.pandas().xywhn[0].columns)[:4] == ['xcenter', 'ycenter', 'width', 'height']
    assert len(r.pandas().xyxy[1]) == 0
    monkeypatch.setitem(sys.modules, 'pandas', None)  # what an absent package looks like to import
    with pytest.raises(ValueError, match=r'^Detections.pandas\(\) needs the pandas package, which is not installed '
                                         r'\(pip install pandas\)$'):
        r.pandas()


@pytest.mark.slow
@needs_weights
def test_bad_inputs_are_one_line(model, tmp_path):
    for bad, message in ((tmp_path / 'absent.jpg', 'absent.jpg: image not found'),
                         ('https://example.com/bus.jpg', 'images are not downloaded'),
                         (np.zeros((8, 8, 3), np.float32), 'numpy images must be uint8'),
                         (np.zeros((3, 8, 8, 2), np.uint8), 'expected an HxWx3'),
                         (torch.zeros(3, 64, 64), 'unsupported type Tensor'), ([], 'no images given')):
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            model(bad)
    with pytest.raises(FileNotFoundError, match='nope.pt: weights file not found'):
        load(tmp_path / 'nope.pt')


@pytest.mark.slow
@needs_weights
def test_official_entry_point_with_other_class_count(weights_in_cwd, capsys):
    model = official('yolov5n', classes=3, device='cpu')
    assert len(model.names) == 3 and 'Transferred' in capsys.readouterr().out
    assert model(np.zeros((64, 64, 3), np.uint8)).xyxy[0].shape[1] == 6
    assert len(official('yolov5n', pretrained=False, classes=2, device='cpu').names) == 2


@pytest.mark.slow
@needs_weights
def test_hubconf_works_from_another_folder_without_the_repo_on_the_path(tmp_path, detect_bus):
    (tmp_path / 'yolov5n.pt').symlink_to(WEIGHTS)
    code = ("import json, sys, torch; m = torch.hub.load(sys.argv[1], 'yolov5n', source='local', device='cpu'); "
            "print(json.dumps(m(sys.argv[2]).xyxy[0].tolist()))")
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    out = subprocess.run([sys.executable, '-c', code, str(REPO), str(BUS)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert torch.allclose(torch.tensor(json.loads(out.stdout.splitlines()[-1])), detect_bus, atol=1e-4)


@pytest.mark.slow
@needs_weights
def test_augment_finds_the_same_objects_in_the_original_frame(model):
    """Test-time augmentation (three views, one mirrored, mapped back): every object of the plain run is found
    again in the same place, of the same class (a box mapped back wrongly, e.g. unmirrored, would miss)."""
    from utils.boxes import box_iou
    plain, augmented = model(str(BUS)).xyxy[0], model(str(BUS), augment=True).xyxy[0]
    assert not torch.equal(plain, augmented)
    iou = box_iou(plain[:, :4], augmented[:, :4]) * (plain[:, None, 5] == augmented[None, :, 5])
    assert (iou.max(1).values > 0.8).all(), iou.max(1).values

"""The Python API: a model you call on images, as upstream YOLOv5's ``torch.hub`` models (hubconf.py uses this).

    from utils.deploy.api import load
    model = load('best.pt')                    # or best.torchscript, best.onnx, best_openvino_model/
    model.conf, model.classes = 0.4, [0]       # settable: conf, iou, classes, agnostic, max_det
    results = model(['bus.jpg', cv2.imread('zidane.jpg')[..., ::-1]])  # paths, numpy HWC RGB, PIL, or a list
    results = model('bus.jpg', augment=True)   # test-time augmentation (utils/deploy/tta.py)
    results.print(); results.xyxy[0]; results.save()

Each image is letterboxed, run and NMS-ed exactly as detect.py does (the same ``utils/predict.Predictor``), so
the boxes are detect.py's. Numpy images are RGB, as upstream YOLOv5's (``cv2.imread(f)[..., ::-1]``); the
arrays the results hold and draw on (``Detections.ims``, ``render()``, crops) are BGR, as OpenCV writes them.
"""
from pathlib import Path

import cv2
import numpy as np

from utils.deploy.backends import PyTorchBackend, load_backend
from utils.deploy.detections import Detections
from utils.deploy.predict import Predictor
from utils.runs import select_device
from utils.deploy.sources import read_image
from utils.errors import InputError


def _setting(name):
    """A settable attribute that lives on the predictor (read at every call)."""
    return property(lambda self: getattr(self.predictor, name), lambda self, v: setattr(self.predictor, name, v),
                    doc=f'NMS setting {name!r}, read at every call')


def as_bgr(im, i):
    """(HWC uint8 BGR array, file name) for a path, a numpy image (RGB, gray or RGBA, as upstream YOLOv5 takes
    them) or a PIL image."""
    if isinstance(im, (str, Path)):
        if str(im).lower().startswith(('http://', 'https://')):
            raise InputError(f'{im}: images are not downloaded; save the file and pass its path')
        if not Path(im).is_file():
            raise FileNotFoundError(f'{im}: image not found')
        return read_image(im), Path(im).name
    if isinstance(im, np.ndarray):
        return _rgb_array_to_bgr(im, f'image{i}'), f'image{i}.jpg'
    if type(im).__module__.startswith('PIL.'):
        from PIL import ImageOps  # pillow is a core dependency; imported only when a PIL image comes in
        rgb = np.asarray(ImageOps.exif_transpose(im).convert('RGB'))
        return np.ascontiguousarray(rgb[..., ::-1]), Path(getattr(im, 'filename', '') or f'image{i}.jpg').name
    raise InputError(f'image {i}: unsupported type {type(im).__name__} (give a path, a numpy HWC RGB array, a PIL '
                     f'image, or a list of them)')


def _rgb_array_to_bgr(im, what):
    """An RGB (or gray, or RGBA) uint8 array as the BGR image that detect.py reads from a file."""
    if im.dtype != np.uint8:
        raise InputError(f'{what}: numpy images must be uint8 (HWC, RGB: cv2.imread(f)[..., ::-1]), got {im.dtype}')
    if im.ndim == 2 or (im.ndim == 3 and im.shape[2] == 1):
        return cv2.cvtColor(im, cv2.COLOR_GRAY2BGR)
    if im.ndim == 3 and im.shape[2] in (3, 4):
        return np.ascontiguousarray(im[..., 2::-1])  # RGB(A) -> BGR, alpha dropped
    raise InputError(f'{what}: expected an HxWx3 (RGB), HxW or HxWx4 array, got shape {tuple(im.shape)}')


class InferenceModel:
    """What ``torch.hub.load`` returns (upstream's AutoShape): call it on images, get ``Detections``."""

    conf = _setting('conf')  # confidence threshold
    iou = _setting('iou')  # NMS IoU threshold
    classes = _setting('classes')  # keep only these class ids (None: all)
    agnostic = _setting('agnostic')  # class-agnostic NMS
    max_det = _setting('max_det')  # maximum detections per image

    def __init__(self, backend, imgsz=640, conf=0.25, iou=0.45, classes=None, agnostic=False, max_det=1000):
        self.backend = backend
        self.predictor = Predictor(backend, imgsz, conf, iou, classes, agnostic, max_det)

    @property
    def names(self):
        return self.backend.names

    @property
    def stride(self):
        return self.backend.stride

    @property
    def model(self):
        """The torch ``Model`` behind a .pt, else None."""
        return getattr(self.backend, 'model', None)

    def __repr__(self):
        return f'InferenceModel({self.backend!r})'

    def __call__(self, ims, size=None, augment=False):
        """Detect in one image or a list of them; ``size`` overrides the inference size for this call, ``augment``
        turns on test-time augmentation for it (``utils/deploy/tta.py``)."""
        items = list(ims) if isinstance(ims, (list, tuple)) else [ims]
        if not items:
            raise InputError('no images given')
        ims0, files = zip(*(as_bgr(im, i) for i, im in enumerate(items)))
        before = dict(self.predictor.clock.total)
        preds, shapes = [], []
        for im in ims0:
            det, shape, _ = self.predictor(im, size, augment)
            preds.append(det)
            shapes.append(shape)
        times = [(self.predictor.clock.total.get(k, 0) - before.get(k, 0)) / len(ims0)
                 for k in ('pre-process', 'inference', 'NMS')]
        return Detections(ims0, preds, files, self.names, times, shapes)


def load(path, device=None, imgsz=640, fp16=False, autoshape=True):
    """Any weights file (``load_backend``) as an ``InferenceModel``; ``autoshape=False`` gives the bare Backend.

    ``device``: None picks CUDA 0 when present, else the CPU; official names such as 'yolov5s.pt' are
    resolved as detect.py does (the working directory, else downloaded from the v7.0 release).
    """
    backend = load_backend(path, select_device('' if device is None else device), fp16)
    return InferenceModel(backend, imgsz) if autoshape else backend


def official(name, pretrained=True, channels=3, classes=80, device=None, autoshape=True):
    """Upstream's ``yolov5n`` ... ``yolov5x6`` entry points: ``name``.pt with ``pretrained``, else a fresh v6 model.

    With ``classes`` != 80 the pretrained weights are transferred (``transfer_weights``: class rows re-initialised).
    """
    if channels != 3:
        raise InputError(f'channels={channels}: only 3-channel (BGR/RGB) models are supported')
    if pretrained and classes == 80:
        return load(f'{name}.pt', device, autoshape=autoshape)
    from models.yolo import Model
    from utils.weights.checkpoint import read_weights
    from utils.weights.official import resolve_weights
    from utils.freeze.transfer import format_transfer_report, transfer_weights
    if pretrained:
        path = resolve_weights(f'{name}.pt')
        weights = read_weights(path)
        model = Model(weights['yaml'], nc=classes)
        print(format_transfer_report(transfer_weights(model, weights['state_dict'], source=path)))
    else:
        path, model = f'{name}.yaml', Model(f'v6/{name}.yaml', nc=classes)
    backend = PyTorchBackend(path, select_device('' if device is None else device), model=model)
    return InferenceModel(backend) if autoshape else backend

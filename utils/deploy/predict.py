"""One image in, its detections out: letterbox, run a ``Backend``, NMS, boxes back to the image's pixels.

detect.py and the Python API (``utils/deploy/api.py``) both use ``Predictor``, so they give the same boxes.

    predictor = Predictor(load_backend('best.onnx', device), imgsz=640, conf=0.25)
    det, input_hw, ms = predictor(cv2.imread('bus.jpg'))    # det: (n, 6) [x1, y1, x2, y2, conf, cls]

The thresholds (``conf``, ``iou``, ``classes``, ``agnostic``, ``max_det``) are plain attributes, read and
checked on every call, so they can be changed between calls.
"""
import time

import numpy as np
import torch

from utils.data.augment import letterbox
from utils.boxes import Placement, non_max_suppression, scale_boxes
from utils.data.sizes import check_imgsz
from utils.deploy.tta import with_tta
from utils.errors import InputError


def check_thresholds(conf_thres, iou_thres, max_det, classes, nc):
    """Reject out-of-range values with a one-line ValueError naming the flag."""
    for flag, value in (('--conf-thres', conf_thres), ('--iou-thres', iou_thres)):
        if not 0 <= value <= 1:
            raise InputError(f'{flag} {value}: must be between 0 and 1')
    if max_det < 1:
        raise InputError(f'--max-det {max_det}: must be at least 1')
    bad = [c for c in (classes or []) if not 0 <= int(c) < nc]
    if bad:
        raise InputError(f'--classes {" ".join(map(str, bad))}: the model has {nc} classes (ids 0-{nc - 1})')


def input_size(backend, imgsz):
    """(h, w) to letterbox to: the export's fixed size (with a note when ``imgsz`` asks another), else
    ``imgsz`` rounded up to the stride."""
    if backend.dynamic:
        return check_imgsz(imgsz, backend.stride)
    sizes = [imgsz] if isinstance(imgsz, int) else list(imgsz)
    if tuple(sizes * 2 if len(sizes) == 1 else sizes) != backend.imgsz:
        print(f'note: {backend.path.name} takes {backend.imgsz[0]}x{backend.imgsz[1]} images (fixed at export); '
              f'using that, not {imgsz}')
    return backend.imgsz


def preprocess(im0, imgsz, stride, device):
    """Original BGR image -> ((1, 3, h, w) float input in [0, 1], its Placement): letterbox to fit ``imgsz``,
    padded only to the next stride multiple (a fixed-size export places it on its canvas itself), BGR->RGB, CHW."""
    im, gain, pad = letterbox(im0, imgsz, stride=stride, auto=True)
    im = np.ascontiguousarray(im[..., ::-1].transpose(2, 0, 1))
    return torch.from_numpy(im).to(device).float().div_(255).unsqueeze(0), Placement(im0.shape[:2], gain, pad)


def describe(det, names):
    """'4 persons, 1 bus' (classes in id order), or '(no detections)'."""
    if not len(det):
        return '(no detections)'
    classes, counts = np.unique(det[:, 5].numpy().astype(int), return_counts=True)
    return ', '.join(f"{n} {names[c]}{'s' * int(n > 1)}" for c, n in zip(classes, counts))


class Stopwatch:
    """Accumulates milliseconds per stage; synchronises CUDA so GPU work is counted where it happens."""

    def __init__(self, device):
        self.cuda = device.type == 'cuda'
        self.total = {}

    def __call__(self, stage, fn, *args):
        if self.cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn(*args)
        if self.cuda:
            torch.cuda.synchronize()
        ms = (time.perf_counter() - t) * 1e3
        self.total[stage] = self.total.get(stage, 0.0) + ms
        return out, ms


class Predictor:
    """A loaded ``Backend`` plus NMS settings: BGR image in, (n, 6) detections in that image's pixels out."""

    def __init__(self, backend, imgsz=640, conf=0.25, iou=0.45, classes=None, agnostic=False, max_det=1000):
        self.backend, self.names = backend, backend.names
        self.conf, self.iou, self.classes, self.agnostic, self.max_det = conf, iou, classes, agnostic, max_det
        self.check()
        self.imgsz = input_size(backend, imgsz)
        self.clock = Stopwatch(backend.device)
        self.augmented = None  # the backend with test-time augmentation, made at the first call that asks
        backend.warmup(self.imgsz)  # start-up costs are not timed

    def check(self):
        check_thresholds(self.conf, self.iou, self.max_det, self.classes, len(self.names))

    def nms(self, pred):
        return non_max_suppression(pred, self.conf, self.iou, classes=self.classes, agnostic=self.agnostic,
                                   max_det=self.max_det)[0]

    def model(self, augment=False):
        """The backend, or with ``augment`` the backend with test-time augmentation (utils/deploy/tta.py)."""
        if augment and self.augmented is None:
            self.augmented = with_tta(self.backend)
        return self.augmented if augment else self.backend

    def __call__(self, im0, imgsz=None, augment=False):
        """Returns (det as a CPU float tensor in ``im0`` pixels, network input shape (h, w), inference ms).

        ``imgsz`` overrides the size given at construction for this call (ignored by fixed-size exports);
        ``augment`` runs this call with test-time augmentation.
        """
        self.check()
        size = self.imgsz if imgsz is None or not self.backend.dynamic else check_imgsz(imgsz, self.backend.stride)
        (x, placement), _ = self.clock('pre-process', preprocess, im0, size, self.backend.stride,
                                       self.backend.device)
        pred, ms = self.clock('inference', self.model(augment), x)
        det, _ = self.clock('NMS', self.nms, pred)
        det = det.float().cpu()
        det[:, :4] = scale_boxes(det[:, :4], placement)
        return det, tuple(x.shape[2:]), ms

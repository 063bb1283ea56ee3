"""Box formats, IoU, NMS and mapping boxes back through a letterbox.

Formats: ``xyxy`` = corners (x1, y1, x2, y2); ``xywh`` = centre and size. Functions accept torch tensors or
numpy arrays of shape (..., 4) and return the same type.
"""
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from utils.errors import InputError


def _clone(x):
    return x.clone() if isinstance(x, torch.Tensor) else np.copy(x)


def xywh2xyxy(x):
    y = _clone(x)
    y[..., 0] = x[..., 0] - x[..., 2] / 2
    y[..., 1] = x[..., 1] - x[..., 3] / 2
    y[..., 2] = x[..., 0] + x[..., 2] / 2
    y[..., 3] = x[..., 1] + x[..., 3] / 2
    return y


def xyxy2xywh(x):
    y = _clone(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def xywhn2xyxy(x, w=640, h=640, padw=0, padh=0):
    """Normalised xywh -> pixel xyxy in an image of size (w, h), shifted by a padding offset."""
    y = _clone(x)
    y[..., 0] = w * (x[..., 0] - x[..., 2] / 2) + padw
    y[..., 1] = h * (x[..., 1] - x[..., 3] / 2) + padh
    y[..., 2] = w * (x[..., 0] + x[..., 2] / 2) + padw
    y[..., 3] = h * (x[..., 1] + x[..., 3] / 2) + padh
    return y


def xyxy2xywhn(x, w=640, h=640, clip=False):
    """Pixel xyxy -> normalised xywh for an image of size (w, h), optionally clipping to the image first."""
    if clip:
        x = clip_boxes(_clone(x), (h, w))
    y = xyxy2xywh(x)
    y[..., [0, 2]] /= w
    y[..., [1, 3]] /= h
    return y


def yolo_label_lines(det, shape, save_conf=False):
    """YOLO label lines 'cls cx cy w h [conf]', normalised to an image of ``shape`` (h, w), for (n, 6) detections
    [x1, y1, x2, y2, conf, cls] in its pixels (what detect.py and val.py write with --save-txt)."""
    xywhn = xyxy2xywhn(det[:, :4], w=shape[1], h=shape[0])
    lines = []
    for (cx, cy, w, h), conf, cls in zip(xywhn.tolist(), det[:, 4].tolist(), det[:, 5].tolist()):
        values = (int(cls), cx, cy, w, h, conf) if save_conf else (int(cls), cx, cy, w, h)
        lines.append(' '.join(f'{v:g}' for v in values))
    return lines


def clip_boxes(boxes, shape):
    """Clip xyxy boxes in place to an image of shape (h, w)."""
    h, w = shape[:2]
    if isinstance(boxes, torch.Tensor):
        boxes[..., 0].clamp_(0, w)
        boxes[..., 1].clamp_(0, h)
        boxes[..., 2].clamp_(0, w)
        boxes[..., 3].clamp_(0, h)
    else:
        boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, w)
        boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, h)
    return boxes


@dataclass(frozen=True)
class Placement:
    """Where an original image sits in a letterboxed network input: (x, y) -> (x * gx + left, y * gy + top).

    ``orig_hw`` (h, w) of the original; ``gain_xy`` (gx, gy) input pixels per original pixel (a single number
    means the same gain on both axes); ``pad_xy`` (left, top) pixels of padding as actually applied.
    A dataset's per-image ``ImageMeta`` carries the same three fields, so either can be passed to
    :func:`scale_boxes`.
    """
    orig_hw: tuple
    gain_xy: tuple
    pad_xy: tuple

    def __post_init__(self):
        object.__setattr__(self, 'orig_hw', pair(self.orig_hw, 'orig_hw'))
        object.__setattr__(self, 'gain_xy', pair(self.gain_xy, 'gain_xy'))
        object.__setattr__(self, 'pad_xy', pair(self.pad_xy, 'pad_xy'))


def pair(value, what='value'):
    """(a, b) as two Python numbers from a number (used twice), a 2-sequence or a 2-element array."""
    values = np.asarray(value, dtype=np.float64).reshape(-1).tolist()
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise InputError(f'{what} {value!r}: expected one number or a pair')
    return tuple(values)


def scale_boxes(boxes, placement):
    """Map xyxy boxes in place from letterboxed-input pixels back to the original image, clipped to it.

    ``placement``: a :class:`Placement` or anything with ``orig_hw``, ``gain_xy`` and ``pad_xy`` (e.g. the
    ``ImageMeta`` a dataset returns with each image); see :class:`Placement` for the conventions.
    """
    gain_x, gain_y = pair(placement.gain_xy, 'gain_xy')
    pad_x, pad_y = pair(placement.pad_xy, 'pad_xy')
    boxes[..., [0, 2]] -= pad_x
    boxes[..., [1, 3]] -= pad_y
    boxes[..., [0, 2]] /= gain_x
    boxes[..., [1, 3]] /= gain_y
    return clip_boxes(boxes, pair(placement.orig_hw, 'orig_hw'))


def box_area(boxes):
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(box1, box2, eps=1e-7):
    """Pairwise IoU of xyxy boxes: (N, 4) x (M, 4) -> (N, M). Torch tensors."""
    lt = torch.max(box1[:, None, :2], box2[None, :, :2])
    rb = torch.min(box1[:, None, 2:], box2[None, :, 2:])
    inter = (rb - lt).clamp(0).prod(2)
    return inter / (box_area(box1)[:, None] + box_area(box2)[None, :] - inter + eps)


def non_max_suppression(prediction, conf_thres=0.25, iou_thres=0.45, classes=None, agnostic=False,
                        multi_label=False, max_det=300, max_nms=30000, time_limit=None):
    """YOLOv5 NMS on decoded outputs (B, N, 5+nc) with xywh boxes.

    Confidence is objectness x class score. ``multi_label`` keeps every class above ``conf_thres`` for a box
    (used by val); otherwise only the best class. Returns per image a (n, 6) tensor
    [x1, y1, x2, y2, conf, cls], at most ``max_det`` rows, sorted by confidence.
    """
    if isinstance(prediction, (list, tuple)):  # eval-mode model output (decoded, raw maps)
        prediction = prediction[0]
    if not 0 <= conf_thres <= 1 or not 0 <= iou_thres <= 1:
        raise InputError(f'conf_thres {conf_thres} and iou_thres {iou_thres} must be in [0, 1]')
    nc = prediction.shape[2] - 5
    multi_label &= nc > 1
    output = [torch.zeros((0, 6), device=prediction.device)] * prediction.shape[0]
    t_end = time.time() + time_limit if time_limit else None
    for xi, x in enumerate(prediction):
        x = x[x[:, 4] > conf_thres]  # objectness pre-filter
        if not x.shape[0]:
            continue
        scores = x[:, 5:] * x[:, 4:5]  # conf = obj_conf * cls_conf
        box = xywh2xyxy(x[:, :4])
        if multi_label:
            i, j = (scores > conf_thres).nonzero(as_tuple=False).T
            x = torch.cat((box[i], scores[i, j, None], j[:, None].float()), 1)
        else:
            conf, j = scores.max(1, keepdim=True)
            x = torch.cat((box, conf, j.float()), 1)[conf.view(-1) > conf_thres]
        if classes is not None:
            x = x[(x[:, 5:6] == torch.tensor(classes, device=x.device)).any(1)]
        if not x.shape[0]:
            continue
        x = x[x[:, 4].argsort(descending=True)[:max_nms]]
        groups = torch.zeros_like(x[:, 5]) if agnostic else x[:, 5]
        keep = class_aware_nms(x[:, :4], x[:, 4], groups.long(), iou_thres)[:max_det]
        output[xi] = x[keep]
        if t_end and time.time() > t_end:
            break  # time limit exceeded: return what is done
    return output


def nms_kernel():
    """torchvision's compiled NMS (``torch.ops.torchvision.nms``), loaded from its extension library alone.

    ``import torchvision`` costs seconds (its models import ``torch._dynamo``); val.py, detect.py and train.py
    only need this one kernel. Where the library cannot be found this way, the package is imported after all.
    """
    if not hasattr(torch.ops.torchvision, 'nms'):
        spec = importlib.util.find_spec('torchvision')
        folder = Path(spec.origin).parent if spec and spec.origin else None
        libs = [f for f in sorted(folder.glob('_C*')) if f.suffix in ('.so', '.pyd', '.dylib')] if folder else []
        for lib in libs:
            try:
                torch.ops.load_library(str(lib))
            except OSError:
                continue
            if hasattr(torch.ops.torchvision, 'nms'):
                break
        if not hasattr(torch.ops.torchvision, 'nms'):
            import torchvision  # noqa: F401  (registers the kernel)
    return torch.ops.torchvision.nms


SMALL_NMS = 4000  # box coordinates (numel) up to which classes are separated by offsets rather than looped


def class_aware_nms(boxes, scores, classes, iou_thres):
    """NMS within each class; indices kept, by decreasing score (as ``torchvision.ops.batched_nms`` on CPU).

    Few boxes: one NMS on boxes shifted apart per class (each class gets its own coordinate range). Many: one NMS
    per class, so large offsets never cost the coordinates precision.
    """
    nms = nms_kernel()
    if not boxes.numel():
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    if boxes.numel() <= SMALL_NMS or boxes.device.type != 'cpu':
        shift = classes.to(boxes) * (boxes.max() + 1)
        return nms(boxes + shift[:, None], scores, iou_thres)
    kept = torch.zeros_like(classes, dtype=torch.bool)
    for c in torch.unique(classes):
        members = torch.where(classes == c)[0]
        kept[members[nms(boxes[members], scores[members], iou_thres)]] = True
    keep = torch.where(kept)[0]
    return keep[scores[keep].sort(descending=True)[1]]

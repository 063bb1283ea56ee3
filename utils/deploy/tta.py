"""Test-time augmentation (TTA): a model run on three views of each batch, the views' boxes joined before NMS.

    model = with_tta(load_backend('best.pt', device))   # any Backend, or an Ensemble (each member augmented)
    pred = model(x)        # (b, n, 5 + nc) as the backend's, in x's pixels, for one NMS to choose among

The views are upstream YOLOv5's: the input as is, shrunk to 0.83 and mirrored left-right, and shrunk to 0.67.
A shrunk view is padded (right and bottom, letterbox grey) to a stride multiple; its boxes are scaled back by
the view's real size ratio and a mirrored view's x centres reflected, so every box is in the input's pixels.
Each view's predictions come level by level (stride 8 first); the coarsest level of the full-size view (the
largest objects, which the smaller views see better) and the finest level of the smallest view (the smallest
objects, which it sees worst) are left out, as upstream does.
"""
import math

import torch
import torch.nn.functional as F

VIEWS = ((1.0, False), (0.83, True), (0.67, False))  # (scale, left-right flip)
PAD_VALUE = 114 / 255  # the letterbox grey


def scale_view(x, ratio, stride):
    """``x`` resized by ``ratio`` (bilinear) and padded right/bottom to a ``stride`` multiple.
    Returns (view, (sy, sx)): the real size ratios, which differ from ``ratio`` by the rounding to whole pixels."""
    if ratio == 1:
        return x, (1.0, 1.0)
    h, w = x.shape[2:]
    nh, nw = max(int(h * ratio), 1), max(int(w * ratio), 1)
    view = F.interpolate(x, size=(nh, nw), mode='bilinear', align_corners=False)
    view = F.pad(view, (0, -nw % stride, 0, -nh % stride), value=PAD_VALUE)
    return view, (nh / h, nw / w)


def to_input_frame(pred, scale, flip_width=None):
    """(b, n, 5 + nc) predictions [cx, cy, w, h, ...] on a view -> the input's pixels: divided by the view's
    (sy, sx) and, for a mirrored view, x centres reflected in an input ``flip_width`` pixels wide."""
    sy, sx = scale
    cx, cy, w, h = pred[..., 0:1] / sx, pred[..., 1:2] / sy, pred[..., 2:3] / sx, pred[..., 3:4] / sy
    if flip_width is not None:
        cx = flip_width - cx
    return torch.cat((cx, cy, w, h, pred[..., 4:]), -1)


def level_strides(backend):
    """The detection levels' strides: a PyTorch model's own, else 8, 16, ... up to the backend's stride."""
    model = getattr(backend, 'model', None)
    if model is not None and hasattr(model, 'stride'):
        return [int(s) for s in model.stride]
    return [8 * 2 ** i for i in range(int(math.log2(backend.stride // 8)) + 1)]


def level_sizes(n, hw, strides):
    """How many of ``n`` predictions each level gives for an input of ``hw`` (h, w): anchors x grid cells."""
    cells = [math.ceil(hw[0] / s) * math.ceil(hw[1] / s) for s in strides]
    anchors, rest = divmod(n, sum(cells))
    if rest or not anchors:
        raise RuntimeError(f'{n} predictions do not split into levels of strides {strides} at {hw[0]}x{hw[1]}')
    return [anchors * c for c in cells]


class TestTimeAugment:
    """A ``Backend`` run on the ``VIEWS`` of each batch; other attributes (names, stride, ...) are the backend's."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, backend):
        self.backend = backend
        self.strides = level_strides(backend)

    def __getattr__(self, name):  # names, stride, imgsz, dynamic, path, device, fp16, nc, warmup
        if name == 'backend':  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.backend, name)

    def __repr__(self):
        return f'{self.backend!r} with test-time augmentation'

    def __call__(self, x):
        """(b, 3, h, w) in [0, 1] -> (b, n, 5 + nc): the views' predictions in ``x``'s pixels, joined."""
        outs = []
        for i, (ratio, flip) in enumerate(VIEWS):
            view, scale = scale_view(x.flip(3) if flip else x, ratio, self.backend.stride)
            pred = self.backend(view)
            sizes = level_sizes(pred.shape[1], self.backend.imgsz or view.shape[2:], self.strides)
            if i == 0:
                pred = pred[:, :-sizes[-1]]  # the full-size view without its coarsest level
            elif i == len(VIEWS) - 1:
                pred = pred[:, sizes[0]:]  # the smallest view without its finest level
            outs.append(to_input_frame(pred, scale, x.shape[3] if flip else None))
        return torch.cat(outs, 1)


def with_tta(backend):
    """``backend`` with test-time augmentation; an ensemble's members are augmented one by one (each member's
    levels are trimmed on its own output)."""
    if hasattr(backend, 'members'):  # an Ensemble (utils/deploy/ensemble.py, which imports this module)
        return type(backend)([with_tta(b) for b in backend.members])
    return backend if isinstance(backend, TestTimeAugment) else TestTimeAugment(backend)

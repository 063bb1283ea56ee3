"""Image + box transforms: pure functions of arrays (and an explicit RNG where random)."""
import cv2
import numpy as np


def letterbox(im, new_shape=640, color=(114, 114, 114), auto=True, scale_fill=False, scaleup=True, stride=32):
    """Resize keeping aspect ratio and pad to ``new_shape`` (or, with ``auto``, to the smallest stride multiple).

    Returns (image, (ratio_w, ratio_h), (pad_w, pad_h)) where pads are per side (may be fractional).
    ``scale_fill`` stretches to ``new_shape`` without padding; ``scaleup=False`` only ever shrinks.
    """
    shape = im.shape[:2]  # current (h, w)
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    if not scaleup:
        r = min(r, 1.0)
    ratio = r, r
    new_unpad = int(round(shape[1] * r)), int(round(shape[0] * r))  # (w, h)
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    if auto:  # minimum rectangle
        dw, dh = np.mod(dw, stride), np.mod(dh, stride)
    elif scale_fill:  # stretch
        dw, dh = 0.0, 0.0
        new_unpad = (new_shape[1], new_shape[0])
        ratio = new_shape[1] / shape[1], new_shape[0] / shape[0]
    dw, dh = dw / 2, dh / 2
    if shape[::-1] != new_unpad:
        im = cv2.resize(im, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    im = cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return im, ratio, (dw, dh)

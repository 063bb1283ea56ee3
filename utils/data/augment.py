"""Image + box transforms: pure functions of arrays (and an explicit RNG where random)."""
import cv2
import numpy as np


def letterbox(im, new_shape=640, color=(114, 114, 114), auto=True, scale_fill=False, scaleup=True, stride=32):
    """Resize keeping aspect ratio and pad to ``new_shape`` (or, with ``auto``, to the smallest stride multiple).

    Returns (image, (gain_x, gain_y), (pad_left, pad_top)) exactly as applied: a point (x, y) of ``im`` lands at
    (x * gain_x + pad_left, y * gain_y + pad_top). Pads are whole pixels (an odd total puts the extra pixel on
    the right/bottom); gains are the resized size over the original size along each axis.
    ``scale_fill`` stretches to ``new_shape`` without padding; ``scaleup=False`` only ever shrinks.
    """
    shape = im.shape[:2]  # current (h, w)
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    if not scaleup:
        r = min(r, 1.0)
    new_unpad = int(round(shape[1] * r)), int(round(shape[0] * r))  # (w, h)
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    if auto:  # minimum rectangle
        dw, dh = np.mod(dw, stride), np.mod(dh, stride)
    elif scale_fill:  # stretch
        dw, dh = 0, 0
        new_unpad = (new_shape[1], new_shape[0])
    if shape[::-1] != new_unpad:
        im = cv2.resize(im, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, left = int(dh) // 2, int(dw) // 2
    im = cv2.copyMakeBorder(im, top, int(dh) - top, left, int(dw) - left, cv2.BORDER_CONSTANT, value=color)
    return im, (new_unpad[0] / shape[1], new_unpad[1] / shape[0]), (left, top)


# ---------------------------------------------------------------- geometry: perspective, mosaic, flips, mixup
def perspective_matrix(rng, size, border=(0, 0), degrees=0.0, translate=0.1, scale=0.5, shear=0.0,
                       perspective=0.0):
    """Draw one random 3x3 warp for an image of ``size`` (h, w) whose output is that size plus 2x ``border``.

    Returns (M, s): the matrix and its isotropic scale ``s`` (used to judge how much of a box survived).
    """
    h, w = size[0] + border[0] * 2, size[1] + border[1] * 2  # output size
    centre = np.eye(3)
    centre[0, 2], centre[1, 2] = -size[1] / 2, -size[0] / 2  # move image centre to the origin
    persp = np.eye(3)
    persp[2, 0], persp[2, 1] = rng.uniform(-perspective, perspective, 2)
    rot = np.eye(3)
    s = rng.uniform(1 - scale, 1 + scale)
    rot[:2] = cv2.getRotationMatrix2D(angle=rng.uniform(-degrees, degrees), center=(0, 0), scale=s)
    shr = np.eye(3)
    shr[0, 1], shr[1, 0] = np.tan(np.radians(rng.uniform(-shear, shear, 2)))
    trans = np.eye(3)
    trans[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * w
    trans[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * h
    return trans @ shr @ rot @ persp @ centre, s  # applied right to left


def warp_image_and_boxes(im, labels, M, s, out_size, fill=114, area_thr=0.1):
    """Warp ``im`` by ``M`` to ``out_size`` (h, w) and move labels (n, 5) [cls, x1, y1, x2, y2] pixels with it.

    Each box's four corners are transformed, re-boxed, clipped to the image and kept only when it is still a
    plausible box (see :func:`box_candidates`).
    """
    h, w = out_size
    if not np.allclose(M, np.eye(3)) or im.shape[:2] != (h, w):
        if M[2, 0] or M[2, 1]:
            im = cv2.warpPerspective(im, M, dsize=(w, h), borderValue=(fill,) * 3)
        else:
            im = cv2.warpAffine(im, M[:2], dsize=(w, h), borderValue=(fill,) * 3)
    n = len(labels)
    if not n:
        return im, labels
    corners = np.ones((n * 4, 3))
    corners[:, :2] = labels[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(n * 4, 2)  # x1y1, x2y2, x1y2, x2y1
    corners = corners @ M.T
    corners = corners[:, :2] / corners[:, 2:3] if (M[2, 0] or M[2, 1]) else corners[:, :2]
    xs, ys = corners[:, 0].reshape(n, 4), corners[:, 1].reshape(n, 4)
    new = np.stack((xs.min(1), ys.min(1), xs.max(1), ys.max(1)), 1)
    new[:, [0, 2]] = new[:, [0, 2]].clip(0, w)
    new[:, [1, 3]] = new[:, [1, 3]].clip(0, h)
    keep = box_candidates(labels[:, 1:5].T * s, new.T, area_thr=area_thr)
    out = labels[keep].copy()
    out[:, 1:5] = new[keep]
    return im, out


def random_perspective(im, labels, rng, degrees=0.0, translate=0.1, scale=0.5, shear=0.0, perspective=0.0,
                       border=(0, 0), fill=114):
    """Random affine/perspective warp of ``im`` with labels (n, 5) [cls, x1, y1, x2, y2] in pixels.

    A negative ``border`` crops (mosaic: a 2s canvas back to s); the output is ``im`` size + 2 * border.
    """
    M, s = perspective_matrix(rng, im.shape[:2], border, degrees, translate, scale, shear, perspective)
    out_size = im.shape[0] + border[0] * 2, im.shape[1] + border[1] * 2
    return warp_image_and_boxes(im, labels, M, s, out_size, fill)


def box_candidates(box1, box2, wh_thr=2, ar_thr=100, area_thr=0.1, eps=1e-16):
    """Which boxes survived a warp: box1 (4, n) before (scaled), box2 (4, n) after, both x1y1x2y2 pixels.

    Kept when wider and taller than ``wh_thr`` px, aspect ratio below ``ar_thr`` and area above ``area_thr``
    of the original.
    """
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1]
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def mosaic4(images, labels, size, rng, fill=114):
    """Tile four images around a random centre on a (2*size, 2*size) canvas.

    ``images``: four HxWx3 arrays (already resized so the long side is ``size``); ``labels``: four (n, 5)
    arrays [cls, x1, y1, x2, y2] in each image's pixels. Returns (canvas, labels in canvas pixels, clipped).
    Each image meets the centre with its inner corner, so it is cut only at the canvas border.
    """
    s = size
    xc, yc = (int(rng.uniform(s * 0.5, s * 1.5)) for _ in range(2))
    canvas = np.full((s * 2, s * 2, images[0].shape[2]), fill, dtype=np.uint8)
    out = []
    for i, (im, lb) in enumerate(zip(images, labels)):
        h, w = im.shape[:2]
        x1, y1 = (xc - w if i in (0, 2) else xc), (yc - h if i in (0, 1) else yc)  # canvas corner of image
        cx1, cy1 = max(x1, 0), max(y1, 0)
        cx2, cy2 = min(x1 + w, 2 * s), min(y1 + h, 2 * s)
        canvas[cy1:cy2, cx1:cx2] = im[cy1 - y1:cy2 - y1, cx1 - x1:cx2 - x1]
        moved = lb.astype(np.float64).copy()
        moved[:, [1, 3]] += x1
        moved[:, [2, 4]] += y1
        out.append(moved)
    out = np.concatenate(out, 0) if out else np.zeros((0, 5))
    out[:, 1:] = out[:, 1:].clip(0, 2 * s)
    return canvas, out


def flip_lr(im, labels):
    """Mirror left-right; labels (n, 5) [cls, cx, cy, w, h] normalised."""
    labels = labels.copy()
    labels[:, 1] = 1 - labels[:, 1]
    return np.ascontiguousarray(np.fliplr(im)), labels


def flip_ud(im, labels):
    """Mirror up-down; labels (n, 5) [cls, cx, cy, w, h] normalised."""
    labels = labels.copy()
    labels[:, 2] = 1 - labels[:, 2]
    return np.ascontiguousarray(np.flipud(im)), labels


def mixup(im, labels, im2, labels2, rng):
    """Blend two same-size images with a Beta(32, 32) ratio and keep both label sets (MixUp)."""
    r = rng.beta(32.0, 32.0)
    blended = (im.astype(np.float32) * r + im2.astype(np.float32) * (1 - r)).astype(np.uint8)
    return blended, np.concatenate((labels, labels2), 0)


# ---------------------------------------------------------------- colour
def augment_hsv(im, rng, hgain=0.5, sgain=0.5, vgain=0.5):
    """Random hue/saturation/value gains on a BGR uint8 image, in place (lookup tables, so fast)."""
    if not (hgain or sgain or vgain):
        return im
    gains = rng.uniform(-1, 1, 3) * (hgain, sgain, vgain) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(im, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float32)
    lut_h = ((x * gains[0]) % 180).astype(np.uint8)
    lut_s = np.clip(x * gains[1], 0, 255).astype(np.uint8)
    lut_v = np.clip(x * gains[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_h), cv2.LUT(sat, lut_s), cv2.LUT(val, lut_v)))
    cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR, dst=im)
    return im


class Albumentations:
    """YOLOv5's albumentations pipeline: pixel-level blur/gray/CLAHE/brightness/gamma/JPEG at low probability.

    Bbox-aware (YOLO format), so adding a geometric transform later keeps labels right. Call with a BGR image
    and labels (n, 5) [cls, cx, cy, w, h] normalised; returns both. ``seed`` makes it reproducible.
    """

    def __init__(self, p=0.01, seed=None):
        import os
        import warnings

        os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')  # its import asks the internet for a newer release
        import albumentations as A  # heavy import, only when augmenting
        with warnings.catch_warnings():  # all transforms are pixel-level, so A warns the bbox processor is idle
            warnings.simplefilter('ignore', UserWarning)
            self.transform = A.Compose([
                A.Blur(p=p),
                A.MedianBlur(p=p),
                A.ToGray(p=p),
                A.CLAHE(p=p),
                A.RandomBrightnessContrast(p=p),
                A.RandomGamma(p=p),
                A.ImageCompression(quality_range=(75, 100), p=p),
            ], bbox_params=A.BboxParams(format='yolo', label_fields=['class_labels'], clip=True), seed=seed)

    def set_seed(self, seed):
        self.transform.set_random_seed(seed)

    def __call__(self, im, labels):
        if not len(labels):
            return self.transform(image=im, bboxes=np.zeros((0, 4)), class_labels=[])['image'], labels
        out = self.transform(image=im, bboxes=labels[:, 1:5], class_labels=labels[:, 0])
        boxes = np.asarray(out['bboxes'], dtype=np.float32).reshape(-1, 4)
        cls = np.asarray(out['class_labels'], dtype=np.float32).reshape(-1, 1)
        return out['image'], np.concatenate((cls, boxes), 1)

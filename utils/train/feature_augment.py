"""Augmentation of cached feature maps (``--cache features``, utils/train/feature_cache.py): the mosaic of four
half-size views (hyp ``feature_mosaic``), the flip (``feature_fliplr``) and the shift by whole cells of the coarsest
level (``feature_shift``), each applied to every kept map and to the labels alike.

    maps = mosaic_maps(array, quads)                 # (B, C, 2h, 2w) from rows quads (B, 4) of one cached level
    labels = mosaic_labels(cache_labels, quads[b])   # the labels of sample b, each quadrant's boxes halved and moved
    augment_one(outputs, labels, b, rng, 0.5, 0.1, cache, imgsz)   # flip and/or shift sample b in place
"""
import numpy as np
import torch


def mosaic_maps(array, quads):
    """(B, C, 2h, 2w) tensor of cached (C, h, w) maps, ``quads`` (B, 4) rows placed top-left, top-right,
    bottom-left, bottom-right."""
    b, (c, h, w) = len(quads), array.shape[1:]
    q = torch.from_numpy(np.ascontiguousarray(array[quads.reshape(-1)])).view(b, 2, 2, c, h, w)
    return q.permute(0, 3, 1, 4, 2, 5).reshape(b, c, 2 * h, 2 * w)


def mosaic_labels(labels, quad):
    """Labels (n, 5) [cls, cx, cy, w, h] of the mosaic of rows ``quad``: each quadrant's boxes halved and moved."""
    out = []
    for k, row in enumerate(quad):
        lb = labels[row].copy()
        lb[:, 1] = (lb[:, 1] + k % 2) / 2
        lb[:, 2] = (lb[:, 2] + k // 2) / 2
        lb[:, 3:5] /= 2
        out.append(lb)
    return np.concatenate(out).astype(np.float32)


def augment_one(outputs, labels, b, rng, flip_p, shift, cache, imgsz):
    """Flip and/or shift image ``b`` of a batch in place: every kept map and its labels."""
    if flip_p and rng.random() < flip_p:
        for o in outputs:
            o[b] = o[b].flip(-1)
        labels[b][:, 1] = 1 - labels[b][:, 1]
    if shift:
        coarse = max(cache.strides)
        most = int(shift * imgsz // coarse)
        dx, dy = (int(v) for v in rng.integers(-most, most + 1, 2)) if most else (0, 0)
        if dx or dy:
            for o, s, f in zip(outputs, cache.strides, cache.fill):
                o[b] = shift_map(o[b], dx * coarse // s, dy * coarse // s, torch.from_numpy(f))
            labels[b] = shift_labels(labels[b], dx * coarse / imgsz, dy * coarse / imgsz)


def shift_map(m, dx, dy, fill):
    """(C, H, W) ``m`` moved by (dx, dy) cells; the uncovered cells take ``fill`` (C,)."""
    out = fill.to(m.dtype).view(-1, 1, 1).expand_as(m).clone()
    h, w = m.shape[1:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[:, yd, xd] = m[:, ys, xs]
    return out


def shift_labels(lb, dx, dy, min_visible=0.25):
    """Labels (n, 5) [cls, cx, cy, w, h] moved by (dx, dy) of the image, clipped to it; boxes with less than
    ``min_visible`` of their area left inside are dropped."""
    x1, x2 = lb[:, 1] - lb[:, 3] / 2 + dx, lb[:, 1] + lb[:, 3] / 2 + dx
    y1, y2 = lb[:, 2] - lb[:, 4] / 2 + dy, lb[:, 2] + lb[:, 4] / 2 + dy
    cx1, cx2, cy1, cy2 = (np.clip(v, 0, 1) for v in (x1, x2, y1, y2))
    area = (x2 - x1) * (y2 - y1)
    keep = (cx2 - cx1) * (cy2 - cy1) >= min_visible * np.maximum(area, 1e-12)
    out = np.stack((lb[:, 0], (cx1 + cx2) / 2, (cy1 + cy2) / 2, cx2 - cx1, cy2 - cy1), 1)[keep]
    return out.astype(np.float32)

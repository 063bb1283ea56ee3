"""Augmentation of cached feature maps (``--cache features``, utils/train/feature_cache.py): the mosaic of four
half-size views (hyp ``feature_mosaic``), the crop to a window of whole cells of the coarsest level
(``feature_crop``), the flip (``feature_fliplr``) and the shift by whole coarse cells (``feature_shift``), each
applied to every kept map and to the labels alike.

    maps = mosaic_maps(array, quads)                 # (B, C, 2h, 2w) from rows quads (B, 4) of one cached level
    labels = mosaic_labels(cache_labels, quads[b])   # the labels of sample b, each quadrant's boxes halved and moved
    outputs, labels = crop_batch(outputs, labels, rng, 16, strides)   # every sample cut to 16 x 16 coarse cells
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
    return window_labels(lb, -dx, -dy, 1.0, 1.0, min_visible)


def window_labels(lb, x0, y0, w, h, min_visible):
    """Labels (n, 5) [cls, cx, cy, w, h] of the window at (x0, y0) of size (w, h) (fractions of the image), in
    fractions of the window: boxes clipped to it, those with less than ``min_visible`` of their area inside dropped."""
    x1, x2 = (lb[:, 1] - lb[:, 3] / 2 - x0) / w, (lb[:, 1] + lb[:, 3] / 2 - x0) / w
    y1, y2 = (lb[:, 2] - lb[:, 4] / 2 - y0) / h, (lb[:, 2] + lb[:, 4] / 2 - y0) / h
    cx1, cx2, cy1, cy2 = (np.clip(v, 0, 1) for v in (x1, x2, y1, y2))
    area = (x2 - x1) * (y2 - y1)
    keep = (cx2 - cx1) * (cy2 - cy1) >= min_visible * np.maximum(area, 1e-12)
    out = np.stack((lb[:, 0], (cx1 + cx2) / 2, (cy1 + cy2) / 2, cx2 - cx1, cy2 - cy1), 1)[keep]
    return out.astype(np.float32)


def crop_cells(side, crop):
    """Cells of the coarsest level a crop keeps of ``side`` cells: the share ``crop`` of them, at least one."""
    return min(side, max(1, round(crop * side)))


def crop_batch(outputs, labels, rng, cells, strides):
    """Every sample of a batch cut to ``cells`` x ``cells`` cells of the coarsest level, each at a random place
    aligned to those cells: the kept maps (B, C, H, W) at ``strides``, and each sample's labels (n, 5) in fractions
    of its window (``centred_labels``)."""
    coarse = max(strides)
    h, w = (d * strides[0] // coarse for d in outputs[0].shape[-2:])
    ys, xs = rng.integers(0, h - cells + 1, len(labels)), rng.integers(0, w - cells + 1, len(labels))
    cropped = []
    for o, s in zip(outputs, strides):
        f = coarse // s
        cropped.append(torch.stack([o[b, :, y * f:(y + cells) * f, x * f:(x + cells) * f]
                                    for b, (y, x) in enumerate(zip(ys, xs))]))
    return cropped, [centred_labels(lb, x / w, y / h, cells / w, cells / h) for lb, y, x in zip(labels, ys, xs)]


def centred_labels(lb, x0, y0, w, h):
    """Labels (n, 5) [cls, cx, cy, w, h] of the boxes centred in the window at (x0, y0) of size (w, h) (fractions
    of the image), in fractions of the window and whole: not clipped at its edge. The cached maps were computed on
    the whole image, so a box that crosses the window's edge is still seen whole; clipping it would teach the
    layers after the cache a box smaller than the object they see. Boxes centred outside are dropped: the loss
    assigns a box to the cell of its centre."""
    cx, cy = (lb[:, 1] - x0) / w, (lb[:, 2] - y0) / h
    keep = (cx >= 0) & (cx < 1) & (cy >= 0) & (cy < 1)
    out = np.stack((lb[:, 0], cx, cy, lb[:, 3] / w, lb[:, 4] / h), 1)[keep]
    return out.astype(np.float32)

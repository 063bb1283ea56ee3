"""Anchor fitness check and re-computation (k-means + genetic evolution), as YOLOv5's autoanchor."""
import numpy as np
import torch
from utils.errors import InputError


def label_wh(dataset, imgsz, rng=None):
    """Pixel (w, h) of every training box at ``imgsz`` with a random 0.9-1.1 scale, as the loader would make them."""
    rng = rng or np.random.default_rng(0)
    shapes = imgsz * dataset.shapes / dataset.shapes.max(1, keepdims=True)
    scale = rng.uniform(0.9, 1.1, size=(shapes.shape[0], 1))
    wh = [lb[:, 3:5] * s for s, lb in zip(shapes * scale, dataset.labels) if len(lb)]
    return np.concatenate(wh, 0).astype(np.float32) if wh else np.zeros((0, 2), np.float32)


def anchor_metrics(anchors, wh, thr=4.0):
    """Best possible recall (share of boxes some anchor can match) and anchors above threshold per box."""
    wh, anchors = torch.as_tensor(wh, dtype=torch.float32), torch.as_tensor(anchors, dtype=torch.float32)
    r = wh[:, None] / anchors[None]
    x = torch.min(r, 1 / r).min(2)[0]  # worst side ratio per (box, anchor)
    best = x.max(1)[0]
    return float((best > 1 / thr).float().mean()), float((x > 1 / thr).float().sum(1).mean())


def _fitness(anchors, wh, thr):
    r = wh[:, None] / anchors[None]
    x = np.minimum(r, 1 / r).min(2)
    best = x.max(1)
    return float((best * (best > 1 / thr)).mean())


def kmean_anchors(wh, n=9, thr=4.0, gen=1000, seed=0):
    """Anchors (n, 2) in pixels from box sizes: whitened k-means, then mutation-based evolution of fitness."""
    rng = np.random.default_rng(seed)
    wh = wh[(wh >= 2.0).any(1)]  # ignore boxes under 2 px
    if len(wh) < n:
        raise InputError(f'autoanchor: {len(wh)} boxes are too few for {n} anchors')
    sigma = wh.std(0) + 1e-9
    k = _kmeans(wh / sigma, n, rng) * sigma
    f = _fitness(k, wh, thr)
    for _ in range(gen):
        v = np.ones_like(k)
        while (v == 1).all():  # mutate until something changes
            v = ((rng.random(k.shape) < 0.9) * rng.random() * rng.standard_normal(k.shape) * 0.1 + 1).clip(0.3, 3.0)
        kg = (k * v).clip(min=2.0)
        fg = _fitness(kg, wh, thr)
        if fg > f:
            f, k = fg, kg
    return k[np.argsort(k.prod(1))]


def _kmeans(x, n, rng, iters=30):
    centres = x[rng.choice(len(x), n, replace=False)]
    for _ in range(iters):
        assign = ((x[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        for j in range(n):
            if (assign == j).any():
                centres[j] = x[assign == j].mean(0)
    return centres


def check_anchors(dataset, model, thr=4.0, imgsz=640, log=print, replace=True):
    """Check the model's anchors against the dataset; replace them when best possible recall < 0.98.

    Returns (bpr before, bpr after). New anchors are only kept when they improve recall. ``replace=False``
    (a model started from pretrained weights, whose box rows were trained for its anchors) only checks.
    """
    det = getattr(model, 'module', model).model[-1]
    wh = label_wh(dataset, imgsz)
    if not len(wh):
        return 0.0, 0.0
    stride = det.stride.view(-1, 1, 1)
    anchors = (det.anchors.detach().cpu() * stride.cpu()).view(-1, 2)  # pixels
    bpr, aat = anchor_metrics(anchors, wh, thr)
    log(f'autoanchor: {aat:.2f} anchors/target, best possible recall {bpr:.4f}')
    if bpr >= 0.98:
        return bpr, bpr
    if not replace:
        log('autoanchor: keeping the pretrained anchors (the transferred box rows were trained for them; '
            'new anchors would undo that); give --cfg with anchors to change them')
        return bpr, bpr
    n_anchors, n_usable = det.na * det.nl, int((wh >= 2.0).any(1).sum())
    if n_usable < n_anchors:  # too few boxes to fit anchors to: warn and keep the model's (as upstream)
        log(f'autoanchor: WARNING only {n_usable} boxes, too few to evolve {n_anchors} anchors; '
            f'keeping the original ones')
        return bpr, bpr
    new = kmean_anchors(wh, n=n_anchors, thr=thr)
    new_bpr, _ = anchor_metrics(new, wh, thr)
    if new_bpr <= bpr:
        log('autoanchor: evolved anchors are no better; keeping the original ones')
        return bpr, bpr
    new_t = torch.tensor(new, dtype=det.anchors.dtype, device=det.anchors.device).view_as(det.anchors)
    det.anchors.copy_(new_t / det.stride.view(-1, 1, 1).to(new_t.device))
    if hasattr(det, 'anchor_grid'):  # legacy pixel-unit copy (v1-v5 layout)
        det.anchor_grid.copy_(new_t.view_as(det.anchor_grid))
    log(f'autoanchor: new anchors, best possible recall {new_bpr:.4f}: {np.round(new).astype(int).tolist()}')
    return bpr, new_bpr

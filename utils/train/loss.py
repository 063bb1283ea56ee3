"""YOLOv5 loss: target-to-anchor assignment, CIoU box loss, objectness and class BCE (focal when fl_gamma > 0).

    compute_loss = ComputeLoss(model, hyp)
    loss, items = compute_loss(model(imgs), targets)   # loss is scaled by batch size; items = (box, obj, cls)

``targets`` is (N, 6) [image index, class, cx, cy, w, h] normalised to the input image.

The anchors the loss assigns targets to are checked against the training labels before a new run, and
re-computed when they fit badly (k-means + genetic evolution, as YOLOv5's autoanchor):

    check_anchors(dataset, model, thr=hyp['anchor_t'], imgsz=640)   # best possible recall; new anchors if < 0.98
"""
import math

import numpy as np
import torch
import torch.nn as nn

from utils.errors import InputError

LEVEL_BALANCE = {3: (4.0, 1.0, 0.4)}  # objectness weight per level, P3 (small objects) weighs most
OTHER_LEVEL_BALANCE = (4.0, 1.0, 0.25, 0.06, 0.02)  # 4 or 5 levels (P6 models)
FOCAL_ALPHA = 0.25
NEIGHBOUR_OFFSETS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32)


def scale_loss_gains(hyp, nl, nc, imgsz):
    """YOLOv5's gains adjusted to the number of levels, classes and image size (returns a new dict)."""
    hyp = dict(hyp)
    hyp['box'] *= 3 / nl
    hyp['cls'] *= nc / 80 * 3 / nl
    hyp['obj'] *= (imgsz / 640) ** 2 * 3 / nl
    return hyp


class FocalBCE(nn.Module):
    """Focal loss (arXiv:1708.02002) around a ``BCEWithLogitsLoss``: each element's BCE is weighted by
    ``alpha_t * (1 - p_t) ** gamma``, so confident, correct predictions count less. Mean over elements."""

    def __init__(self, bce, gamma, alpha=FOCAL_ALPHA):
        super().__init__()
        self.bce = nn.BCEWithLogitsLoss(pos_weight=bce.pos_weight, reduction='none')
        self.gamma, self.alpha = gamma, alpha

    def forward(self, logits, targets):
        loss = self.bce(logits, targets)
        p = logits.sigmoid()
        p_t = targets * p + (1 - targets) * (1 - p)  # probability given to the target
        alpha_t = targets * self.alpha + (1 - targets) * (1 - self.alpha)
        return (loss * alpha_t * (1.0 - p_t) ** self.gamma).mean()


def bbox_ciou(box1, box2, eps=1e-7):
    """Complete IoU (arXiv:1911.08287) of matching rows of two (n, 4) xywh box tensors."""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.unbind(-1), box2.unbind(-1)
    b1x1, b1x2, b1y1, b1y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    b2x1, b2x2, b2y1, b2y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    inter = (torch.min(b1x2, b2x2) - torch.max(b1x1, b2x1)).clamp(0) * \
            (torch.min(b1y2, b2y2) - torch.max(b1y1, b2y1)).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    cw = torch.max(b1x2, b2x2) - torch.min(b1x1, b2x1)  # enclosing box
    ch = torch.max(b1y2, b2y2) - torch.min(b1y1, b2y1)
    c2 = cw ** 2 + ch ** 2 + eps  # enclosing diagonal squared
    rho2 = (x2 - x1) ** 2 + (y2 - y1) ** 2  # centre distance squared
    v = (4 / math.pi ** 2) * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


class ComputeLoss:
    """YOLOv5 loss for a ``Model`` (or its DDP wrapper) and a hyp dict (box, obj, cls, *_pw, anchor_t, fl_gamma)."""

    def __init__(self, model, hyp, label_smoothing=0.0):
        model = getattr(model, 'module', model)
        det = model.model[-1]
        device = det.anchors.device
        self.hyp = hyp
        self.bce_cls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([hyp.get('cls_pw', 1.0)], device=device))
        self.bce_obj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([hyp.get('obj_pw', 1.0)], device=device))
        if hyp.get('fl_gamma', 0.0) > 0:
            self.bce_cls, self.bce_obj = (FocalBCE(b, hyp['fl_gamma']) for b in (self.bce_cls, self.bce_obj))
        self.cls_pos, self.cls_neg = 1.0 - 0.5 * label_smoothing, 0.5 * label_smoothing
        self.balance = list(LEVEL_BALANCE.get(det.nl, OTHER_LEVEL_BALANCE))  # this instance's own copy
        self.gr = 1.0  # objectness target = gr * IoU + (1 - gr)
        self.na, self.nc, self.nl = det.na, det.nc, det.nl
        self.anchors = det.anchors  # grid units, (nl, na, 2)

    def __call__(self, preds, targets):
        device = targets.device
        lcls, lbox, lobj = (torch.zeros(1, device=device) for _ in range(3))
        tcls, tbox, indices, anchors = self.build_targets(preds, targets)
        for i, p in enumerate(preds):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(p.shape[:4], dtype=p.dtype, device=device)
            if b.shape[0]:
                pxy, pwh, _, pcls = p[b, a, gj, gi].split((2, 2, 1, self.nc), 1)
                pxy = pxy.sigmoid() * 2 - 0.5
                pwh = (pwh.sigmoid() * 2) ** 2 * anchors[i]
                iou = bbox_ciou(torch.cat((pxy, pwh), 1), tbox[i])
                lbox += (1.0 - iou).mean()
                tobj[b, a, gj, gi] = (1.0 - self.gr) + self.gr * iou.detach().clamp(0).to(tobj.dtype)
                if self.nc > 1:  # a single class needs no class loss
                    t = torch.full_like(pcls, self.cls_neg)
                    t[range(b.shape[0]), tcls[i]] = self.cls_pos
                    lcls += self.bce_cls(pcls, t)
            lobj += self.bce_obj(p[..., 4], tobj) * self.balance[i]
        lbox *= self.hyp['box']
        lobj *= self.hyp['obj']
        lcls *= self.hyp['cls']
        bs = preds[0].shape[0]
        return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()

    def build_targets(self, preds, targets):
        """Assign each target to every anchor whose wh ratio is within ``anchor_t`` and to its cell plus the two
        nearest neighbouring cells. Returns per level: classes, boxes (xy offset in cell, wh in grid units),
        indices (image, anchor, grid y, grid x) and the matched anchors."""
        nt, g = targets.shape[0], 0.5
        device = targets.device
        anchor_idx = torch.arange(self.na, device=device).float().view(self.na, 1).repeat(1, nt)
        t_all = torch.cat((targets.repeat(self.na, 1, 1), anchor_idx[..., None]), 2)  # (na, nt, 7)
        offsets_table = NEIGHBOUR_OFFSETS.to(device) * g
        tcls, tbox, indices, anch = [], [], [], []
        for i in range(self.nl):
            anchors, (_, _, ny, nx, _) = self.anchors[i], preds[i].shape
            gain = torch.tensor([1, 1, nx, ny, nx, ny, 1], device=device, dtype=torch.float32)
            t = t_all * gain  # to grid units
            offsets = torch.zeros((0, 2), device=device)
            if nt:
                r = t[..., 4:6] / anchors[:, None]  # wh ratio to each anchor
                t = t[torch.max(r, 1 / r).max(2)[0] < self.hyp['anchor_t']]
                gxy = t[:, 2:4]
                gxy_inv = gain[[2, 3]] - gxy
                left, top = ((gxy % 1 < g) & (gxy > 1)).T
                right, bottom = ((gxy_inv % 1 < g) & (gxy_inv > 1)).T
                keep = torch.stack((torch.ones_like(left), left, top, right, bottom))  # (5, n)
                t = t.repeat((5, 1, 1))[keep]
                offsets = (torch.zeros_like(gxy)[None] + offsets_table[:, None])[keep]
            else:
                t = t_all[0, :0]
            bc, gxy, gwh, a = t.split((2, 2, 2, 1), 1)
            a, (b, c) = a.long().view(-1), bc.long().T
            gij = (gxy - offsets).long()
            gi, gj = gij[:, 0].clamp_(0, nx - 1), gij[:, 1].clamp_(0, ny - 1)
            indices.append((b, a, gj, gi))
            tbox.append(torch.cat((gxy - gij, gwh), 1))
            anch.append(anchors[a])
            tcls.append(c)
        return tcls, tbox, indices, anch


# ---------------------------------------------------------------- autoanchor
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

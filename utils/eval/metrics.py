"""Detection metrics: matching, AP, P/R at max F1, fitness and the confusion matrix.

Matching follows the COCO rules (pycocotools ``COCOeval.evaluateImg``): detections, highest confidence first,
take the unmatched ground truth of their class with the highest IoU at or above each threshold; a detection
that can only match an *ignored* box (COCO crowd, VOC difficult) counts neither as TP nor as FP. AP is the
COCO 101-point interpolation exactly as pycocotools computes it (``method='coco'``, the default), or YOLOv5's
trapezoid variant of it (``method='interp'``). Counting at most 100 detections per image and class, as
``DetectionEvaluator.coco_map`` does, gives pycocotools' numbers on the same predictions
(``tests/test_metrics_coco.py``).

    >>> ev = DetectionEvaluator(nc=2)
    >>> ev.add_image(det, GroundTruth(boxes, cls))  # per image: det (n, 6) xyxy/conf/cls, pixels
    >>> res = ev.results()  # res.map50, res.map, res.maps ...
"""
from dataclasses import dataclass, field

import numpy as np
from utils.errors import InputError

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # the same values as pycocotools' Params.iouThrs
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)  # pycocotools' Params.recThrs
COCO_MAX_DETS = 100  # detections per image and class that COCOeval's headline AP counts


def fitness(x):
    """Model fitness used to pick best.pt: 0.1 * mAP50 + 0.9 * mAP50-95 of [P, R, mAP50, mAP50-95, ...]."""
    x = np.asarray(x, dtype=float)
    return 0.1 * x[..., 2] + 0.9 * x[..., 3]


def smooth(y, fraction=0.05):
    """Box filter over ``fraction`` of the points (odd width), edges padded with the end values."""
    width = round(len(y) * fraction * 2) // 2 + 1
    pad = np.ones(width // 2)
    padded = np.concatenate((pad * y[0], y, pad * y[-1]))
    return np.convolve(padded, np.ones(width) / width, mode='valid')


def coco_iou(det_xyxy, gt_xyxy, gt_crowd=None):
    """IoU (n, m) computed as pycocotools does, in float64 from xywh; crowd boxes use the detection's area
    as the union (intersection over detection)."""
    d = np.asarray(det_xyxy, dtype=np.float64).reshape(-1, 4)
    g = np.asarray(gt_xyxy, dtype=np.float64).reshape(-1, 4)
    dw, dh = d[:, 2] - d[:, 0], d[:, 3] - d[:, 1]
    gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
    iw = np.minimum((d[:, 0] + dw)[:, None], (g[:, 0] + gw)[None]) - np.maximum(d[:, None, 0], g[None, :, 0])
    ih = np.minimum((d[:, 1] + dh)[:, None], (g[:, 1] + gh)[None]) - np.maximum(d[:, None, 1], g[None, :, 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    det_area = (dw * dh)[:, None]
    union = det_area + (gw * gh)[None] - inter
    if gt_crowd is not None:
        union = np.where(np.asarray(gt_crowd, bool)[None], det_area, union)
    with np.errstate(divide='ignore', invalid='ignore'):
        return np.where(inter > 0, inter / union, 0.0)


def match_detections(det_boxes, det_cls, gt_boxes, gt_cls, gt_ignore=None, gt_crowd=None,
                     iou_thresholds=IOU_THRESHOLDS):
    """Greedy COCO matching of one image's detections (sorted by confidence, highest first).

    ``gt_ignore`` marks ignore regions (COCO crowd, VOC difficult): a detection that matches nothing else but
    one of them is *ignored*, and any number of detections may land on them. ``gt_crowd`` boxes (always
    ignored) are scored by intersection over the detection's area, as pycocotools does.
    Returns ``(correct, ignored)``, two (n, T) bool arrays.
    """
    n, m, t = len(det_cls), len(gt_cls), len(iou_thresholds)
    correct, ignored = np.zeros((n, t), bool), np.zeros((n, t), bool)
    if n == 0 or m == 0:
        return correct, ignored
    crowd = np.zeros(m, bool) if gt_crowd is None else np.asarray(gt_crowd, bool)
    ignore = crowd.copy() if gt_ignore is None else np.asarray(gt_ignore, bool) | crowd
    iou = coco_iou(det_boxes, gt_boxes, crowd)
    iou[np.asarray(det_cls)[:, None] != np.asarray(gt_cls)[None]] = -1.0
    thr = np.minimum(iou_thresholds, 1 - 1e-10)[:, None]  # (T, 1), as pycocotools caps it
    taken = np.zeros((t, m), bool)  # regular ground truth already matched, per threshold
    rows = np.arange(t)
    for d in np.flatnonzero((iou >= thr.min()).any(1)):  # only detections that overlap something enough
        above = iou[d][None] >= thr  # (T, m)
        regular = np.where(above & ~taken & ~ignore, iou[d], -np.inf)
        best = m - 1 - regular[:, ::-1].argmax(1)  # the last of equal IoUs wins, as in pycocotools
        hit = np.isfinite(regular[rows, best])
        correct[d] = hit
        taken[rows[hit], best[hit]] = True
        ignored[d] = ~hit & (above & ignore).any(1)  # fell back on an ignore region
    return correct, ignored


def rank_within_class(det_cls):
    """Position of each detection among the image's detections of the same class (input in confidence order)."""
    det_cls = np.asarray(det_cls)
    rank = np.zeros(len(det_cls), int)
    for c in np.unique(det_cls):
        idx = np.flatnonzero(det_cls == c)
        rank[idx] = np.arange(len(idx))
    return rank


def compute_ap(recall, precision, method='coco'):
    """AP of one PR curve (points in detection-confidence order).

    'coco' (default): pycocotools' 101-point rule: the precision envelope sampled at the first point reaching
    each recall threshold 0, 0.01, ..., 1 (0 beyond the last recall), averaged. A perfect detector scores 1.
    'interp': YOLOv5's variant: sentinels (0, 1) and (1, 0), envelope, linear interpolation at the same 101
    recalls, trapezoid integral. It runs slightly below COCO (a perfect detector scores 0.995).
    """
    recall, precision = np.asarray(recall, float), np.asarray(precision, float)
    if method == 'coco':
        envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
        idx = np.searchsorted(recall, RECALL_THRESHOLDS, side='left')
        sampled = np.zeros(len(RECALL_THRESHOLDS))
        valid = idx < len(recall)
        sampled[valid] = envelope[idx[valid]]
        return float(sampled.mean())
    if method != 'interp':
        raise ValueError(f"AP method '{method}': expected 'coco' or 'interp'")
    y = pr_curve(recall, precision, RECALL_THRESHOLDS)
    return float(np.sum((y[1:] + y[:-1]) * np.diff(RECALL_THRESHOLDS)) / 2)


def pr_curve(recall, precision, x):
    """Precision envelope (with sentinels (0, 1) and (1, 0)) linearly interpolated at recalls ``x``."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.maximum.accumulate(np.concatenate(([1.0], precision, [0.0]))[::-1])[::-1]
    return np.interp(x, mrec, mpre)


@dataclass
class APResult:
    """Per-class results of ``ap_per_class``; rows follow ``classes`` (classes with ground truth)."""
    classes: np.ndarray  # (k,) class ids
    n_targets: np.ndarray  # (k,) counted ground-truth boxes
    p: np.ndarray  # (k,) precision at the max-F1 confidence
    r: np.ndarray  # (k,) recall at the max-F1 confidence
    f1: np.ndarray  # (k,)
    ap: np.ndarray  # (k, T) AP at each IoU threshold
    px: np.ndarray = field(default_factory=lambda: np.linspace(0, 1, 1000))  # confidence / recall axis
    p_curve: np.ndarray = None  # (k, 1000) precision vs confidence
    r_curve: np.ndarray = None  # (k, 1000) recall vs confidence
    f1_curve: np.ndarray = None  # (k, 1000) F1 vs confidence
    pr_curve: np.ndarray = None  # (k, 1000) precision vs recall at IoU 0.5

    @property
    def ap50(self):
        return self.ap[:, 0] if self.ap.size else np.zeros(0)

    @property
    def ap_mean(self):
        return self.ap.mean(1) if self.ap.size else np.zeros(0)


def ap_per_class(tp, conf, pred_cls, target_cls, ignored=None, method='coco', eps=1e-16):
    """AP for every class that has ground truth, plus P/R/F1 at the confidence of the best mean F1.

    tp, ignored: (n, T) bool per detection and IoU threshold (ignored detections count neither way);
    conf, pred_cls: (n,); target_cls: classes of the counted (non-ignored) ground-truth boxes.
    """
    tp = np.asarray(tp, bool)
    tp = tp[:, None] if tp.ndim == 1 else tp
    ignored = np.zeros_like(tp) if ignored is None else np.asarray(ignored, bool).reshape(tp.shape)
    order = np.argsort(-np.asarray(conf), kind='stable')  # stable: ties keep input order, as COCOeval
    tp, ignored, conf, pred_cls = tp[order], ignored[order], np.asarray(conf)[order], np.asarray(pred_cls)[order]
    classes, n_targets = np.unique(np.asarray(target_cls), return_counts=True)
    k, t, px = len(classes), tp.shape[1], np.linspace(0, 1, 1000)
    ap = np.zeros((k, t))
    p_curve, r_curve, pr = np.zeros((k, 1000)), np.zeros((k, 1000)), np.zeros((k, 1000))
    for ci, c in enumerate(classes):
        mask = pred_cls == c
        if not mask.any():
            continue
        tpc = np.cumsum(tp[mask] & ~ignored[mask], 0)
        fpc = np.cumsum(~tp[mask] & ~ignored[mask], 0)
        recall = tpc / n_targets[ci]
        precision = tpc / (tpc + fpc + (np.spacing(1) if method == 'coco' else eps))
        # curves against confidence (x decreasing along the detections, hence the negations)
        r_curve[ci] = np.interp(-px, -conf[mask], recall[:, 0], left=0)
        p_curve[ci] = np.interp(-px, -conf[mask], precision[:, 0], left=1)
        ap[ci] = [compute_ap(recall[:, j], precision[:, j], method) for j in range(t)]
        pr[ci] = pr_curve(recall[:, 0], precision[:, 0], px)
    f1_curve = 2 * p_curve * r_curve / (p_curve + r_curve + eps)
    best = smooth(f1_curve.mean(0), 0.1).argmax() if k else 0
    return APResult(classes.astype(int), n_targets, p_curve[:, best], r_curve[:, best], f1_curve[:, best], ap,
                    px, p_curve, r_curve, f1_curve, pr)


class ConfusionMatrix:
    """Counts of (predicted class, true class) over a dataset; index ``nc`` is background.

    Row = prediction, column = truth: ``matrix[nc, c]`` is a missed box of class c, ``matrix[c, nc]`` a
    detection of class c on background. Detections below ``conf`` are dropped; a detection and a label pair
    up at IoU above ``iou_thres``, best IoU first, each used once.
    """

    def __init__(self, nc, conf=0.25, iou_thres=0.45):
        self.nc, self.conf, self.iou_thres = nc, conf, iou_thres
        self.matrix = np.zeros((nc + 1, nc + 1), dtype=np.int64)

    def process_batch(self, detections, labels):
        """detections: (n, 6) [x1, y1, x2, y2, conf, cls]; labels: (m, 5) [cls, x1, y1, x2, y2]."""
        detections = np.asarray(detections, float).reshape(-1, 6)
        labels = np.asarray(labels, float).reshape(-1, 5)
        detections = detections[detections[:, 4] > self.conf]
        det_cls, gt_cls = detections[:, 5].astype(int), labels[:, 0].astype(int)
        pairs = self._pairs(coco_iou(detections[:, :4], labels[:, 1:]))
        matched_det, matched_gt = set(pairs[:, 0].tolist()), set(pairs[:, 1].tolist())
        for d, g in pairs:
            self.matrix[det_cls[d], gt_cls[g]] += 1
        for g in set(range(len(gt_cls))) - matched_gt:
            self.matrix[self.nc, gt_cls[g]] += 1  # missed: predicted background
        for d in set(range(len(det_cls))) - matched_det:
            self.matrix[det_cls[d], self.nc] += 1  # spurious: truth is background

    def _pairs(self, iou):
        """One-to-one (detection, label) index pairs with IoU above the threshold, highest IoU first."""
        d, g = np.nonzero(iou > self.iou_thres)
        order = np.argsort(-iou[d, g], kind='stable')
        pairs, used_d, used_g = [], set(), set()
        for i in order:
            if d[i] not in used_d and g[i] not in used_g:
                pairs.append((d[i], g[i]))
                used_d.add(d[i])
                used_g.add(g[i])
        return np.array(pairs, dtype=int).reshape(-1, 2)

    def tp_fp(self):
        """Per-class true positives and false positives (background column excluded)."""
        tp = self.matrix.diagonal()[:-1]
        return tp, self.matrix[:-1].sum(1) - tp


@dataclass
class GroundTruth:
    """One image's ground truth in original-image pixels."""
    boxes: np.ndarray  # (m, 4) xyxy
    cls: np.ndarray  # (m,)
    crowd: np.ndarray = None  # (m,) bool, COCO iscrowd: ignore region, any number of matches
    difficult: np.ndarray = None  # (m,) bool, VOC difficult: neither TP nor FP

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, np.float64).reshape(-1, 4)
        self.cls = np.asarray(self.cls).reshape(-1).astype(int)
        m = len(self.cls)
        self.crowd = np.zeros(m, bool) if self.crowd is None else np.asarray(self.crowd, bool).reshape(m)
        self.difficult = (np.zeros(m, bool) if self.difficult is None
                          else np.asarray(self.difficult, bool).reshape(m))

    @property
    def ignore(self):
        return self.crowd | self.difficult


@dataclass
class Summary:
    """Dataset-level numbers for the val table."""
    mp: float
    mr: float
    map50: float
    map: float
    maps: np.ndarray  # (nc,) mAP50-95 per class; classes without ground truth get the overall mAP
    n_targets: np.ndarray  # (nc,) counted ground-truth boxes per class
    n_images: np.ndarray  # (nc,) images holding at least one counted box of the class
    per_class: APResult


class DetectionEvaluator:
    """Accumulates per-image matches; computes YOLOv5-style, COCO-rule and (optionally) VOC devkit AP."""

    def __init__(self, nc, voc_rule=None, confusion=None, iou_thresholds=IOU_THRESHOLDS):
        if voc_rule not in (None, 'voc07', 'voc12'):
            raise InputError(f"VOC rule '{voc_rule}': expected 'voc07' or 'voc12'")
        self.nc, self.voc_rule, self.confusion, self.iou_thresholds = nc, voc_rule, confusion, iou_thresholds
        self.images = []  # per image: dict of arrays

    def add_image(self, det, gt, key=None):
        """det: (n, 6) [x1, y1, x2, y2, conf, cls] in original pixels; gt: ``GroundTruth``.

        Images are ranked by ``key`` (default: the order added) when detections of equal confidence in
        different images are ordered; pass the COCO image id to break such ties exactly as COCOeval does.
        """
        det = np.asarray(det, np.float64).reshape(-1, 6)
        det = det[np.argsort(-det[:, 4], kind='stable')]
        correct, ignored = match_detections(det[:, :4], det[:, 5], gt.boxes, gt.cls, gt.ignore, gt.crowd,
                                            self.iou_thresholds)
        part = dict(correct=correct, ignored=ignored, conf=det[:, 4], cls=det[:, 5].astype(int),
                    rank=rank_within_class(det[:, 5]), target_cls=gt.cls[~gt.ignore],
                    key=len(self.images) if key is None else key)
        if self.voc_rule:
            from utils.eval.voc_eval import voc_match  # VOC datasets only
            part['voc_tp'], part['voc_ignored'] = voc_match(det[:, :4], det[:, 5], gt.boxes, gt.cls, gt.difficult)
            part['voc_target_cls'] = gt.cls[~gt.difficult]
        self.images.append(part)
        if self.confusion is not None:
            keep = ~ignored[:, 0] if len(det) else np.zeros(0, bool)
            counted = ~gt.ignore
            self.confusion.process_batch(det[keep], np.c_[gt.cls[counted], gt.boxes[counted]])

    def _stack(self, key, mask=None):
        images = sorted(self.images, key=lambda p: (isinstance(p['key'], str), p['key']))
        parts = [p[key] if mask is None else p[key][mask(p)] for p in images]
        if not parts:
            return np.zeros((0, len(self.iou_thresholds)) if key in ('correct', 'ignored') else 0)
        return np.concatenate(parts, 0)

    def results(self, method='coco', max_dets_per_class=None):
        """``Summary`` over all images. ``max_dets_per_class=100`` with ``method='coco'`` = COCOeval's AP."""
        mask = None if max_dets_per_class is None else (lambda p: p['rank'] < max_dets_per_class)
        res = ap_per_class(self._stack('correct', mask), self._stack('conf', mask), self._stack('cls', mask),
                           self._stack('target_cls'), self._stack('ignored', mask), method=method)
        mp, mr = (float(res.p.mean()), float(res.r.mean())) if len(res.classes) else (0.0, 0.0)
        map50 = float(res.ap50.mean()) if len(res.classes) else 0.0
        map_ = float(res.ap_mean.mean()) if len(res.classes) else 0.0
        maps = np.full(self.nc, map_)
        maps[res.classes] = res.ap_mean
        n_targets = np.bincount(self._stack('target_cls').astype(int), minlength=self.nc)
        n_images = sum((np.bincount(np.unique(p['target_cls']).astype(int), minlength=self.nc) for p in self.images),
                       np.zeros(self.nc, int))
        return Summary(mp, mr, map50, map_, maps, n_targets, n_images, res)

    def coco_map(self):
        """(mAP50, mAP50-95) under COCOeval's rules: 101 recall thresholds, 100 detections per image/class."""
        s = self.results(method='coco', max_dets_per_class=COCO_MAX_DETS)
        return s.map50, s.map

    def voc_ap(self):
        """Per-class VOC devkit AP50 (nc,), NaN for classes without non-difficult boxes, and their mean."""
        if not self.voc_rule:
            raise ValueError('VOC AP needs voc_rule voc07 or voc12')
        from utils.eval.voc_eval import voc_ap_per_class
        ap = voc_ap_per_class(self._stack('voc_tp'), self._stack('voc_ignored'), self._stack('conf'),
                              self._stack('cls'), self._stack('voc_target_cls'), self.nc,
                              use_07_metric=self.voc_rule == 'voc07')
        return ap, float(np.nanmean(ap)) if np.isfinite(ap).any() else 0.0

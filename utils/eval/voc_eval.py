"""PASCAL VOC devkit AP50 (VOCevaldet.m / VOCap.m rules).

Per class, detections sorted by confidence: each takes the ground truth box of its image and class with the
largest overlap; overlap >= 0.5 on a *difficult* box -> ignored (neither TP nor FP); on a box not yet
detected -> TP; on an already detected box -> FP (duplicate); below 0.5 -> FP. Difficult boxes are not
counted as positives. AP: 11-point interpolation for VOC2007 test, area under the precision envelope
(all points) for VOC2010 and later.

The devkit measures boxes in 1-based inclusive pixels and adds 1 to widths; our boxes are continuous
(x2 - x1 is the width), so ``pixel_offset`` defaults to 0. Pass 1 for boxes in the devkit's convention.
"""
import numpy as np

# VOCap.m's 11 recall levels are MATLAB's ``0:0.1:1``, which MATLAB builds symmetrically: k * 0.1 for the first
# half, 1 - (10 - k) * 0.1 for the second. So 0.3 is 0.30000000000000004 but 0.6 and 0.7 are the doubles nearest
# 0.6 and 0.7, and a recall of exactly 3/5 or 7/10 reaches them. (np.linspace(0, 1, 11) and the Python ports'
# np.arange(0, 1.1, 0.1) give 0.6000000000000001 and 0.7000000000000001, which such a recall misses.)
DEVKIT_RECALLS_07 = tuple(k * 0.1 if 2 * k < 10 else 1 - (10 - k) * 0.1 for k in range(11))


def voc_iou(det_xyxy, gt_xyxy, pixel_offset=0.0):
    """(n, m) IoU with the devkit's optional +1 pixel convention."""
    d = np.asarray(det_xyxy, np.float64).reshape(-1, 4)
    g = np.asarray(gt_xyxy, np.float64).reshape(-1, 4)
    iw = np.minimum(d[:, None, 2], g[None, :, 2]) - np.maximum(d[:, None, 0], g[None, :, 0]) + pixel_offset
    ih = np.minimum(d[:, None, 3], g[None, :, 3]) - np.maximum(d[:, None, 1], g[None, :, 1]) + pixel_offset
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area_d = (d[:, 2] - d[:, 0] + pixel_offset) * (d[:, 3] - d[:, 1] + pixel_offset)
    area_g = (g[:, 2] - g[:, 0] + pixel_offset) * (g[:, 3] - g[:, 1] + pixel_offset)
    union = area_d[:, None] + area_g[None] - inter
    with np.errstate(divide='ignore', invalid='ignore'):
        return np.where(inter > 0, inter / union, 0.0)


def voc_match(det_boxes, det_cls, gt_boxes, gt_cls, gt_difficult, iou_thres=0.5, pixel_offset=0.0):
    """Devkit assignment for one image; detections in confidence order. Returns (tp, ignored) bool (n,)."""
    n, m = len(det_cls), len(gt_cls)
    tp, ignored = np.zeros(n, bool), np.zeros(n, bool)
    if n == 0 or m == 0:
        return tp, ignored
    difficult = np.asarray(gt_difficult, bool).reshape(m)
    iou = voc_iou(det_boxes, gt_boxes, pixel_offset)
    iou[np.asarray(det_cls)[:, None] != np.asarray(gt_cls)[None]] = -np.inf  # only boxes of the same class
    detected = np.zeros(m, bool)
    for d in range(n):
        j = int(iou[d].argmax())  # the first of equal overlaps, as the devkit's strict '>' scan
        if iou[d, j] < iou_thres:
            continue  # false positive
        if difficult[j]:
            ignored[d] = True
        elif not detected[j]:
            tp[d] = detected[j] = True
    return tp, ignored


def voc_ap(recall, precision, use_07_metric=False):
    """VOCap: 11-point (VOC2007) or all-point area under the precision envelope (VOC2010+)."""
    recall, precision = np.asarray(recall, float), np.asarray(precision, float)
    if use_07_metric:
        points = [precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in DEVKIT_RECALLS_07]
        return float(np.sum(points) / 11)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[steps] - mrec[steps - 1]) * mpre[steps]))


def voc_ap_per_class(tp, ignored, conf, pred_cls, target_cls, nc, use_07_metric=False):
    """AP50 per class (nc,) from per-detection flags over a dataset; NaN where a class has no positives."""
    tp, ignored = np.asarray(tp, bool), np.asarray(ignored, bool)
    conf, pred_cls = np.asarray(conf, float), np.asarray(pred_cls).astype(int)
    n_pos = np.bincount(np.asarray(target_cls).astype(int), minlength=nc)
    ap = np.full(nc, np.nan)
    for c in range(nc):
        if n_pos[c] == 0:
            continue
        idx = np.flatnonzero(pred_cls == c)
        idx = idx[np.argsort(-conf[idx], kind='stable')]
        tpc = np.cumsum(tp[idx])
        fpc = np.cumsum(~tp[idx] & ~ignored[idx])
        precision = tpc / np.maximum(tpc + fpc, np.finfo(np.float64).eps)
        ap[c] = voc_ap(tpc / n_pos[c], precision, use_07_metric)
    return ap

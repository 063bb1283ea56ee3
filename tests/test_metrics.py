"""Hand-computed cases for utils/eval/metrics.py and utils/eval/voc_eval.py."""
import numpy as np
import pytest

from utils.eval.metrics import (ConfusionMatrix, DetectionEvaluator, GroundTruth, ap_per_class, coco_iou, compute_ap,
                           fitness, match_detections, rank_within_class)
from utils.eval.voc_eval import DEVKIT_RECALLS_07, voc_ap, voc_iou, voc_match

BOX_A = [10., 10., 50., 50.]
BOX_B = [100., 100., 160., 140.]
EMPTY = [300., 300., 340., 340.]  # overlaps nothing


def evaluate(dets, gt, voc_rule=None):
    ev = DetectionEvaluator(nc=3, voc_rule=voc_rule)
    ev.add_image(np.array(dets, float).reshape(-1, 6), gt)
    return ev


def test_perfect_detector_scores_one():
    gt = GroundTruth([BOX_A, BOX_B], [0, 1])
    ev = evaluate([BOX_A + [0.9, 0], BOX_B + [0.8, 1]], gt, voc_rule='voc12')
    s = ev.results()
    assert s.map50 == pytest.approx(1.0) and s.map == pytest.approx(1.0)  # 1 - 2e-16: COCO's eps
    assert s.mp == pytest.approx(1.0) and s.mr == pytest.approx(1.0)
    assert ev.coco_map() == pytest.approx((1.0, 1.0))
    assert ev.voc_ap()[1] == 1.0
    assert s.maps.tolist() == pytest.approx([1.0, 1.0, 1.0])  # class 2 has no ground truth: it gets the overall mAP
    assert s.n_targets.tolist() == [1, 1, 0] and s.n_images.tolist() == [1, 1, 0]


def test_one_false_positive_above_one_true_positive():
    # one ground truth; the FP (conf 0.9) ranks above the TP (conf 0.8): recall [0, 1], precision [0, 1/2]
    gt = GroundTruth([BOX_A], [0])
    ev = evaluate([EMPTY + [0.9, 0], BOX_A + [0.8, 0]], gt, voc_rule='voc07')
    assert ev.results().map50 == pytest.approx(0.5)  # COCO: envelope is 1/2 at every recall threshold
    assert ev.results(method='interp').map50 == pytest.approx(0.4975)  # YOLOv5 trapezoid: 0.5 - 0.0025
    assert ev.voc_ap()[1] == pytest.approx(0.5)
    ev12 = evaluate([EMPTY + [0.9, 0], BOX_A + [0.8, 0]], gt, voc_rule='voc12')
    assert ev12.voc_ap()[1] == pytest.approx(0.5)


def test_tp_fp_tp_known_values():
    # two ground truths, TP FP TP: recall [.5 .5 1], precision [1 .5 2/3]
    recall, precision = [0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3]
    assert compute_ap(recall, precision) == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)  # 51 thresholds <= .5
    assert voc_ap(recall, precision) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    with pytest.raises(ValueError, match='expected'):
        compute_ap(recall, precision, method='trapz')


def test_perfect_yolov5_interp_quirk():
    assert compute_ap([0.5, 1.0], [1.0, 1.0], method='interp') == pytest.approx(0.995)
    assert compute_ap([0.5, 1.0], [1.0, 1.0], method='coco') == 1.0


def test_difficult_only_match_is_ignored():
    gt = GroundTruth([BOX_A, BOX_B], [0, 0], difficult=[False, True])
    dets = [BOX_B + [0.9, 0], BOX_B[:2] + [158., 141.] + [0.85, 0], BOX_A + [0.8, 0]]  # 2 on the difficult box
    for rule in ('voc07', 'voc12'):
        ev = evaluate(dets, gt, voc_rule=rule)
        assert ev.voc_ap()[1] == pytest.approx(1.0)  # neither FP nor a missed positive
    ev = evaluate(dets, gt)
    assert ev.results().map50 == pytest.approx(1.0) and ev.results().n_targets[0] == 1
    # the same detections in empty space are FPs ranked above the TP
    ev = evaluate([EMPTY + [0.9, 0], BOX_A + [0.8, 0]], gt, voc_rule='voc12')
    assert ev.voc_ap()[1] == pytest.approx(0.5)
    # a class with only difficult boxes has no positives: NaN, left out of the mean
    ev = evaluate([BOX_B + [0.9, 1], BOX_A + [0.8, 0]], GroundTruth([BOX_A, BOX_B], [0, 1], difficult=[0, 1]),
                  voc_rule='voc12')
    ap, mean = ev.voc_ap()
    assert ap[0] == 1.0 and np.isnan(ap[1]) and mean == 1.0


def test_crowd_region_absorbs_detections():
    crowd = [0., 0., 200., 200.]
    gt = GroundTruth([BOX_A, crowd], [0, 0], crowd=[False, True])
    small_in_crowd = [120., 120., 140., 150.]  # IoU with the crowd box is tiny, but it lies inside it
    assert coco_iou([small_in_crowd], [crowd], [True])[0, 0] == 1.0
    assert coco_iou([small_in_crowd], [crowd])[0, 0] == pytest.approx(600 / 40000)
    dets = [small_in_crowd + [0.95, 0], [121., 121., 141., 151., 0.9, 0], BOX_A + [0.8, 0]]
    correct, ignored = match_detections(np.array(dets)[:, :4], [0, 0, 0], gt.boxes, gt.cls, gt.ignore, gt.crowd)
    assert ignored[:2].all() and not ignored[2].any() and correct[2].all() and not correct[:2].any()
    ev = evaluate(dets, gt)
    assert ev.results().map == pytest.approx(1.0) and ev.results().n_targets[0] == 1
    # a detection on the regular box prefers it to the crowd box that also contains it
    correct, ignored = match_detections(np.array([BOX_A]), [0], gt.boxes, gt.cls, gt.ignore, gt.crowd)
    assert correct.all() and not ignored.any()
    # without the crowd flag the same detections are two FPs above the TP
    plain = evaluate(dets, GroundTruth([BOX_A], [0]))
    assert plain.results().map50 == pytest.approx(1 / 3)


def test_coco_matching_takes_next_free_box_but_voc_does_not():
    a, b = [0., 0., 100., 100.], [0., 0., 100., 70.]  # IoU(a, b) = 0.7
    det = np.array([a, [0., 0., 100., 90.]])  # second detection: IoU .9 with a (taken), .78 with b
    correct, _ = match_detections(det, [0, 0], np.array([a, b]), [0, 0])
    assert correct[0].all() and correct[1, 0] and not correct[1, -1]  # TP on b at 0.5, miss at 0.95
    tp, ignored = voc_match(det, [0, 0], np.array([a, b]), [0, 0], [False, False])
    assert tp.tolist() == [True, False] and not ignored.any()  # devkit: duplicate on a -> FP


def test_class_mismatch_is_never_a_match():
    correct, ignored = match_detections(np.array([BOX_A]), [1], np.array([BOX_A]), [0])
    assert not correct.any() and not ignored.any()
    tp, _ = voc_match(np.array([BOX_A]), [1], np.array([BOX_A]), [0], [False])
    assert not tp.any()


# MATLAB's 0:0.1:1, element by element as MATLAB's colon operator makes it (symmetric about 0.5: the first half
# counts up from 0, the second down from 1)
MATLAB_0_01_1 = [0.0, 0.1, 0.2, 0.1 * 3, 0.4, 0.5, 1 - 0.4, 1 - 0.1 * 3, 0.8, 0.9, 1.0]


def test_voc07_recall_levels_are_matlabs():
    """A recall of exactly 3/5 reaches VOCap.m's level 0.6 (1 - 0.4 in MATLAB), though it falls short of
    np.linspace's 0.6000000000000001; a recall of exactly 3/10 falls short of MATLAB's 0.30000000000000004 too."""
    assert list(DEVKIT_RECALLS_07) == MATLAB_0_01_1 and 3 / 5 < np.linspace(0, 1, 11)[6]
    recall, precision = np.array([0.2, 0.4, 0.6, 0.6]), np.array([1.0, 1.0, 0.75, 0.6])  # 5 positives
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx((5 * 1 + 2 * 0.75) / 11)  # 0.5 and 0.6
    recall, precision = np.array([0.1, 0.2, 0.3]), np.array([1.0, 1.0, 1.0])  # 10 positives, 3 found
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx(3 / 11)  # 0, 0.1, 0.2: not 0.3


def devkit_reference(images, nc, use_07):
    """Straight loop translation of VOCevaldet.m + VOCap.m (1-based loops replaced, same decisions)."""
    aps = []
    for c in range(nc):
        gts = {i: dict(bb=[b for b, k in zip(im['gt'], im['gt_cls']) if k == c],
                       diff=[d for d, k in zip(im['diff'], im['gt_cls']) if k == c]) for i, im in enumerate(images)}
        for g in gts.values():
            g['det'] = [False] * len(g['bb'])
        npos = sum(len(g['diff']) - sum(g['diff']) for g in gts.values())
        dets = [(s, i, b) for i, im in enumerate(images) for b, s, k in zip(im['det'], im['conf'], im['det_cls'])
                if k == c]
        dets.sort(key=lambda x: -x[0])
        tp, fp = [], []
        for _, i, bb in dets:
            ovmax, jmax = -np.inf, -1
            for j, bbgt in enumerate(gts[i]['bb']):
                iw = min(bb[2], bbgt[2]) - max(bb[0], bbgt[0])
                ih = min(bb[3], bbgt[3]) - max(bb[1], bbgt[1])
                if iw > 0 and ih > 0:
                    ua = (bb[2] - bb[0]) * (bb[3] - bb[1]) + (bbgt[2] - bbgt[0]) * (bbgt[3] - bbgt[1]) - iw * ih
                    if iw * ih / ua > ovmax:
                        ovmax, jmax = iw * ih / ua, j
            t = f = 0
            if ovmax >= 0.5:
                if not gts[i]['diff'][jmax]:
                    if not gts[i]['det'][jmax]:
                        t, gts[i]['det'][jmax] = 1, True
                    else:
                        f = 1
            else:
                f = 1
            tp.append(t)
            fp.append(f)
        if npos == 0:
            aps.append(np.nan)
            continue
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec, prec = tp / npos, tp / np.maximum(tp + fp, np.finfo(float).eps)
        if use_07:
            aps.append(sum(max([p for p, r in zip(prec, rec) if r >= t], default=0) for t in MATLAB_0_01_1) / 11)
        else:
            mrec, mpre = [0, *rec, 1], [0, *prec, 0]
            for k in range(len(mpre) - 2, -1, -1):
                mpre[k] = max(mpre[k], mpre[k + 1])
            aps.append(sum((mrec[k] - mrec[k - 1]) * mpre[k] for k in range(1, len(mrec)) if mrec[k] != mrec[k - 1]))
    return np.array(aps)


@pytest.mark.parametrize('rule', ['voc07', 'voc12'])
def test_voc_ap_equals_devkit_loop(rule):
    rng = np.random.default_rng(7)
    images = []
    for _ in range(12):
        m = rng.integers(0, 5)
        xy = rng.uniform(0, 300, (m, 2))
        gt = np.c_[xy, xy + rng.uniform(20, 120, (m, 2))]
        gt_cls, diff = rng.integers(0, 3, m), rng.random(m) < 0.25
        jitter = gt[rng.integers(0, m, 8)] + rng.normal(0, 12, (8, 4)) if m else np.zeros((0, 4))
        xy = rng.uniform(0, 300, (3, 2))
        det = np.r_[jitter, np.c_[xy, xy + 50]]
        det_cls = np.r_[gt_cls[rng.integers(0, m, len(jitter))] if m else [], rng.integers(0, 3, 3)].astype(int)
        images.append(dict(gt=gt.tolist(), gt_cls=gt_cls.tolist(), diff=diff.tolist(), det=det.tolist(),
                           conf=rng.random(len(det)).tolist(), det_cls=det_cls.tolist()))
    ev = DetectionEvaluator(nc=3, voc_rule=rule)
    for im in images:
        ev.add_image(np.c_[im['det'], im['conf'], im['det_cls']], GroundTruth(im['gt'], im['gt_cls'],
                                                                               difficult=im['diff']))
    ours, _ = ev.voc_ap()
    ref = devkit_reference(images, 3, use_07=rule == 'voc07')
    assert np.allclose(ours, ref, equal_nan=True) and np.isfinite(ref).sum() >= 2


def test_voc_iou_pixel_offset():
    assert voc_iou([[0, 0, 9, 9]], [[0, 0, 9, 9]], pixel_offset=1)[0, 0] == 1.0
    assert voc_iou([[1, 1, 10, 10]], [[1, 1, 10, 5]], pixel_offset=1)[0, 0] == pytest.approx(50 / 100)
    with pytest.raises(ValueError, match='voc07'):
        DetectionEvaluator(nc=1, voc_rule='voc2007')
    with pytest.raises(ValueError, match='voc_rule'):
        DetectionEvaluator(nc=1).voc_ap()


def test_ap_per_class_pr_at_max_f1():
    # class 0: TP TP FP FP over 2 targets -> best F1 near conf 0.8 where both TPs are in: P ~1, R 1
    tp = np.array([1, 1, 0, 0], bool)[:, None]
    res = ap_per_class(tp, np.array([0.9, 0.8, 0.3, 0.2]), np.zeros(4), np.zeros(2))
    assert res.classes.tolist() == [0] and res.n_targets.tolist() == [2]
    assert res.ap[0, 0] == pytest.approx(1.0) and res.r[0] == pytest.approx(1.0)
    assert res.p[0] == pytest.approx(1.0, abs=0.05) and res.f1[0] == pytest.approx(1.0, abs=0.03)
    assert res.f1_curve.shape == (1, 1000) and res.pr_curve[0, 0] == 1.0
    # F1 vs confidence: 2/3 below conf 0.2 (P 1/2, R 1), ~1 around 0.5, 0 above 0.9
    assert res.f1_curve[0, 100] == pytest.approx(2 / 3) and res.f1_curve[0, 950] == 0.0
    # classes come only from targets; a class with targets but no detections scores 0
    res = ap_per_class(tp, np.array([0.9, 0.8, 0.3, 0.2]), np.zeros(4), np.array([0, 0, 2]))
    assert res.classes.tolist() == [0, 2] and res.ap[1].tolist() == [0.0]


def test_ignored_detections_leave_curve_unchanged():
    tp = np.array([[1], [0], [1]], bool)
    ign = np.array([[0], [1], [0]], bool)
    res = ap_per_class(tp, np.array([0.9, 0.8, 0.7]), np.zeros(3), np.zeros(2), ignored=ign)
    assert res.ap[0, 0] == 1.0
    assert ap_per_class(tp, np.array([0.9, 0.8, 0.7]), np.zeros(3), np.zeros(2)).ap[0, 0] < 1.0


def test_max_dets_per_class_truncation():
    gt = GroundTruth([BOX_A], [0])
    dets = [EMPTY + [0.9 - i * 1e-3, 0] for i in range(100)] + [BOX_A + [0.5, 0]]  # TP is the 101st
    ev = evaluate(dets, gt)
    assert ev.results().map50 > 0 and ev.coco_map() == (0.0, 0.0)
    assert rank_within_class([0, 1, 0, 0, 1]).tolist() == [0, 0, 1, 2, 1]


def test_fitness_weights():
    assert fitness([0.5, 0.5, 0.6, 0.4]) == pytest.approx(0.06 + 0.36)
    assert fitness(np.array([[0, 0, 1, 0, 9, 9, 9], [0, 0, 0, 1, 0, 0, 0]])).tolist() == pytest.approx([0.1, 0.9])


def test_confusion_matrix_counts():
    cm = ConfusionMatrix(nc=2, conf=0.25, iou_thres=0.45)
    dets = np.array([BOX_A + [0.9, 0], BOX_B + [0.8, 0], EMPTY + [0.7, 1], EMPTY + [0.1, 1]])
    labels = np.array([[0] + BOX_A, [1] + BOX_B, [1, 400, 400, 450, 450]])
    cm.process_batch(dets, labels)
    expected = np.zeros((3, 3), int)
    expected[0, 0] = 1  # correct
    expected[0, 1] = 1  # class 1 box called class 0
    expected[1, 2] = 1  # class 1 on background (the 0.1 detection is below conf)
    expected[2, 1] = 1  # missed class 1 box
    assert (cm.matrix == expected).all()
    tp, fp = cm.tp_fp()
    assert tp.tolist() == [1, 0] and fp.tolist() == [1, 1]
    cm.process_batch(np.zeros((0, 6)), labels[:1])
    assert cm.matrix[2, 0] == 1

"""Our COCO-rule evaluation against pycocotools on the same predictions (utils/eval/coco.py, utils/eval/metrics.py)."""
import json
from pathlib import Path

import numpy as np
import pytest

from utils.boxes import xywhn2xyxy
from utils.eval.coco import (category_ids_for, coco80_to_coco91, detections_to_results, ground_truth_from_coco,
                        ground_truth_to_coco, run_cocoeval, write_json)
from utils.data.label_scan import image_id_from_path
from utils.eval.metrics import DetectionEvaluator, GroundTruth

COCO64 = Path(__file__).resolve().parents[1] / '../shared/data/coco64dev'
ANNO = COCO64 / 'annotations/instances_train2017.json'
needs_coco64 = pytest.mark.skipif(not ANNO.is_file(), reason='../shared/data/coco64dev not present')


def fake_detections(gt, rng, nc=80):
    """Jittered copies of the ground truth (some with a wrong class), boxes in empty space, and a few on
    crowd regions: a fixed but realistic mix of TPs, FPs, duplicates and ignored detections."""
    dets = []
    for box, c in zip(gt.boxes, gt.cls):
        w, h = box[2] - box[0], box[3] - box[1]
        for _ in range(rng.integers(0, 4)):
            jittered = box + rng.normal(0, 0.08, 4) * [w, h, w, h]
            dets.append([*jittered, rng.random(), c if rng.random() < 0.8 else rng.integers(0, nc)])
    xy = rng.uniform(0, 400, (15, 2))
    for (x, y), wh, c in zip(xy, rng.uniform(5, 200, (15, 2)), rng.integers(0, nc, 15)):
        dets.append([x, y, x + wh[0], y + wh[1], rng.random() * 0.5, c])
    return np.array(dets, float).reshape(-1, 6)


def evaluate_both(gts, tmp_path, anno_json, category_ids, seed=0):
    rng = np.random.default_rng(seed)
    ev, results = DetectionEvaluator(nc=80), []
    for image_id, gt in sorted(gts.items()):
        det = fake_detections(gt, rng)
        if image_id == min(gts):  # 120 detections of one class in one image: maxDets=100 must cut them
            det = np.r_[det, np.c_[rng.uniform(0, 300, (120, 2)), rng.uniform(320, 600, (120, 2)),
                                   rng.random(120), np.zeros(120)]]
        ev.add_image(det, gt)
        results += detections_to_results(det, image_id, category_ids)
    pred_json = write_json(results, tmp_path / 'predictions.json')
    map_coco, map50_coco, stats = run_cocoeval(anno_json, pred_json, verbose=False)
    return ev, (map50_coco, map_coco), stats


@needs_coco64
def test_agrees_with_pycocotools_on_official_json(tmp_path):
    category_ids = category_ids_for(80, ANNO)
    gts = ground_truth_from_coco(ANNO, category_ids)
    assert sum(g.crowd.sum() for g in gts.values()) == 7 and sum(len(g.cls) for g in gts.values()) == 430
    # fake_detections jitters every box, crowd regions included, so crowd handling is exercised too
    ev, (map50_coco, map_coco), stats = evaluate_both(gts, tmp_path, ANNO, category_ids)
    map50, map_ = ev.coco_map()
    assert 0.2 < map_coco < 0.6  # a meaningful, non-degenerate score
    assert abs(map_ - map_coco) < 1e-6 and abs(map50 - map50_coco) < 1e-6
    # the headline AP differs from ours over all detections (300/image kept): the comparison needs maxDets
    assert ev.results().map != map_coco


@needs_coco64
def test_crowd_detections_are_ignored_like_pycocotools(tmp_path):
    category_ids = category_ids_for(80, ANNO)
    gts = {i: g for i, g in ground_truth_from_coco(ANNO, category_ids).items() if g.crowd.any()}
    ev, results = DetectionEvaluator(nc=80), []
    for image_id, gt in sorted(gts.items()):
        x1, y1, x2, y2 = gt.boxes[gt.crowd][0]
        inside = [x1 + 0.2 * (x2 - x1), y1 + 0.2 * (y2 - y1), x1 + 0.4 * (x2 - x1), y1 + 0.5 * (y2 - y1)]
        det = np.c_[np.r_[gt.boxes, [inside, inside]], np.linspace(0.9, 0.1, len(gt.cls) + 2),
                    np.r_[gt.cls, gt.cls[gt.crowd][:1], gt.cls[gt.crowd][:1]]]
        ev.add_image(det, gt)
        results += detections_to_results(det, image_id, category_ids)
    map_coco, map50_coco, _ = run_cocoeval(ANNO, write_json(results, tmp_path / 'p.json'), image_ids=list(gts),
                                           verbose=False)
    assert ev.coco_map() == pytest.approx((map50_coco, map_coco), abs=1e-9)
    assert map_coco == pytest.approx(1.0)  # every regular box found; crowd detections cost nothing


@needs_coco64
def test_agrees_with_pycocotools_on_json_built_from_yolo_labels(tmp_path):
    meta = {im['id']: im for im in json.loads(ANNO.read_text())['images']}
    gts, images = {}, []
    for image_file in sorted((COCO64 / 'images/train2017').glob('*.jpg')):
        image_id = image_id_from_path(image_file)
        label_file = COCO64 / 'labels/train2017' / f'{image_file.stem}.txt'
        rows = np.loadtxt(label_file, ndmin=2) if label_file.is_file() else np.zeros((0, 5))  # 2 have none
        h, w = meta[image_id]['height'], meta[image_id]['width']
        gts[image_id] = GroundTruth(xywhn2xyxy(rows[:, 1:], w, h), rows[:, 0])
        images.append((image_id, image_file.name, (h, w), gts[image_id]))
    assert len(gts) == 64 and sum(len(g.cls) for g in gts.values()) == 423  # the crowd boxes are not in labels
    anno = write_json(ground_truth_to_coco(images, [str(i) for i in range(80)], coco80_to_coco91()),
                      tmp_path / 'gt.json')
    ev, (map50_coco, map_coco), _ = evaluate_both(gts, tmp_path, anno, coco80_to_coco91(), seed=1)
    assert ev.coco_map() == pytest.approx((map50_coco, map_coco), abs=1e-6)


def test_category_map_and_image_ids():
    ids = coco80_to_coco91()
    assert len(ids) == 80 and ids[0] == 1 and ids[11] == 13 and ids[-1] == 90  # person, stop sign, toothbrush
    assert category_ids_for(3) == [0, 1, 2] and category_ids_for(80) == ids
    assert image_id_from_path('/data/images/000000000139.jpg') == 139
    assert image_id_from_path('x/bus.jpg') == 'bus'
    res = detections_to_results(np.array([[10., 20., 40., 60., 0.5, 11]]), 139, ids)
    assert res == [{'image_id': 139, 'category_id': 13, 'bbox': [10., 20., 30., 40.], 'score': 0.5}]


def test_cocoeval_small_case_and_errors(tmp_path):
    gt = GroundTruth([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 1])
    anno = write_json(ground_truth_to_coco([(1, 'a.jpg', (50, 50), gt)], ['a', 'b'], [1, 2]), tmp_path / 'gt.json')
    assert json.loads(anno.read_text())['annotations'][0]['id'] == 1  # COCOeval treats id 0 as "unmatched"
    det = np.array([[0, 0, 10, 10, 0.9, 0], [20, 20, 40, 40, 0.8, 1]], float)
    preds = write_json(detections_to_results(det, 1, [1, 2]), tmp_path / 'p.json')
    map_, map50, stats = run_cocoeval(anno, preds, verbose=False)
    assert map_ == pytest.approx(1.0) and map50 == pytest.approx(1.0) and len(stats) == 12
    assert run_cocoeval(anno, write_json([], tmp_path / 'empty.json'), verbose=False)[:2] == (0.0, 0.0)
    with pytest.raises(ValueError, match='not in'):
        run_cocoeval(anno, write_json(detections_to_results(det, 7, [1, 2]), tmp_path / 'bad.json'))
    with pytest.raises(FileNotFoundError, match='missing.json'):
        run_cocoeval(anno, tmp_path / 'missing.json')
    (tmp_path / 'broken.json').write_text('{')
    with pytest.raises(ValueError, match='broken.json: not valid JSON'):
        run_cocoeval(anno, tmp_path / 'broken.json')


@needs_coco64
def test_tied_scores_are_ordered_by_image_id_like_pycocotools(tmp_path):
    """fp16 models give many equal scores; COCOeval orders equal scores by image id, whatever order we saw."""
    category_ids = category_ids_for(80, ANNO)
    gts = ground_truth_from_coco(ANNO, category_ids)
    rng = np.random.default_rng(3)
    keyed, unkeyed, results = DetectionEvaluator(nc=80), DetectionEvaluator(nc=80), []
    for image_id in sorted(gts, reverse=True):  # loader order (here reversed) differs from id order
        det = fake_detections(gts[image_id], rng)
        det[:, 4] = np.round(det[:, 4], 1)  # heavy ties
        keyed.add_image(det, gts[image_id], key=image_id)
        unkeyed.add_image(det, gts[image_id])
        results += detections_to_results(det, image_id, category_ids)
    map_coco, map50_coco, _ = run_cocoeval(ANNO, write_json(results, tmp_path / 'p.json'), verbose=False)
    assert keyed.coco_map() == pytest.approx((map50_coco, map_coco), abs=1e-9)
    assert unkeyed.coco_map() != pytest.approx((map50_coco, map_coco), abs=1e-9)  # the test can tell

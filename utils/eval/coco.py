"""Bridge to the official COCO evaluator (pycocotools): results JSON, ground-truth JSON, COCOeval.

Predictions are written in the COCO results format ``{image_id, category_id, bbox [x, y, w, h], score}``
with full float precision, so COCOeval sees exactly the boxes our own evaluator matched.
"""
import contextlib
import io
import json
from pathlib import Path

import numpy as np

from utils.eval.metrics import GroundTruth
from utils.errors import InputError


def coco80_to_coco91():
    """COCO category ids (1..90 with gaps) of the 80 detection classes, in YOLO class order."""
    missing = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}  # ids never used by the 2017 detection set
    return [i for i in range(1, 91) if i not in missing]


def category_ids_for(nc, anno_json=None):
    """Category id of each of our classes: the official JSON's sorted ids when it has ``nc`` categories,
    the standard 80->91 map for 80 classes, else the class index itself."""
    if anno_json is not None:
        ids = sorted(c['id'] for c in _read_json(anno_json).get('categories', []))
        if len(ids) == nc:
            return ids
    return coco80_to_coco91() if nc == 80 else list(range(nc))


def detections_to_results(det, image_id, category_ids):
    """(n, 6) [x1, y1, x2, y2, conf, cls] in original pixels -> list of COCO result dicts."""
    det = np.asarray(det, np.float64).reshape(-1, 6)
    return [{'image_id': image_id, 'category_id': int(category_ids[int(c)]),
             'bbox': [x1, y1, x2 - x1, y2 - y1], 'score': s}
            for x1, y1, x2, y2, s, c in det.tolist()]


def ground_truth_to_coco(images, names, category_ids):
    """Build a COCO instances dict from our labels. ``images``: (image_id, file_name, (h, w), GroundTruth)."""
    out = {'images': [], 'annotations': [],
           'categories': [{'id': int(i), 'name': str(n)} for i, n in zip(category_ids, names)]}
    for image_id, file_name, (h, w), gt in images:
        out['images'].append({'id': image_id, 'file_name': str(file_name), 'height': int(h), 'width': int(w)})
        for box, c, crowd in zip(gt.boxes.tolist(), gt.cls.tolist(), gt.crowd.tolist()):
            x1, y1, x2, y2 = box
            out['annotations'].append({'id': len(out['annotations']) + 1,  # ids start at 1: COCOeval needs >0
                                       'image_id': image_id, 'category_id': int(category_ids[c]),
                                       'bbox': [x1, y1, x2 - x1, y2 - y1], 'area': (x2 - x1) * (y2 - y1),
                                       'iscrowd': int(crowd)})
    return out


def ground_truth_from_coco(anno_json, category_ids):
    """Official instances JSON -> {image_id: GroundTruth} in our class indices (crowd flags kept)."""
    data = _read_json(anno_json)
    to_cls = {cid: i for i, cid in enumerate(category_ids)}
    per_image = {img['id']: ([], [], []) for img in data['images']}
    for a in data['annotations']:
        if a['category_id'] not in to_cls:
            continue
        x, y, w, h = a['bbox']
        boxes, cls, crowd = per_image[a['image_id']]
        boxes.append([x, y, x + w, y + h])
        cls.append(to_cls[a['category_id']])
        crowd.append(bool(a.get('iscrowd', 0)))
    return {i: GroundTruth(b, c, crowd=k) for i, (b, c, k) in per_image.items()}


def write_json(obj, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w') as f:
        json.dump(obj, f)
    return path


def run_cocoeval(anno_json, pred_json, image_ids=None, verbose=True):
    """COCOeval (bbox) of a results file against an instances file. Returns (mAP50-95, mAP50, stats[12]).

    ``image_ids`` restricts evaluation to the images actually validated. The standard summary is printed
    when ``verbose``; pycocotools' progress chatter is suppressed.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise InputError(f'pycocotools is needed to evaluate {pred_json}: pip install pycocotools') from e
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(anno_json))
    preds = _read_json(pred_json)
    if not preds:  # loadRes cannot read an empty list; nothing detected means AP 0
        return 0.0, 0.0, np.zeros(12)
    unknown = {p['image_id'] for p in preds} - set(gt.getImgIds())
    if unknown:
        raise InputError(f'{pred_json}: image ids {sorted(unknown, key=str)[:5]} are not in {anno_json}')
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        ev = COCOeval(gt, gt.loadRes(str(pred_json)), 'bbox')
        if image_ids is not None:
            ev.params.imgIds = sorted(image_ids, key=str)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if verbose:
        print('\n'.join(line for line in summary.getvalue().splitlines() if line.startswith(' Average')))
    return float(ev.stats[0]), float(ev.stats[1]), ev.stats


def _read_json(path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: COCO JSON not found')
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f'{path}: not valid JSON ({e})') from None


def add_crowd_regions(gt, official):
    """``gt`` plus the crowd boxes of ``official`` (a GroundTruth from the instances JSON), for labels that
    lost them (YOLO txt files carry no iscrowd): pycocotools ignores detections there, so must we."""
    if official is None or not official.crowd.any() or gt.crowd.any():
        return gt
    k = official.crowd
    return GroundTruth(np.r_[gt.boxes, official.boxes[k]], np.r_[gt.cls, official.cls[k]],
                       crowd=np.r_[gt.crowd, k[k]], difficult=np.r_[gt.difficult, np.zeros(int(k.sum()), bool)])

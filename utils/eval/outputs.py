"""Observers of an evaluation (see utils/eval/evaluator.py) that write files: --save-txt labels, the COCO results
JSON with its pycocotools comparison (--save-json), and the first batches drawn with labels and predictions."""
from dataclasses import replace
from pathlib import Path

import torch

from utils.boxes import xyxy2xywh, yolo_label_lines
from utils.runs import UniqueStems


class LabelWriter:
    """--save-txt: per image ``labels/<stem>.txt`` with ``cls cx cy w h [conf]`` normalised to the original."""

    def __init__(self, labels_dir, save_conf=False):
        self.labels_dir, self.save_conf = Path(labels_dir), save_conf
        self.labels_dir.mkdir(parents=True, exist_ok=True)
        self.stem = UniqueStems()  # unique when two folders hold the same file name

    def on_image(self, meta, det, gt):
        lines = yolo_label_lines(det, meta.orig_hw, self.save_conf)
        path = self.labels_dir / f'{self.stem(meta.path, Path(meta.path).stem)}.txt'
        path.write_text(''.join(line + '\n' for line in lines))


class BatchPlotter:
    """val_batch{i}_labels.jpg and val_batch{i}_pred.jpg for the first ``n`` batches."""

    def __init__(self, save_dir, names, n=3):
        self.save_dir, self.names, self.n = Path(save_dir), names, n

    def on_batch(self, batch_i, imgs, targets, paths, metas, dets):
        if batch_i >= self.n:
            return
        from utils.eval.plots import plot_images  # lazy: only when plotting
        plot_images(imgs, targets, paths, self.save_dir / f'val_batch{batch_i}_labels.jpg', self.names)
        rows = [torch.cat((torch.full((len(d), 1), i, device=d.device), d[:, 5:6], xyxy2xywh(d[:, :4]), d[:, 4:5]), 1)
                for i, d in enumerate(dets)]
        plot_images(imgs, torch.cat(rows, 0) if rows else torch.zeros(0, 7), paths,
                    self.save_dir / f'val_batch{batch_i}_pred.jpg', self.names)


class CocoJson:
    """--save-json: collects detections as COCO results, then compares pycocotools with our own numbers.

    ``anno_json``: the split's official instances JSON; without one (or with --single-cls) a ground-truth JSON
    is built from the labels, so COCOeval still runs."""

    def __init__(self, save_dir, names, anno_json=None):
        self.save_dir, self.names, self.anno_json = Path(save_dir), names, anno_json
        from utils.eval import coco  # lazy: the COCO bridge only with --save-json
        self.coco = coco
        self.category_ids = coco.category_ids_for(len(names), anno_json)
        self.results, self.images = [], []

    def on_image(self, meta, det, gt):
        self.results += self.coco.detections_to_results(det, meta.image_id, self.category_ids)
        self.images.append((meta.image_id, Path(meta.path).name, meta.orig_hw, gt))

    def compare(self, result, stem='model'):
        """Write ``<stem>_predictions.json``, run pycocotools, print its mAP beside ours; returns ``result`` with
        the pycocotools fields filled in."""
        pred_json = self.coco.write_json(self.results, self.save_dir / f'{stem}_predictions.json')
        anno = self.anno_json
        if anno is None:
            labels = self.coco.ground_truth_to_coco(self.images, self.names, self.category_ids)
            anno = self.coco.write_json(labels, self.save_dir / 'ground_truth_from_labels.json')
        print(f'\nEvaluating pycocotools mAP on {pred_json} against {anno}')
        coco_map, coco_map50, _ = self.coco.run_cocoeval(anno, pred_json, image_ids=[i for i, *_ in self.images])
        print(f"{'':>10s}{'ours':>10s}{'ours@COCO':>12s}{'pycocotools':>13s}   (ours@COCO: same rules as COCOeval, "
              f'maxDets=100 per image and class)')
        print(f"{'mAP50-95':>10s}{result.map:10.4f}{result.coco_rules_map:12.4f}{coco_map:13.4f}")
        print(f"{'mAP50':>10s}{result.map50:10.4f}{result.coco_rules_map50:12.4f}{coco_map50:13.4f}")
        if any(gt.difficult.any() for *_, gt in self.images):
            print('note: pycocotools has no "difficult" flag, so it counts difficult boxes as positives that ours '
                  'ignore (VOC rule); its column differs for that reason')
        return replace(result, pycocotools_map=coco_map, pycocotools_map50=coco_map50)

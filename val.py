"""Validate a trained YOLOv5 model: P, R, mAP50, mAP50-95 per class, speed, COCO and VOC official metrics.

Usage:
    python val.py --weights runs/train/exp/weights/best.pt --data data/coco128.yaml --imgsz 640
    python val.py --weights best.pt --data ../shared/data/coco64dev/coco64dev.yaml --save-json  # + pycocotools
    python val.py --weights best.pt --data data/voc.yaml        # + VOC devkit AP50 (eval: voc07 / voc12)
    python val.py --weights best.pt --data data/coco128.yaml --task speed   # ms per image

From Python (train.py does this every epoch):
    (p, r, map50, map, *losses), maps, times = val.run(data=data_dict, model=ema_model, dataloader=loader)
"""
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from utils.augment import check_imgsz
from utils.boxes import non_max_suppression, scale_boxes, xywhn2xyxy, xyxy2xywh, yolo_label_lines
from utils.backends import load_backend
from utils.cli import ArgumentParser, run_cli
from utils.coco import (add_crowd_regions, assign_image_ids, category_ids_for, detections_to_results,
                        ground_truth_from_coco, ground_truth_to_coco, image_id_from_path, run_cocoeval, write_json)
from utils.datasets import check_dataset, create_dataloader
from utils.metrics import ConfusionMatrix, DetectionEvaluator, GroundTruth
from utils.runs import UniqueStems, increment_path, select_device

HEADER = ('%22s' + '%11s' * 6) % ('Class', 'Images', 'Instances', 'P', 'R', 'mAP50', 'mAP50-95')
ROW = '%22s' + '%11i' * 2 + '%11.3g' * 4


def resolve_data(data):
    """A data dict already resolved by ``check_dataset`` is used as is; a YAML path (or raw dict) is resolved."""
    if isinstance(data, dict) and {'format', 'eval', 'names', 'nc', 'annotations', 'yaml_file'} <= set(data):
        return data
    return check_dataset(data)


def build_dataloader(data, task, imgsz, batch_size, stride, workers, single_cls, rect=True):
    """The split's loader; rectangular batches (pad 0.5) for accuracy, square ones for timing (and for exports
    of a fixed size)."""
    split = 'val' if task == 'speed' else task
    if not data.get(split):
        raise ValueError(f"{data.get('yaml_file') or 'data'}: no '{split}' images to validate on")
    return create_dataloader(data[split], imgsz, batch_size, stride, rect=rect and task != 'speed',
                             pad=0.0 if task == 'speed' else 0.5, workers=workers, single_cls=single_cls,
                             data=data, prefix=f'{split}: ')[0], split


def image_ground_truth(record, targets, img_shape, shape0, ratio_pad, single_cls):
    """Ground truth of one image in original pixels: from its dataset record (with difficult/crowd flags),
    else from the batch targets mapped back through the letterbox."""
    if record is not None:
        h, w = record.shape
        cls = np.zeros(len(record.cls)) if single_cls else record.cls
        return GroundTruth(xywhn2xyxy(np.asarray(record.boxes, np.float64), w, h), cls, crowd=record.crowd,
                           difficult=record.difficult)
    boxes = xywhn2xyxy(targets[:, 2:6].double(), img_shape[1], img_shape[0])
    scale_boxes(img_shape, boxes, shape0, ratio_pad)
    cls = targets[:, 1].cpu().numpy()
    return GroundTruth(boxes.cpu().numpy(), np.zeros_like(cls) if single_cls else cls)


def save_txt_labels(det, shape0, path, save_conf):
    """YOLO-format predictions ``cls cx cy w h [conf]`` normalised to the original image."""
    Path(path).write_text(''.join(line + '\n' for line in yolo_label_lines(det, shape0, save_conf)))


def timed(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter()


class Validation:
    """State of one validation pass: evaluator, timings, loss, JSON results. Kept apart from ``run`` so that
    each step is one short method."""

    def __init__(self, data, nc, names, dataloader, save_dir, single_cls, plots, save_json, anno_json):
        self.nc, self.names, self.single_cls, self.save_dir = nc, names, single_cls, save_dir
        voc_rule = data['eval'] if data.get('eval') in ('voc07', 'voc12') else None
        self.evaluator = DetectionEvaluator(nc, voc_rule=voc_rule, confusion=ConfusionMatrix(nc) if plots else None)
        records = getattr(dataloader.dataset, 'records', None) or []
        self.records = {str(r.im_file): r for r in records}
        self.image_ids = assign_image_ids(records) if anno_json is None else {}  # own GT JSON: ids must be unique
        self.anno_json = anno_json
        self.label_stem = UniqueStems()  # --save-txt names, unique when two folders hold the same file name
        self.category_ids = category_ids_for(nc, anno_json)
        use_official_crowd = anno_json is not None and data.get('format') == 'yolo'
        self.official = ground_truth_from_coco(anno_json, self.category_ids) if use_official_crowd else {}
        self.save_json, self.results, self.images = save_json, [], []
        self.seen, self.times, self.loss = 0, np.zeros(3), None

    def image_id(self, record, path):
        if str(path) in self.image_ids:
            return self.image_ids[str(path)]
        return record.image_id if record is not None and record.image_id is not None else image_id_from_path(path)

    def add_batch(self, imgs, targets, paths, shapes, preds, save_txt=None, save_conf=False):
        for si, pred in enumerate(preds):
            record = self.records.get(str(paths[si]))
            shape0, ratio_pad = shapes[si]
            gt = image_ground_truth(record, targets[targets[:, 0] == si], imgs.shape[2:], shape0, ratio_pad,
                                    self.single_cls)
            image_id = self.image_id(record, paths[si])
            gt = add_crowd_regions(gt, self.official.get(image_id))
            det = pred.detach().clone()
            if self.single_cls:
                det[:, 5] = 0
            scale_boxes(imgs.shape[2:], det[:, :4], shape0, ratio_pad)
            det = det.double().cpu().numpy()
            self.evaluator.add_image(det, gt, key=image_id)
            self.seen += 1
            if save_txt:
                stem = self.label_stem(paths[si], Path(paths[si]).stem)
                save_txt_labels(det, shape0, save_txt / f'{stem}.txt', save_conf)
            if self.save_json:
                self.results += detections_to_results(det, image_id, self.category_ids)
                self.images.append((image_id, Path(paths[si]).name, shape0, gt))

    def print_table(self, summary, verbose):
        print(HEADER)
        print(ROW % ('all', self.seen, summary.n_targets.sum(), summary.mp, summary.mr, summary.map50, summary.map))
        if summary.n_targets.sum() == 0:
            print('WARNING no labels found in this split, cannot compute metrics without labels')
        if verbose and self.nc > 1:
            res = summary.per_class
            for i, c in enumerate(res.classes):
                print(ROW % (self.names[c], summary.n_images[c], res.n_targets[i], res.p[i], res.r[i], res.ap50[i],
                             res.ap_mean[i]))

    def print_voc(self, verbose):
        ap, mean = self.evaluator.voc_ap()
        rule = self.evaluator.voc_rule
        if verbose:
            print(f"{'Class':>22s}{'VOC AP50':>11s}")
            for c in np.flatnonzero(np.isfinite(ap)):
                print(f'{self.names[c]:>22s}{ap[c]:11.4f}')
        print(f"VOC devkit AP50 ({'VOC2007 11-point' if rule == 'voc07' else 'VOC2010+ all-point'}, difficult "
              f'ignored): mAP {mean:.4f} over {int(np.isfinite(ap).sum())} classes')
        return mean

    def coco_eval(self, weights, summary):
        """Write the results JSON, run pycocotools and print its mAP beside ours."""
        pred_json = write_json(self.results, self.save_dir / f'{Path(weights or "model").stem}_predictions.json')
        anno = self.anno_json
        if anno is None:  # no official JSON: build one from the labels so COCOeval still runs
            anno = write_json(ground_truth_to_coco(self.images, self.names, self.category_ids),
                              self.save_dir / 'ground_truth_from_labels.json')
        print(f'\nEvaluating pycocotools mAP on {pred_json} against {anno}')
        coco_map, coco_map50, _ = run_cocoeval(anno, pred_json, image_ids=[i for i, *_ in self.images])
        ours_map50, ours_map = self.evaluator.coco_map()
        print(f"{'':>10s}{'ours':>10s}{'ours@COCO':>12s}{'pycocotools':>13s}   (ours@COCO: same rules as COCOeval, "
              f'maxDets=100 per image and class)')
        print(f"{'mAP50-95':>10s}{summary.map:10.4f}{ours_map:12.4f}{coco_map:13.4f}")
        print(f"{'mAP50':>10s}{summary.map50:10.4f}{ours_map50:12.4f}{coco_map50:13.4f}")
        if any(gt.difficult.any() for *_, gt in self.images):
            print('note: pycocotools has no "difficult" flag, so it counts difficult boxes as positives that ours '
                  'ignore (VOC rule); its column differs for that reason')
        return coco_map, coco_map50


def plot_batch(imgs, targets, paths, preds, save_dir, batch_i, names):
    from utils.plots import plot_images  # lazy: only when plotting
    plot_images(imgs, targets, paths, save_dir / f'val_batch{batch_i}_labels.jpg', names)
    rows = [torch.cat((torch.full((len(p), 1), i, device=p.device), p[:, 5:6], xyxy2xywh(p[:, :4]), p[:, 4:5]), 1)
            for i, p in enumerate(preds)]
    plot_images(imgs, torch.cat(rows, 0) if rows else torch.zeros(0, 7), paths,
                save_dir / f'val_batch{batch_i}_pred.jpg', names)


def load_for_val(weights, device, nc, single_cls, half):
    """Any weights file (.pt, TorchScript, ONNX, OpenVINO) as a ``utils/backends`` Backend."""
    if not weights:
        raise ValueError('--weights is required when no model is given')
    backend = load_backend(weights, device, fp16=half)
    if backend.nc != nc and not single_cls:
        raise ValueError(f'{weights}: model has {backend.nc} classes but the data has {nc}')
    return backend


def loader_size(model, imgsz):
    """(image size, rectangular batches?) for the loader: an export of a fixed size takes square batches of it."""
    if getattr(model, 'dynamic', True):
        return check_imgsz(imgsz, int(torch.as_tensor(model.stride).max()))[0], True
    h, w = model.imgsz
    if h != w:
        raise ValueError(f'{model.path}: takes {h}x{w} images (fixed at export) but val uses square ones; '
                         f're-export with a square --imgsz or --dynamic')
    if imgsz != h:
        print(f'note: {model.path.name} takes {h}x{w} images (fixed at export); validating at {h}, not {imgsz}')
    return h, False


@torch.no_grad()
def run(data, weights=None, batch_size=32, imgsz=640, conf_thres=0.001, iou_thres=0.6, max_det=300, task='val',
        device='', workers=2, single_cls=False, verbose=False, save_txt=False, save_conf=False, save_json=False,
        project='runs/val', name='exp', exist_ok=False, half=False, model=None, dataloader=None, save_dir=None,
        plots=True, compute_loss=None):
    """Validate; returns ((P, R, mAP50, mAP50-95, box_loss, obj_loss, cls_loss), maps (nc,), (pre, inf, nms) ms)."""
    if task not in ('val', 'test', 'speed'):
        raise ValueError(f"--task '{task}': expected val, test or speed")
    for flag, value, ok in (('--batch-size', batch_size, batch_size >= 1), ('--imgsz', imgsz, imgsz >= 1),
                            ('--conf-thres', conf_thres, 0 <= conf_thres <= 1),
                            ('--iou-thres', iou_thres, 0 <= iou_thres <= 1), ('--max-det', max_det, max_det >= 1)):
        if not ok:
            raise ValueError(f'{flag} {value}: out of range')
    if task == 'speed':  # YOLOv5's timing setting: realistic thresholds, nothing written
        conf_thres, iou_thres, save_json, save_txt, plots = 0.25, 0.45, False, False, False
    training = model is not None
    data = resolve_data(data)
    nc, names = (1, ['item']) if single_cls and data['nc'] != 1 else (data['nc'], list(data['names']))
    if training:
        device = next(model.parameters()).device
    else:
        device = select_device(device)
        model = load_for_val(weights, device, data['nc'], single_cls, half and device.type != 'cpu')
    save_dir = Path(save_dir) if save_dir else increment_path(Path(project) / name, exist_ok, mkdir=True)
    save_dir.mkdir(parents=True, exist_ok=True)
    labels_dir = save_dir / 'labels' if save_txt else None
    if labels_dir:
        labels_dir.mkdir(parents=True, exist_ok=True)
    split = task if task != 'speed' else 'val'
    if dataloader is None:
        size, rect = loader_size(model, imgsz)
        dataloader, split = build_dataloader(data, task, size, batch_size, int(torch.as_tensor(model.stride).max()),
                                             workers, single_cls, rect)
    official = data.get('eval') == 'coco' or save_json
    anno_json = None if single_cls or not official else (data.get('annotations') or {}).get(split)  # 1 class: ours
    state = Validation(data, nc, names, dataloader, save_dir, single_cls, plots, save_json, anno_json)
    was_training = model.training if training else None  # a loaded Backend has no training mode
    if training:
        model.eval()
    try:
        evaluate_batches(model, dataloader, state, device, conf_thres, iou_thres, max_det,
                         half and training and device.type != 'cpu', compute_loss, plots, training, labels_dir,
                         save_conf)
    finally:
        if training:
            model.train(was_training)
    return report(state, verbose or (not training and nc < 50), training, weights, plots, save_json,
                  len(dataloader), task, imgsz)


def evaluate_batches(model, dataloader, state, device, conf_thres, iou_thres, max_det, half, compute_loss, plots,
                     training, labels_dir, save_conf):
    bar = tqdm(dataloader, desc=HEADER, bar_format='{l_bar}{bar:10}{r_bar}', disable=training)
    for batch_i, (imgs, targets, paths, shapes) in enumerate(bar):
        t0 = timed(device)
        imgs = imgs.to(device, non_blocking=True).float() / 255
        targets = targets.to(device)
        t1 = timed(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=half):
            out = model(imgs)  # training: (decoded, raw maps) of the nn.Module; a Backend: decoded only
        out, train_out = out if isinstance(out, tuple) else (out, None)
        t2 = timed(device)
        if compute_loss is not None:
            items = compute_loss([x.float() for x in train_out], targets)[1].detach()
            state.loss = items if state.loss is None else state.loss + items
        preds = non_max_suppression(out.float(), conf_thres, iou_thres, multi_label=True,
                                    agnostic=state.single_cls, max_det=max_det)
        t3 = timed(device)
        state.times += (t1 - t0, t2 - t1, t3 - t2)
        state.add_batch(imgs, targets, paths, shapes, preds, labels_dir, save_conf)
        if plots and batch_i < 3:
            plot_batch(imgs, targets, paths, preds, state.save_dir, batch_i, state.names)


def report(state, verbose, training, weights, plots, save_json, n_batches, task, imgsz):
    summary = state.evaluator.results()
    state.print_table(summary, verbose)
    if state.evaluator.voc_rule:
        state.print_voc(verbose)
    times = tuple(t / max(state.seen, 1) * 1e3 for t in state.times)
    if not training:
        print(f'Speed: {times[0]:.1f}ms pre-process, {times[1]:.1f}ms inference, {times[2]:.1f}ms NMS per image '
              f'at imgsz {imgsz}' + (f' ({sum(times):.1f}ms total)' if task == 'speed' else ''))
    if plots:
        from utils.plots import plot_ap_curves, plot_confusion_matrix
        plot_ap_curves(summary.per_class, state.names, state.save_dir)
        plot_confusion_matrix(state.evaluator.confusion.matrix, state.names, state.save_dir / 'confusion_matrix.png')
    if save_json:
        state.coco_eval(weights, summary)
    if not training:
        print(f'Results saved to {state.save_dir}')
    loss = (state.loss.cpu() / n_batches).tolist() if state.loss is not None else [0.0, 0.0, 0.0]
    return (summary.mp, summary.mr, summary.map50, summary.map, *loss), summary.maps, times


def parse_opt(argv=None):
    p = ArgumentParser(description='Validate a YOLOv5 model on a dataset.')
    p.add_argument('--data', default='data/coco128.yaml', help='dataset YAML')
    p.add_argument('--weights', help='.pt checkpoint, .torchscript, .onnx or OpenVINO folder')
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--imgsz', '--img', '--img-size', type=int, default=640, help='inference size (pixels)')
    p.add_argument('--conf-thres', type=float, default=0.001)
    p.add_argument('--iou-thres', type=float, default=0.6, help='NMS IoU threshold')
    p.add_argument('--max-det', type=int, default=300, help='maximum detections per image')
    p.add_argument('--task', default='val', choices=['val', 'test', 'speed'])
    p.add_argument('--device', default='', help="cuda device, i.e. 0 or cpu")
    p.add_argument('--workers', type=int, default=2, help='dataloader workers')
    p.add_argument('--single-cls', action='store_true', help='treat as single-class dataset')
    p.add_argument('--verbose', action='store_true', help='report mAP by class')
    p.add_argument('--save-txt', action='store_true', help='save results to *.txt')
    p.add_argument('--save-conf', action='store_true', help='save confidences in --save-txt labels')
    p.add_argument('--save-json', action='store_true', help='save a COCO results JSON and run pycocotools')
    p.add_argument('--project', default='runs/val')
    p.add_argument('--name', default='exp')
    p.add_argument('--exist-ok', action='store_true', help='existing project/name ok, do not increment')
    p.add_argument('--half', action='store_true', help='FP16 inference (CUDA only)')
    return p.parse_args(argv)


def main(argv=None):
    run_cli(run, parse_opt(argv))


if __name__ == '__main__':
    main()

"""Evaluation as one function: ``evaluate(model, loader, config) -> EvalResult``, used by val.py and the trainer.

    config = EvalConfig.for_data(data)               # nc and VOC rule from a check_dataset dict
    result = evaluate(model, loader, config, compute_loss=loss)
    result.map50, result.map, result.maps, result.box_loss, result.speed.inference ...

The loader yields ``(imgs uint8 BCHW, targets (n, 6), paths, metas)`` (see utils/data/datasets.py); ground truth is read
from ``loader.dataset.records[meta.index]`` and predictions are mapped back to original pixels with the meta's
gain and pad, so every number is computed in original-image pixels, as pycocotools and the VOC devkit do.

Two seams for callers that are not a PyTorch model on its own classes:

- ``model`` may be any callable mapping a float batch (B, 3, H, W) in [0, 1] to decoded predictions
  (B, N, 5 + classes) [cx, cy, w, h, obj, cls...] in input pixels, or to a tuple whose first item is that
  (an exported ONNX / OpenVINO model wrapped in a function). Only a ``torch.nn.Module`` is switched to eval mode
  and back, autocast in FP16 (``config.half``) and given ``compute_loss`` (which needs its raw maps).
- ``postprocess(dets, metas) -> dets`` runs after NMS on the per-image (n, 6) [x1, y1, x2, y2, conf, cls]
  tensors (input pixels): e.g. merge the predictions of several checkpoint classes into one data class and
  suppress duplicates with class-aware NMS. Classes it returns must be data classes (< ``config.nc``).

``observers`` see every batch and image without changing the numbers: an object with ``on_batch(batch_i, imgs,
targets, paths, metas, dets)`` and/or ``on_image(meta, det, gt)`` (det as numpy in original pixels, gt a
``GroundTruth``); val.py's --save-txt, --save-json and batch plots are such observers (utils/eval/outputs.py).
"""
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from utils.boxes import non_max_suppression, scale_boxes, xywhn2xyxy
from utils.eval.metrics import APResult, ConfusionMatrix, DetectionEvaluator, GroundTruth


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how. ``nc``: classes of the data (1 with single_cls)."""
    nc: int
    conf_thres: float = 0.001
    iou_thres: float = 0.6
    max_det: int = 300
    single_cls: bool = False  # every prediction and label counts as class 0; NMS is class-agnostic
    half: bool = False  # FP16 autocast of a torch model on CUDA
    voc_rule: str = None  # 'voc07' / 'voc12': also the VOC devkit AP50
    coco_rules: bool = False  # also our mAP under COCOeval's 100-detections-per-image-and-class rule
    confusion: bool = False  # also a confusion matrix
    crowd_json: Path = None  # official instances JSON whose crowd regions join label-file ground truth
    progress: str = None  # progress-bar description; None: no bar

    @classmethod
    def for_data(cls, data, single_cls=False, official_json=None, **options):
        """The config for a ``check_dataset`` dict: its class count, VOC rule and, for YOLO-txt labels checked
        against an official JSON, that JSON's crowd regions (labels files carry no iscrowd)."""
        nc = 1 if single_cls else data['nc']
        voc_rule = data['eval'] if data.get('eval') in ('voc07', 'voc12') else None
        crowd = official_json if data.get('format') == 'yolo' else None
        return cls(nc, single_cls=single_cls, voc_rule=voc_rule, crowd_json=crowd, **options)


def official_json(data, split, single_cls=False, save_json=False):
    """The split's official instances JSON when COCO rules apply (eval: coco, or --save-json), else None.
    With single_cls the JSON's classes no longer match, so None."""
    if single_cls or not (data.get('eval') == 'coco' or save_json):
        return None
    return (data.get('annotations') or {}).get(split)


@dataclass(frozen=True)
class Speed:
    """Milliseconds per image."""
    preprocess: float
    inference: float
    nms: float

    @property
    def total(self):
        return self.preprocess + self.inference + self.nms


@dataclass(frozen=True)
class EvalResult:
    """Everything one evaluation measured. Means are over classes with ground truth; ``maps`` (nc,) gives
    classes without ground truth the overall mAP50-95 (YOLOv5's convention)."""
    p: float  # precision at the confidence of the best mean F1
    r: float  # recall there
    map50: float
    map: float  # mAP50-95
    maps: np.ndarray  # (nc,) mAP50-95 per class
    per_class: APResult  # rows for classes with ground truth: p, r, ap (k, 10 IoUs), curves
    instances: np.ndarray  # (nc,) counted ground-truth boxes per class
    images_per_class: np.ndarray  # (nc,) images holding at least one counted box of the class
    seen: int  # images evaluated
    speed: Speed
    box_loss: float = 0.0  # mean per batch, 0 without compute_loss
    obj_loss: float = 0.0
    cls_loss: float = 0.0
    voc_ap: np.ndarray = None  # (nc,) VOC devkit AP50 (NaN: no non-difficult boxes) with config.voc_rule
    voc_map: float = None
    coco_rules_map50: float = None  # ours counting 100 detections per image and class, with config.coco_rules
    coco_rules_map: float = None
    confusion: np.ndarray = None  # (nc + 1, nc + 1) with config.confusion; row = prediction, column = truth
    pycocotools_map50: float = None  # filled in by val.py --save-json
    pycocotools_map: float = None

    @property
    def fitness(self):
        """What picks best.pt: 0.1 * mAP50 + 0.9 * mAP50-95."""
        return 0.1 * self.map50 + 0.9 * self.map

    @property
    def losses(self):
        return self.box_loss, self.obj_loss, self.cls_loss


def ground_truth(records, meta, targets, input_hw, single_cls):
    """One image's ground truth in original pixels: its dataset record (with difficult/crowd flags) found by
    ``meta.index``, else (a loader without records) the batch targets mapped back through the letterbox."""
    if records is not None:
        record = records[meta.index]
        h, w = record.shape
        cls = np.zeros(len(record.cls)) if single_cls else record.cls
        return GroundTruth(xywhn2xyxy(np.asarray(record.boxes, np.float64), w, h), cls, crowd=record.crowd,
                           difficult=record.difficult)
    boxes = scale_boxes(xywhn2xyxy(targets[:, 2:6].double(), input_hw[1], input_hw[0]), meta)
    cls = targets[:, 1].cpu().numpy()
    return GroundTruth(boxes.cpu().numpy(), np.zeros_like(cls) if single_cls else cls)


def _official_crowd(nc, anno):
    """Ground truth by image id from the official JSON ``anno`` (its crowd regions count)."""
    from utils.eval.coco import category_ids_for, ground_truth_from_coco  # lazy: the COCO bridge only for COCO rules
    return ground_truth_from_coco(anno, category_ids_for(nc, anno))


def _with_crowd(gt, official):
    from utils.eval.coco import add_crowd_regions  # loaded by _official_crowd already
    return add_crowd_regions(gt, official)


class _Pass:
    """The running state of one evaluation: matcher, crowd regions, timings, summed loss."""

    def __init__(self, config, loader, observers):
        self.config, self.observers = config, observers
        confusion = ConfusionMatrix(config.nc) if config.confusion else None
        self.matcher = DetectionEvaluator(config.nc, voc_rule=config.voc_rule, confusion=confusion)
        self.records = getattr(loader.dataset, 'records', None)
        self.crowd = _official_crowd(config.nc, config.crowd_json) if config.crowd_json else {}
        self.seen, self.times, self.loss = 0, np.zeros(3), None

    def add_images(self, imgs, targets, metas, dets):
        for i, (meta, pred) in enumerate(zip(metas, dets)):
            if meta.gain_xy is None:
                raise ValueError(f'{meta.path}: no letterbox placement (augmented loader?); evaluate needs a val '
                                 f'loader')
            gt = ground_truth(self.records, meta, targets[targets[:, 0] == i], imgs.shape[2:], self.config.single_cls)
            if self.crowd:
                gt = _with_crowd(gt, self.crowd.get(meta.image_id))
            det = pred.detach().clone()
            if self.config.single_cls:
                det[:, 5] = 0
            scale_boxes(det[:, :4], meta)
            det = det.double().cpu().numpy()
            self.matcher.add_image(det, gt, key=meta.image_id)
            self.seen += 1
            for obs in self.observers:
                if hasattr(obs, 'on_image'):
                    obs.on_image(meta, det, gt)

    def result(self, n_batches):
        c, m = self.config, self.matcher
        s = m.results()
        voc_ap, voc_map = m.voc_ap() if c.voc_rule else (None, None)
        coco50, coco = m.coco_map() if c.coco_rules else (None, None)
        speed = Speed(*(t / max(self.seen, 1) * 1e3 for t in self.times))
        loss = (self.loss.cpu() / n_batches).tolist() if self.loss is not None else [0.0, 0.0, 0.0]
        return EvalResult(s.mp, s.mr, s.map50, s.map, s.maps, s.per_class, s.n_targets, s.n_images, self.seen,
                          speed, *loss, voc_ap=voc_ap, voc_map=voc_map, coco_rules_map50=coco50,
                          coco_rules_map=coco, confusion=m.confusion.matrix if m.confusion is not None else None)


def _clock(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _input_device(model):
    if isinstance(model, torch.nn.Module):
        return next(model.parameters()).device
    return torch.device(getattr(model, 'device', 'cpu'))


@torch.no_grad()
def evaluate(model, loader, config, compute_loss=None, postprocess=None, observers=()):
    """Run ``model`` over ``loader`` and measure it; see the module docstring for what each argument may be."""
    device = _input_device(model)
    is_module = isinstance(model, torch.nn.Module)
    half = config.half and is_module and device.type != 'cpu'
    state = _Pass(config, loader, observers)
    was_training = model.training if is_module else None
    if is_module:
        model.eval()
    try:
        bar = tqdm(loader, desc=config.progress, bar_format='{l_bar}{bar:10}{r_bar}', disable=config.progress is None)
        for batch_i, (imgs, targets, paths, metas) in enumerate(bar):
            t0 = _clock(device)
            imgs = imgs.to(device, non_blocking=True).float() / 255
            targets = targets.to(device)
            t1 = _clock(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=half):
                out = model(imgs)
            preds, raw = (out[0], out[1] if len(out) > 1 else None) if isinstance(out, (tuple, list)) else (out, None)
            t2 = _clock(device)
            if compute_loss is not None and raw is not None:
                items = compute_loss([x.float() for x in raw], targets)[1].detach()
                state.loss = items if state.loss is None else state.loss + items
            dets = non_max_suppression(preds.float(), config.conf_thres, config.iou_thres, multi_label=True,
                                       agnostic=config.single_cls, max_det=config.max_det)
            if postprocess is not None:
                dets = postprocess(dets, metas)
            t3 = _clock(device)
            state.times += (t1 - t0, t2 - t1, t3 - t2)
            state.add_images(imgs, targets, metas, dets)
            for obs in observers:
                if hasattr(obs, 'on_batch'):
                    obs.on_batch(batch_i, imgs, targets, paths, metas, dets)
    finally:
        if is_module:
            model.train(was_training)
    return state.result(len(loader))

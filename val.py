"""Validate a trained YOLOv5 model: P, R, mAP50, mAP50-95 per class, speed, COCO and VOC official metrics.

Usage:
    python val.py --weights runs/train/exp/weights/best.pt --data data/coco128.yaml --imgsz 640
    python val.py --weights best.pt --data ../shared/data/coco64dev/coco64dev.yaml --save-json  # + pycocotools
    python val.py --weights best.pt --data data/voc.yaml        # + VOC devkit AP50 (eval: voc07 / voc12)
    python val.py --weights best.pt --data data/coco128.yaml --task speed   # ms per image
    python val.py --weights best.pt --data data/coco128.yaml --augment      # test-time augmentation
    python val.py --weights a.pt b.pt --data data/coco128.yaml              # ensemble: joined before NMS
    python val.py --weights best.pt --data data/coco128.yaml --task study --study-sizes 320:640:64  # mAP, ms vs size
    python val.py --weights yolov5n.pt --data datasets/coco64transfer/coco64transfer.yaml --imgsz 320  # zero-shot:
        # a checkpoint of other classes is evaluated through the class mapping (utils/freeze/transfer.py)

From Python, ``val.run(**kwargs)`` takes the flags as keyword arguments and returns an ``EvalResult``
(utils/eval/evaluator.py: result.map50, result.map, result.maps, result.speed, ...). The measuring itself is
``utils.eval.evaluator.evaluate``, which the trainer calls directly.
"""
from pathlib import Path

import torch

from utils.deploy.ensemble import load_models
from utils.freeze.transfer import build_class_map, remapping_postprocess
from utils.freeze.keep import kept_and_new
from utils.cli import ArgumentParser, run_cli
from utils.data.config import check_dataset
from utils.data.datasets import create_dataloader
from utils.eval.outputs import BatchPlotter, CocoJson, LabelWriter
from utils.eval.report import HEADER, print_keep_split, print_speed, print_table, print_voc, save_plots
from utils.eval.evaluator import EvalConfig, evaluate, official_json
from utils.eval.study import DEFAULT_SIZES, StudyRow, parse_sizes, write_study
from utils.runs import increment_path, keep_freed_memory, select_device
from utils.data.sizes import check_imgsz
from utils.errors import InputError

TASKS = ('val', 'test', 'speed', 'study')


def resolve_data(data):
    """A data dict already resolved by ``check_dataset`` is used as is; a YAML path (or raw dict) is resolved."""
    if isinstance(data, dict) and {'format', 'eval', 'names', 'nc', 'annotations', 'yaml_file'} <= set(data):
        return data
    return check_dataset(data)


def build_dataloader(data, split, imgsz, batch_size, stride, workers, single_cls, square=False):
    """The split's loader; rectangular batches (pad 0.5) for accuracy, square ones (``square``) for timing."""
    if not data.get(split):
        raise InputError(f"{data.get('yaml_file') or 'data'}: no '{split}' images to validate on")
    return create_dataloader(data[split], imgsz, batch_size, stride, data=data, rect=not square,
                             pad=0.0 if square else 0.5, workers=workers, single_cls=single_cls,
                             prefix=f'{split}: ')[0]


def load_for_val(weights, device, half=False, augment=False):
    """Any weights file (.pt, TorchScript, ONNX, OpenVINO, TFLite), or several (an ensemble), as a ``utils/deploy``
    Backend: a callable that maps a batch to decoded predictions, which ``evaluate`` takes as it takes a model."""
    if not weights:
        raise InputError('--weights is required')
    return load_models(weights, device, fp16=half, augment=augment)


def loader_size(backend, imgsz, task):
    """(image size, square batches?) for the loader. An export of a fixed size takes square batches of its size
    (rectangular ones could be larger than it); others take rectangular ones, except for --task speed."""
    if backend.dynamic:
        return check_imgsz(imgsz, backend.stride)[0], task == 'speed'
    h, w = backend.imgsz
    if h != w:
        raise InputError(f'{backend.path}: takes {h}x{w} images (fixed at export) but val uses square ones; '
                         f're-export with a square --imgsz or --dynamic')
    if imgsz != h:
        print(f'note: {backend.path.name} takes {h}x{w} images (fixed at export); validating at {h}, not {imgsz}')
    return h, True


def class_mapping(model, data, single_cls):
    """A ``ClassMap`` when the checkpoint's classes are not the data's (another count, or a ``class_map:`` in the
    data YAML): predictions are then evaluated through it (zero-shot). None when they are the same classes (a
    model fine-tuned on the data: its names are the data's, whatever ``class_map:`` says)."""
    spec = data.get('class_map')
    model_nc = model.nc
    same_names = [str(n) for n in model.names] == [str(n) for n in data['names']]
    if single_cls or same_names or (model_nc == data['nc'] and not isinstance(spec, dict)):
        return None
    differ = f'{model.path}: model has {model_nc} classes but the data has {data["nc"]}'
    if spec == 'none':
        raise InputError(f'{differ} (class_map: none turns the mapping off)')
    cmap = build_class_map(data['names'], model.names, spec, where=data.get('yaml_file') or 'data')
    if cmap.is_identity:
        return None
    if not cmap.mapped:
        raise InputError(f'{differ}, and no data class matches a checkpoint class by name (map them with a '
                         f'class_map: key in the data YAML)')
    how = 'A kept model (--keep-classes)' if getattr(model, 'kept_nc', None) else 'Zero-shot'
    print(f'{how} through a class mapping ({model.path.name}: {model_nc} classes -> data: '
          f'{data["nc"]}): {cmap.summary().replace("(new)", "(AP 0)")}')
    print('  ' + ' | '.join(cmap.describe()))
    return cmap


def mapped_postprocess(cmap, config):
    """The evaluator's post-NMS step: each image's detections in checkpoint classes -> data classes."""
    return remapping_postprocess(cmap, config.iou_thres, config.max_det)


def check_options(task, batch_size, imgsz, conf_thres, iou_thres, max_det):
    if task not in TASKS:
        raise InputError(f"--task '{task}': expected {', '.join(TASKS)}")
    for flag, value, ok in (('--batch-size', batch_size, batch_size >= 1), ('--imgsz', imgsz, imgsz >= 1),
                            ('--conf-thres', conf_thres, 0 <= conf_thres <= 1),
                            ('--iou-thres', iou_thres, 0 <= iou_thres <= 1), ('--max-det', max_det, max_det >= 1)):
        if not ok:
            raise InputError(f'{flag} {value}: out of range')


def observers_for(save_dir, names, plots, save_txt, save_conf, coco):
    out = [LabelWriter(save_dir / 'labels', save_conf)] if save_txt else []
    out += [BatchPlotter(save_dir, names)] if plots else []
    return out + ([coco] if coco else [])


@torch.no_grad()
def run(data, weights=None, batch_size=32, imgsz=640, conf_thres=0.001, iou_thres=0.6, max_det=300, task='val',
        device='', workers=2, single_cls=False, verbose=False, save_txt=False, save_conf=False, save_json=False,
        project='runs/val', name='exp', exist_ok=False, half=False, save_dir=None, plots=True, observers=(),
        augment=False, study_sizes=None):
    """Validate ``weights`` (one file, or a list: an ensemble) on the ``task`` split of ``data``; prints the
    report and returns an ``EvalResult``. ``observers`` see every image as ``evaluate``'s do (e.g.
    utils/eval/bootstrap.py's ``ImageMatches``). ``task='study'`` validates each weights file at each of
    ``study_sizes`` (see ``study``) and returns the ``StudyRow``s instead."""
    check_options(task, batch_size, imgsz, conf_thres, iou_thres, max_det)
    if task == 'study':
        options = dict(data=data, batch_size=batch_size, conf_thres=conf_thres, iou_thres=iou_thres,
                       max_det=max_det, device=device, workers=workers, single_cls=single_cls, half=half,
                       augment=augment)
        save_dir = Path(save_dir) if save_dir else increment_path(Path(project) / name, exist_ok, mkdir=True)
        return study(weights, parse_sizes(study_sizes or DEFAULT_SIZES), save_dir, **options)
    if task == 'speed':  # YOLOv5's timing setting: realistic thresholds, nothing written
        conf_thres, iou_thres, save_json, save_txt, plots = 0.25, 0.45, False, False, False
    data = resolve_data(data)
    split = 'val' if task == 'speed' else task
    names = ['item'] if single_cls and data['nc'] != 1 else list(data['names'])
    device = select_device(device)
    model = load_for_val(weights, device, half and device.type != 'cpu', augment)
    cmap = class_mapping(model, data, single_cls)
    save_dir = Path(save_dir) if save_dir else increment_path(Path(project) / name, exist_ok, mkdir=True)
    save_dir.mkdir(parents=True, exist_ok=True)
    size, square = loader_size(model, imgsz, task)
    loader = build_dataloader(data, split, size, batch_size, model.stride, workers, single_cls, square=square)
    anno = official_json(data, split, single_cls, save_json)
    config = EvalConfig.for_data(data, single_cls, anno, conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det,
                                 half=half, coco_rules=save_json, confusion=plots, progress=HEADER)
    coco = CocoJson(save_dir, names, anno) if save_json else None
    result = evaluate(model, loader, config, postprocess=mapped_postprocess(cmap, config) if cmap else None,
                      observers=observers_for(save_dir, names, plots, save_txt, save_conf, coco) + list(observers))
    verbose = verbose or len(names) < 50
    print_table(result, names, verbose)
    if getattr(model, 'kept_nc', None) and cmap:  # a kept model (--keep-classes); an ensemble is not one
        print_keep_split(result, *kept_and_new(model.names, model.kept_nc, data['names'], data.get('class_map')))
    if config.voc_rule:
        print_voc(result, names, config.voc_rule, verbose)
    print_speed(result, imgsz, show_total=task == 'speed')
    if plots:
        save_plots(result, names, save_dir)
    if coco:
        result = coco.compare(result, model.path.stem)
    print(f'Results saved to {save_dir}')
    return result


def study(weights, sizes, save_dir, **options):
    """Upstream's ``--task study``: each weights file validated (val split) at each image size; the table is
    printed and written with a CSV and a plot into ``save_dir`` (utils/eval/study.py). Returns the rows."""
    save_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for w in [weights] if isinstance(weights, (str, Path)) else list(weights or [None]):
        for size in sizes:
            print(f'\nStudy: {w} at imgsz {size}')
            result = run(weights=w, imgsz=size, task='val', save_dir=save_dir, plots=False, **options)
            rows.append(StudyRow.of(Path(str(w)).stem, size, result))
    write_study(rows, save_dir)
    return rows


def parse_opt(argv=None):
    p = ArgumentParser(description='Validate a YOLOv5 model on a dataset.')
    p.add_argument('--data', default='data/coco128.yaml', help='dataset YAML')
    p.add_argument('--weights', nargs='+', help='.pt checkpoint, .torchscript, .onnx, .tflite or OpenVINO folder; several: '
                   'an ensemble (study: one model each)')
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--imgsz', '--img', '--img-size', type=int, default=640, help='inference size (pixels)')
    p.add_argument('--conf-thres', type=float, default=0.001)
    p.add_argument('--iou-thres', type=float, default=0.6, help='NMS IoU threshold')
    p.add_argument('--max-det', type=int, default=300, help='maximum detections per image')
    p.add_argument('--task', default='val', choices=TASKS, help='split to validate, speed, or study (sizes)')
    p.add_argument('--study-sizes', nargs='+', default=[DEFAULT_SIZES],
                   help=f'--task study: sizes and/or start:stop:step ranges (default {DEFAULT_SIZES})')
    p.add_argument('--augment', action='store_true', help='test-time augmentation (3 scales, a flip)')
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
    opt = parse_opt(argv)
    keep_freed_memory()  # no page faults between forwards: faster on CPU (utils/runs.py)
    run_cli(run, opt)


if __name__ == '__main__':
    main()

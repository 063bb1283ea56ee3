"""Train YOLOv5, optionally with frozen layers.

Usage:
    python train.py                                       # small model on the built-in shapes dataset
    python train.py --weights yolov5m.pt --data voc.yaml --freeze 10
    python train.py --resume                              # continue the latest run
    python train.py --weights yolov5n.pt --data my.yaml --evolve 30    # search the recipe (Optuna)
    python -m torch.distributed.run --nproc_per_node 2 train.py --data coco128.yaml   # DDP
"""
import argparse
import os
from pathlib import Path

import torch

from utils.cli import ArgumentParser, run_cli
from utils.data.datasets import CACHE_MODES
from utils.errors import InputError
from utils.runs import PhaseTimer, configure_determinism, init_distributed, keep_freed_memory
from utils.train.callbacks import EpochFitness, default_callbacks
from utils.train.config import (DEMO_EPOCHS, FEATURE_CACHE_VIEWS, SAVED_BEFORE_THE_FLAG, STANDARD_EPOCHS, TrainConfig,
                                format_differences, parse_val_every, upstream_differences, val_every_flag,
                                val_every_of)
from utils.train.trainer import prepare_run_dir, train
from utils.weights.checkpoint import discard_partial_writes, find_last_checkpoint, load_checkpoint

ROOT = Path(__file__).resolve().parent
DEMO = {'data': str(ROOT / 'data/shapes.yaml'), 'cfg': 'v6/yolov5n.yaml',
        'hyp': str(ROOT / 'data/hyps/hyp.shapes.yaml'), 'epochs': DEMO_EPOCHS, 'imgsz': 128, 'batch_size': 8}
STANDARD = {'hyp': str(ROOT / 'data/hyps/hyp.scratch-low.yaml'), 'epochs': STANDARD_EPOCHS, 'imgsz': 640,
            'batch_size': 16}
PRETRAINED_HYP = str(ROOT / 'data/hyps/hyp.transfer.yaml')  # the default hyp with --weights (see the file)
CACHE_CHOICES = (*CACHE_MODES, 'features')  # 'features': utils/train/feature_cache.py
FILLED = {'weights': '', 'freeze_bn_stats': 'true'}  # left unset: said by upstream_differences, then filled


def parse_opt(argv=None):
    p = ArgumentParser(description='Train YOLOv5 with built-in layer freezing.')
    p.add_argument('--weights', default=None,
                   help="initial weights (.pt, ours or official); '' or unset: from scratch (upstream: yolov5s.pt)")
    p.add_argument('--cfg', default='', help="model YAML (default: the checkpoint's, else v6/yolov5s.yaml)")
    p.add_argument('--data', default=None, help='data YAML (default: the built-in shapes demo, see below)')
    p.add_argument('--hyp', default=None,
                   help='hyper-parameter YAML: a path or a name in data/hyps/ (default hyp.scratch-low.yaml; '
                        'hyp.transfer.yaml with --weights)')
    p.add_argument('--epochs', type=int, default=None, help='default 100')
    p.add_argument('--batch-size', type=int, default=None,
                   help='total batch size over all processes, default 16; -1: AutoBatch (largest that fits, one '
                        'CUDA device)')
    p.add_argument('--imgsz', '--img', '--img-size', type=int, default=None, help='train/val image size, default 640')
    p.add_argument('--rect', action='store_true', help='rectangular training batches')
    p.add_argument('--resume', nargs='?', const=True, default=False, help='resume the latest run, or this last.pt')
    p.add_argument('--nosave', action='store_true', help='only save the final checkpoint')
    p.add_argument('--noval', action='store_true', help='only validate after the final epoch')
    p.add_argument('--val-every', type=val_every_flag, default='auto', metavar='K',
                   help='validate every K epochs and the last; auto: every epoch for runs of at most 10 epochs, '
                        'else every min(5, epochs // 10); 1: every epoch (upstream)')
    p.add_argument('--noautoanchor', action='store_true', help='disable the anchor check')
    p.add_argument('--noplots', action='store_true', help='save no plots')
    p.add_argument('--cache', nargs='?', const='ram', default='auto',
                   help='cache images in "ram" (resized) or on "disk" (decoded .npy beside the images); "auto": '
                        'in RAM when they fit in 10%% of free memory; "off": read them each epoch (upstream); '
                        '"features": the frozen layers\' outputs of --cache-views augmented views per image, '
                        'computed once (needs --freeze)')
    p.add_argument('--cache-views', type=int, default=FEATURE_CACHE_VIEWS, metavar='K',
                   help=f'--cache features: augmented views per training image, default {FEATURE_CACHE_VIEWS}')
    p.add_argument('--multi-scale', action='store_true', help='vary the image size +-50%% per batch')
    p.add_argument('--image-weights', action='store_true', help='draw training images weighted by class rarity')
    p.add_argument('--save-period', type=int, default=-1, help='also save weights/epoch{N}.pt every N epochs')
    p.add_argument('--device', default='', help='cuda device (0 or 0,1) or cpu')
    p.add_argument('--workers', type=int, default=2, help='dataloader workers per process')
    p.add_argument('--project', default='runs/train')
    p.add_argument('--name', default='exp')
    p.add_argument('--exist-ok', action='store_true')
    p.add_argument('--optimizer', default='SGD', choices=['SGD', 'Adam', 'AdamW'])
    p.add_argument('--sync-bn', action='store_true', help='SyncBatchNorm in DDP')
    p.add_argument('--cos-lr', action='store_true', help='cosine LR schedule')
    p.add_argument('--label-smoothing', type=float, default=0.0)
    p.add_argument('--patience', type=int, default=100, help='stop after this many epochs without improvement')
    p.add_argument('--freeze', nargs='+', default=['0'],
                   help="layers to freeze: N (first N), indices '0 1 2', 'backbone', 'all', or prefixes 'model.24.'")
    p.add_argument('--freeze-bn-stats', default=None, choices=['true', 'false', 'all'],
                   help='keep frozen layers\' BatchNorm statistics fixed (false: upstream YOLOv5 behaviour; all: '
                        'every BatchNorm layer keeps its loaded statistics, trainable ones too; default: all with '
                        '--weights, else true)')
    p.add_argument('--unfreeze-epoch', type=int, default=-1, help='unfreeze everything at this epoch')
    p.add_argument('--keep-classes', action='store_true',
                   help="keep the checkpoint's classes: its layers after the frozen ones stay, frozen, beside a "
                        "trainable copy that learns the data's classes (utils/freeze/keep.py)")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--deterministic', action='store_true',
                   help='deterministic algorithms on CUDA (slower; CPU runs are deterministic already)')
    p.add_argument('--single-cls', action='store_true', help='train multi-class data as one class')
    p.add_argument('--close-mosaic', type=int, default=0, help='turn mosaic off for the last K epochs')
    p.add_argument('--evolve', type=int, nargs='?', const=300, default=None,
                   help='search the recipe with N Optuna trials (default 300); with --resume: continue the study')
    p.add_argument('--evolve-space', nargs='+', default=None, metavar='SPEC',
                   help='narrow or fix the search: lr0=0.001:0.02, mosaic=1.0, freeze=0,backbone,10, '
                        'search=lr0,freeze, or a YAML of the same')
    p.add_argument('--evolve-storage', default=None, metavar='URL',
                   help='Optuna storage shared by several processes/machines (default: runs/evolve/exp/study.db)')
    p.add_argument('--evolve-pruner', default='median', help='median, hyperband, none or threshold=X')
    p.add_argument('--mlflow', action='store_true',
                   help='log to MLflow (pip install mlflow-skinny); on without the flag when MLFLOW_TRACKING_URI '
                        'is set')
    p.add_argument('--local_rank', '--local-rank', type=int, default=-1, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def fill_defaults(opt):
    """YOLOv5's defaults (hyp.transfer.yaml when starting from --weights), except without --data: then the built-in
    demo (shapes, 128 px, batch 8, 30 epochs, hyp.shapes.yaml; v6/yolov5n unless --weights decides the model) for
    every option left unset, so `python train.py` finishes in minutes on a CPU. --weights decides the architecture
    unless --cfg is given, with or without --data."""
    demo = opt.data is None
    preset = DEMO if demo else {**STANDARD, **({'hyp': PRETRAINED_HYP} if opt.weights else {})}
    if opt.weights:
        preset = {k: v for k, v in preset.items() if k != 'cfg'}  # the checkpoint's own model YAML
    for k, v in preset.items():
        if getattr(opt, k) in (None, ''):
            setattr(opt, k, v)
    if opt.freeze_bn_stats is None and opt.weights and not opt.resume:
        opt.freeze_bn_stats = 'all'  # a pretrained start keeps every BatchNorm's statistics (hyp.transfer.yaml)
    for k, v in FILLED.items():
        if getattr(opt, k) is None:
            setattr(opt, k, v)
    return opt


def check_options(opt, world_size, device=None):
    """Refuse flag values that cannot work, before anything is built (one-line errors)."""
    if opt.batch_size == -1 and device is not None and device.type != 'cuda':
        from utils.train.autobatch import NEEDS_CUDA
        raise InputError(NEEDS_CUDA)
    for flag, value, low in (('--epochs', opt.epochs, 1), ('--batch-size', opt.batch_size, -1),
                             ('--imgsz', opt.imgsz, 32), ('--workers', opt.workers, 0),
                             ('--patience', opt.patience, 1), ('--close-mosaic', opt.close_mosaic, 0)):
        if value < low:
            raise InputError(f'{flag} {value}: must be at least {low}')
    if opt.batch_size == 0:
        raise InputError('--batch-size 0: must be at least 1, or -1 for AutoBatch')
    try:
        parse_val_every(val_every_of(opt))  # train.run(val_every=...) is not parsed by argparse
    except ValueError as e:
        raise InputError(f'--val-every {val_every_of(opt)}: {e}') from None
    if opt.cache is not None and opt.cache not in CACHE_CHOICES:
        *most, last = map(repr, CACHE_CHOICES)
        raise InputError(f"--cache {opt.cache}: must be {', '.join(most)} or {last}")
    if opt.cache == 'features':
        from utils.train.feature_cache import check_options as check_feature_cache  # lazy: --cache features only
        check_feature_cache(opt, world_size)
    if opt.unfreeze_epoch >= opt.epochs:
        raise InputError(f'--unfreeze-epoch {opt.unfreeze_epoch}: the run has only epochs 0-{opt.epochs - 1}')
    if opt.unfreeze_epoch >= 0 and [str(f) for f in opt.freeze] == ['0']:
        raise InputError(f'--unfreeze-epoch {opt.unfreeze_epoch}: nothing is frozen (add --freeze)')
    if getattr(opt, 'keep_classes', False):
        from utils.freeze.keep import check_keep_options  # lazy: only --keep-classes runs need it
        check_keep_options(opt)
    if opt.image_weights and opt.rect:
        raise InputError('--image-weights does not work with --rect (rect batches keep a fixed image order)')
    if world_size > 1 and (opt.image_weights or opt.batch_size == -1):
        raise InputError(f"{'--image-weights' if opt.image_weights else '--batch-size -1 (AutoBatch)'} needs a "
                         f"single process (DDP splits the images its own way)")
    if opt.rect and world_size > 1:
        raise InputError('--rect does not work with DDP (each process would mix batches of different shapes)')
    if opt.batch_size > 0 and opt.batch_size % world_size:
        raise InputError(f'--batch-size {opt.batch_size}: must be a multiple of the {world_size} processes')


def resume_options(opt):
    """Options of the run to resume (from its checkpoint), keeping this call's device and workers."""
    path = find_last_checkpoint(opt.project) if opt.resume is True else Path(opt.resume)
    if not path.is_file():
        raise FileNotFoundError(f'--resume {opt.resume}: checkpoint not found')
    for name in discard_partial_writes(path.parent):
        print(f'Removed {path.parent / name}: a checkpoint write that was interrupted (kept the complete {path.name})')
    ckpt = load_checkpoint(path)
    if ckpt.get('optimizer') is None or ckpt.get('model') is None:
        raise InputError(f'{path}: this run already finished (final checkpoints hold no optimizer); nothing to resume')
    # options newer than the run: defaults, except --val-every: such a run validated every epoch
    saved = argparse.Namespace(**{**vars(parse_opt([])), 'val_every': SAVED_BEFORE_THE_FLAG, **ckpt['opt']})
    saved.device, saved.workers, saved.resume = opt.device, opt.workers, str(path)
    return saved, ckpt


def run(callbacks=(), **kwargs):
    """Python entry point: ``train.run(data='data/shapes.yaml', epochs=3)``. Returns the final val results.
    ``callbacks``: watchers of the run besides the default ones (utils/train/callbacks.py)."""
    opt = parse_opt([])
    for k, v in kwargs.items():
        if not hasattr(opt, k):
            raise InputError(f'train.run: unknown option {k}')
        setattr(opt, k, v)
    return main(opt, callbacks=callbacks)


def main(opt, callbacks=(), phases=None, on_epoch_end=None):
    """One training run, or with ``opt.evolve`` a study of such runs. ``callbacks`` watch the run beside the
    default ones (results.csv, plots, TensorBoard, MLflow); ``on_epoch_end(epoch, fitness)`` is a shorthand for a
    callback called after each validated epoch. A single run ends with a one-line breakdown of its wall time by
    phase (``phases``: a ``utils.runs.PhaseTimer``, filled in; default: a new one, from now)."""
    note = format_differences(upstream_differences(opt)) if not opt.resume else None
    if note and int(os.environ.get('RANK', 0)) == 0 and opt.evolve is None:
        print(note)
    fill_defaults(opt)
    if opt.evolve is not None or opt.resume not in (False, True, None, ''):
        from utils.evolve.study import is_evolve_dir, run_evolve  # --evolve only
        if opt.evolve is not None or is_evolve_dir(opt.resume):
            if not opt.resume:
                check_options(opt, 1)
            return run_evolve(opt, main, defaults=vars(parse_opt([])))
    device, rank, world_size = init_distributed(opt.device)
    ckpt = None
    if opt.resume:
        opt, ckpt = resume_options(opt)
    check_options(opt, world_size, device)
    configure_determinism(getattr(opt, 'deterministic', False))  # a resumed run keeps its setting
    save_dir = prepare_run_dir(opt, main=rank in (-1, 0))
    config = TrainConfig.from_options(opt, device, rank, world_size, save_dir, phases)
    watchers = [*default_callbacks(config), *callbacks, on_epoch_end and EpochFitness(on_epoch_end)]
    try:
        result = train(config, ckpt, watchers)
        config.log(config.phases.summary())
        return result
    finally:
        if world_size > 1:
            torch.distributed.destroy_process_group()


def cli(argv=None):
    phases = PhaseTimer.since_process_start()  # the time until here is the 'imports' phase
    keep_freed_memory()  # no page faults between steps: faster on CPU (utils/runs.py)
    run_cli(lambda **kw: main(argparse.Namespace(**kw), phases=phases), parse_opt(argv))


if __name__ == '__main__':
    cli()

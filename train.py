"""Train YOLOv5, optionally with frozen layers.

Usage:
    python train.py                                       # small model on the built-in shapes dataset
    python train.py --weights yolov5m.pt --data voc.yaml --freeze 10
    python train.py --resume                              # continue the latest run
    python -m torch.distributed.run --nproc_per_node 2 train.py --data coco128.yaml   # DDP
"""
import argparse
from pathlib import Path

import torch

from utils.checkpoint import find_last_checkpoint, load_checkpoint
from utils.cli import ArgumentParser, run_cli
from utils.runs import configure_determinism, init_distributed
from utils.trainer import Run, prepare_run_dir, train

ROOT = Path(__file__).resolve().parent
DEMO = {'data': str(ROOT / 'data/shapes.yaml'), 'cfg': 'v6/yolov5n.yaml',
        'hyp': str(ROOT / 'data/hyps/hyp.shapes.yaml'), 'epochs': 15, 'imgsz': 192}
STANDARD = {'hyp': str(ROOT / 'data/hyps/hyp.scratch.yaml'), 'epochs': 100, 'imgsz': 640}


def parse_opt(argv=None):
    p = ArgumentParser(description='Train YOLOv5 with built-in layer freezing.')
    p.add_argument('--weights', default='', help='initial weights (.pt, ours or official); empty: from scratch')
    p.add_argument('--cfg', default='', help="model YAML (default: the checkpoint's, else v6/yolov5s.yaml)")
    p.add_argument('--data', default=None, help='data YAML (default: the built-in shapes demo, see below)')
    p.add_argument('--hyp', default=None, help='hyper-parameter YAML (default: data/hyps/hyp.scratch.yaml)')
    p.add_argument('--epochs', type=int, default=None, help='default 100')
    p.add_argument('--batch-size', type=int, default=16, help='total batch size over all processes')
    p.add_argument('--imgsz', '--img', '--img-size', type=int, default=None, help='train/val image size, default 640')
    p.add_argument('--rect', action='store_true', help='rectangular training batches')
    p.add_argument('--resume', nargs='?', const=True, default=False, help='resume the latest run, or this last.pt')
    p.add_argument('--nosave', action='store_true', help='only save the final checkpoint')
    p.add_argument('--noval', action='store_true', help='only validate after the final epoch')
    p.add_argument('--noautoanchor', action='store_true', help='disable the anchor check')
    p.add_argument('--noplots', action='store_true', help='save no plots')
    p.add_argument('--cache', nargs='?', const='ram', default=None, help='cache images in "ram"')
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
    p.add_argument('--freeze-bn-stats', default='true', choices=['true', 'false'],
                   help='keep frozen layers\' BatchNorm statistics fixed (false: upstream YOLOv5 behaviour)')
    p.add_argument('--unfreeze-epoch', type=int, default=-1, help='unfreeze everything at this epoch')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--deterministic', action='store_true',
                   help='deterministic algorithms on CUDA (slower; CPU runs are deterministic already)')
    p.add_argument('--single-cls', action='store_true', help='train multi-class data as one class')
    p.add_argument('--close-mosaic', type=int, default=0, help='turn mosaic off for the last K epochs')
    p.add_argument('--local_rank', '--local-rank', type=int, default=-1, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def fill_defaults(opt):
    """YOLOv5's defaults, except without --data: then the built-in demo (v6/yolov5n, shapes, 192 px, 15 epochs,
    hyp.shapes.yaml) for every option left unset, so `python train.py` finishes in minutes on a CPU."""
    demo = opt.data is None
    preset = DEMO if demo else STANDARD
    for k, v in preset.items():
        if getattr(opt, k) in (None, ''):
            setattr(opt, k, v)
    return opt


def check_options(opt, world_size):
    """Refuse flag values that cannot work, before anything is built (one-line errors)."""
    for flag, value, low in (('--epochs', opt.epochs, 1), ('--batch-size', opt.batch_size, 1),
                             ('--imgsz', opt.imgsz, 32), ('--workers', opt.workers, 0),
                             ('--patience', opt.patience, 1), ('--close-mosaic', opt.close_mosaic, 0)):
        if value < low:
            raise ValueError(f'{flag} {value}: must be at least {low}')
    if opt.cache not in (None, 'ram'):
        raise ValueError(f"--cache {opt.cache}: only 'ram' is supported")
    if opt.unfreeze_epoch >= opt.epochs:
        raise ValueError(f'--unfreeze-epoch {opt.unfreeze_epoch}: the run has only epochs 0-{opt.epochs - 1}')
    if opt.unfreeze_epoch >= 0 and [str(f) for f in opt.freeze] == ['0']:
        raise ValueError(f'--unfreeze-epoch {opt.unfreeze_epoch}: nothing is frozen (add --freeze)')
    if opt.rect and world_size > 1:
        raise ValueError('--rect does not work with DDP (each process would mix batches of different shapes)')
    if opt.batch_size % world_size:
        raise ValueError(f'--batch-size {opt.batch_size}: must be a multiple of the {world_size} processes')


def resume_options(opt):
    """Options of the run to resume (from its checkpoint), keeping this call's device and workers."""
    path = find_last_checkpoint(opt.project) if opt.resume is True else Path(opt.resume)
    if not path.is_file():
        raise FileNotFoundError(f'--resume {opt.resume}: checkpoint not found')
    ckpt = load_checkpoint(path)
    if ckpt.get('optimizer') is None or ckpt.get('model') is None:
        raise ValueError(f'{path}: this run already finished (final checkpoints hold no optimizer); nothing to resume')
    saved = argparse.Namespace(**ckpt['opt'])
    saved.device, saved.workers, saved.resume = opt.device, opt.workers, str(path)
    return saved, ckpt


def run(**kwargs):
    """Python entry point: ``train.run(data='data/shapes.yaml', epochs=3)``. Returns the final val results."""
    opt = parse_opt([])
    for k, v in kwargs.items():
        if not hasattr(opt, k):
            raise ValueError(f'train.run: unknown option {k}')
        setattr(opt, k, v)
    return main(opt)


def main(opt):
    fill_defaults(opt)
    device, rank, world_size = init_distributed(opt.device)
    ckpt = None
    if opt.resume:
        opt, ckpt = resume_options(opt)
    check_options(opt, world_size)
    configure_determinism(getattr(opt, 'deterministic', False))  # a resumed run keeps its setting
    r = Run(opt, device, rank, world_size)
    prepare_run_dir(r)
    try:
        return train(r, ckpt)
    finally:
        if world_size > 1:
            torch.distributed.destroy_process_group()


def cli(argv=None):
    run_cli(lambda **kw: main(argparse.Namespace(**kw)), parse_opt(argv))


if __name__ == '__main__':
    cli()

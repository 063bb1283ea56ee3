"""One training run: setup (data, model, freezing, optimizer, EMA), the epoch loop, checkpoints, verification.

``train.py`` parses the command line and calls ``train(run)``; validation comes in as ``run.validate`` (val.run),
so this module never imports a script.
"""
import csv
import time
from pathlib import Path

import torch
import yaml

from models.yolo import Model
from utils.augment import check_imgsz
from utils.autoanchor import check_anchors
from utils.checkpoint import (format_transfer_report, load_checkpoint, read_weights, save_checkpoint, strip_optimizer,
                              training_checkpoint, transfer_weights)
from utils.datasets import check_dataset, create_dataloader, load_hyp, reseed_loader
from utils.download import resolve_weights
from utils.ema import ModelEMA
from utils.engine import (NOMINAL_BATCH, StepState, accumulate_steps, build_optimizer, rebuild_optimizer,
                          seed_everything, train_one_epoch)
from utils.freeze import freeze, freeze_report, frozen_names, tensor_digests, unfreeze
from utils.loss import ComputeLoss, scale_loss_gains
from utils.metrics import fitness
from utils.plots import plot_images, plot_labels, plot_results
from utils.runs import cudnn_autotune, increment_path

CSV_KEYS = ['epoch', 'train/box_loss', 'train/obj_loss', 'train/cls_loss', 'metrics/precision', 'metrics/recall',
            'metrics/mAP_0.5', 'metrics/mAP_0.5:0.95', 'val/box_loss', 'val/obj_loss', 'val/cls_loss',
            'x/lr0', 'x/lr1', 'x/lr2']


class Run:
    """Everything one training run holds: options, data, model, optimizer, EMA, counters, output paths."""

    def __init__(self, opt, device, rank, world_size, validate):
        self.opt, self.device, self.rank, self.world_size = opt, device, rank, world_size
        self.validate = validate  # val.run
        self.main = rank in (-1, 0)
        self.log = print if self.main else (lambda *a, **k: None)


def build_model(run):
    """Model from --cfg / the checkpoint's YAML, with pretrained weights transferred where shapes match."""
    opt = run.opt
    weights = read_weights(resolve_weights(opt.weights)) if opt.weights else None
    cfg = opt.cfg or (weights['yaml'] if weights else 'v6/yolov5s.yaml')
    model = Model(cfg, nc=run.nc).to(run.device)
    if weights:
        report = transfer_weights(model, weights['state_dict'])
        run.log(format_transfer_report(report))
    model.names = list(run.names)
    return model


def apply_freeze(run, model):
    prefixes = freeze(model, run.opt.freeze)
    if run.opt.freeze_bn_stats == 'false':  # upstream behaviour: BN of frozen layers keeps normalising per batch
        model.frozen_bn = set()
        model.train(model.training)
    return prefixes


def make_checkpoint(run, epoch):
    ck = training_checkpoint(run.model, run.ema, run.optimizer, run.scaler, epoch, run.best_fitness, vars(run.opt),
                             run.hyp, run.frozen_prefixes, run.frozen_digests)
    return {**ck, 'best_epoch': run.best_epoch}


def write_results_row(path, row):
    new = not path.exists()
    with path.open('a', newline='') as f:
        w = csv.writer(f)
        if new:
            w.writerow(CSV_KEYS)
        w.writerow([f'{x:.5g}' if isinstance(x, float) else x for x in row])


def setup(run, ckpt=None):
    """Everything before the first epoch: hyp, data, model (frozen), loaders, optimizer, EMA, loss."""
    opt = run.opt
    run.hyp = ckpt['hyp'] if ckpt else load_hyp(opt.hyp)
    run.data = check_dataset(opt.data)
    # --single-cls: the data keep their classes (labels are checked against them); model and loss see one class
    run.nc, run.names = (1, ['item']) if opt.single_cls else (run.data['nc'], list(run.data['names']))
    if run.main:
        (run.save_dir / 'hyp.yaml').write_text(yaml.safe_dump(run.hyp, sort_keys=False))
    model = setup_model(run, ckpt)
    setup_loaders(run, model, fresh=ckpt is None)
    setup_optimization(run, model, ckpt)
    if run.world_size > 1 and opt.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    run.model = wrap_ddp(run, model)


def setup_model(run, ckpt):
    """The model (new, pretrained or resumed), frozen as asked, with the fingerprints of its frozen tensors."""
    seed_everything(run.opt.seed)  # same initial weights (and autoanchor) for the same seed
    if ckpt:
        model = Model(ckpt['yaml']).to(run.device)
        model.load_state_dict(ckpt['model'])
        model.names = list(ckpt['names'])
    else:
        model = build_model(run)
    run.frozen_prefixes = apply_freeze(run, model)
    run.frozen_digests = ckpt['frozen_sha256'] if ckpt else tensor_digests(model, frozen_names(model))
    run.log(freeze_report(model, run.opt.imgsz))
    return model


def setup_loaders(run, model, fresh):
    """Train loader (every process) and val loader (main process); labels plot and anchor check on a new run."""
    opt = run.opt
    gs = max(int(model.stride.max()), 32)
    run.imgsz = check_imgsz(opt.imgsz, gs)[0]
    batch = opt.batch_size // max(run.world_size, 1)
    run.train_loader, run.dataset = create_dataloader(
        run.data['train'], run.imgsz, batch, gs, hyp=run.hyp, augment=True, rect=opt.rect, cache=opt.cache,
        workers=opt.workers, shuffle=True, rank=run.rank, single_cls=opt.single_cls, seed=opt.seed, data=run.data,
        prefix='train: ')
    run.val_loader = None
    if not run.main:
        return
    run.val_loader, _ = create_dataloader(
        run.data['val'], run.imgsz, batch * 2, gs, hyp=run.hyp, augment=False, rect=True, cache=opt.cache,
        workers=opt.workers, pad=0.5, single_cls=opt.single_cls, data=run.data, prefix='val: ')
    if fresh and not opt.noplots:
        plot_labels(run.dataset.labels, run.names, run.save_dir)
    if fresh and not opt.noautoanchor:
        check_anchors(run.dataset, model, thr=run.hyp['anchor_t'], imgsz=run.imgsz, log=run.log)


def setup_optimization(run, model, ckpt):
    """Loss, optimizer (trainable parameters only), EMA (skipping frozen tensors), AMP scaler; resumed state."""
    opt, hyp = run.opt, run.hyp
    run.compute_loss = ComputeLoss(model, scale_loss_gains(hyp, model.model[-1].nl, run.nc, run.imgsz),
                                   opt.label_smoothing)
    nbs = hyp.get('nbs', NOMINAL_BATCH)
    run.weight_decay = hyp['weight_decay'] * opt.batch_size * accumulate_steps(opt.batch_size, nbs) / nbs
    run.optimizer = build_optimizer(model, opt.optimizer, hyp['lr0'], hyp['momentum'], run.weight_decay)
    run.ema = ModelEMA(model) if run.main else None
    if run.ema:
        run.ema.set_frozen(frozen_names(model))
    run.amp = run.device.type == 'cuda'
    run.scaler = torch.amp.GradScaler('cuda', enabled=run.amp)
    run.start_epoch, run.best_fitness, run.best_epoch = 0, 0.0, -1
    if ckpt:
        resume_state(run, model, ckpt)


def resume_state(run, model, ckpt):
    """Restore optimizer, EMA, scaler and counters; re-apply an --unfreeze-epoch the run had already passed."""
    run.start_epoch, run.best_fitness = ckpt['epoch'] + 1, ckpt['best_fitness']
    if 0 <= run.opt.unfreeze_epoch < run.start_epoch:
        maybe_unfreeze(run, run.opt.unfreeze_epoch, len(run.train_loader), model)
    run.optimizer.load_state_dict(ckpt['optimizer'])
    if run.ema:
        run.ema.ema.load_state_dict(ckpt['ema'])
        run.ema.updates = ckpt['ema_updates']
    if ckpt.get('scaler'):
        run.scaler.load_state_dict(ckpt['scaler'])
    run.best_epoch = ckpt.get('best_epoch', run.start_epoch - 1)
    run.log(f"Resuming {run.opt.resume} from epoch {run.start_epoch + 1}/{run.opt.epochs}")


def maybe_unfreeze(run, epoch, nb, model=None):
    """--unfreeze-epoch: release every frozen layer and rebuild the optimizer with a warm-up for them."""
    if epoch != run.opt.unfreeze_epoch:
        return
    m = model if model is not None else getattr(run.model, 'module', run.model)
    if model is None and run.ema:
        verify_frozen(run)  # the frozen phase ends here: check it before the layers are released
    unfreeze(m)
    run.optimizer = rebuild_optimizer(run.optimizer, m, run.opt.optimizer, run.hyp['lr0'], run.hyp['momentum'],
                                      run.weight_decay, start_iter=epoch * nb, ramp_iters=nb)
    if run.ema:
        run.ema.set_frozen([])
    if model is None:
        run.model = wrap_ddp(run, m)  # DDP only syncs parameters that were trainable when it was wrapped
    run.log(f'epoch {epoch + 1}: unfroze all layers; their LR warms up over one epoch')


def wrap_ddp(run, model):
    """The model wrapped in DistributedDataParallel when several processes train; as it is otherwise."""
    if run.world_size == 1:
        return model
    ids = [run.device.index] if run.device.type == 'cuda' else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def validate_epoch(run, final):
    if run.opt.noval and not final:
        return (0.0,) * 7, None
    results, maps, _ = run.validate(data=run.data, model=run.ema.ema, dataloader=run.val_loader,
                                    compute_loss=run.compute_loss, half=run.amp, save_dir=run.save_dir,
                                    plots=final and not run.opt.noplots, batch_size=run.opt.batch_size * 2,
                                    imgsz=run.imgsz, verbose=final, single_cls=run.opt.single_cls)
    return results, maps


def end_epoch(run, epoch, losses, final):
    """Validate, log results.csv, save last/best. Returns True when early stopping says stop."""
    results, _ = validate_epoch(run, final)
    fit = float(fitness(results))
    lrs = [g['lr'] for g in run.optimizer.param_groups][:3]
    write_results_row(run.save_dir / 'results.csv', [epoch, *losses, *results[:4], *results[4:7], *lrs])
    if not run.opt.noplots:
        plot_results(run.save_dir / 'results.csv')
    improved = fit >= run.best_fitness
    if improved:
        run.best_fitness, run.best_epoch = fit, epoch
    stop = epoch - run.best_epoch >= run.opt.patience
    if not run.opt.nosave or final or stop:
        ck = make_checkpoint(run, epoch)
        save_checkpoint(ck, run.weights_dir / 'last.pt')
        if improved:
            save_checkpoint(ck, run.weights_dir / 'best.pt')
    return stop


def verify_frozen(run, files=()):
    """Every frozen tensor, in the model, its EMA and the EMA saved in ``files``, must equal its starting value
    bit for bit (SHA-256 fingerprints taken before the first step)."""
    m = getattr(run.model, 'module', run.model)
    names = [n for n in run.frozen_digests if n in set(frozen_names(m))]
    if not names:
        return 0
    sources = {'model': m, 'EMA': run.ema.ema, **{f.name: load_checkpoint(f)['ema'] for f in files}}
    bad = [f'{src}:{n}' for src, obj in sources.items() for n, d in tensor_digests(obj, names).items()
           if d != run.frozen_digests[n]]
    if bad:
        raise RuntimeError(f'{len(bad)} frozen tensors changed during training: {", ".join(bad[:5])}')
    run.log(f'Frozen tensors verified: {len(names)} tensors (weights and BatchNorm buffers) bit-identical to '
            f'their starting values in the {", ".join(sources)}')
    return len(names)


def finish(run, epoch):
    """Strip the optimizer state from last/best and verify the frozen tensors, saved ones included."""
    files = [run.weights_dir / n for n in ('last.pt', 'best.pt') if (run.weights_dir / n).exists()]
    for f in files:
        strip_optimizer(f)
    if run.ema:
        verify_frozen(run, files)


def train(run, ckpt=None):
    """Set up, run the epochs (resuming from ``ckpt`` when given), verify, validate best.pt; returns its results."""
    opt = run.opt
    setup(run, ckpt)
    nb = len(run.train_loader)
    cfg = {'epochs': opt.epochs, 'hyp': run.hyp, 'batch_size': opt.batch_size, 'cos_lr': opt.cos_lr,
           'amp': run.amp, 'world_size': run.world_size,
           'warmup_iters': max(round(run.hyp['warmup_epochs'] * nb), 100)}
    if run.main and not opt.noplots:
        cfg['on_first_batch'] = lambda imgs, targets: plot_batch(run, imgs, targets)
    state = StepState(ni=run.start_epoch * nb, last_step=run.start_epoch * nb - 1)
    results = (0.0,) * 7
    t0 = time.time()
    epoch = run.start_epoch - 1
    for epoch in range(run.start_epoch, opt.epochs):
        seed_everything(opt.seed + epoch)  # a resumed run replays the same epoch
        reseed_loader(run.train_loader, (opt.seed + epoch) * 1000 + max(run.rank, 0))
        maybe_unfreeze(run, epoch, nb)
        if opt.close_mosaic and epoch >= opt.epochs - opt.close_mosaic and run.dataset.mosaic:
            run.dataset.mosaic = False
            run.log(f'epoch {epoch + 1}: mosaic off for the last {opt.close_mosaic} epochs')
        if hasattr(run.train_loader.sampler, 'set_epoch'):
            run.train_loader.sampler.set_epoch(epoch)
        with cudnn_autotune(run.device.type == 'cuda' and not opt.rect and not getattr(opt, 'deterministic', False)):
            losses, _ = train_one_epoch(run.model, run.train_loader, run.optimizer, run.scaler, run.ema,
                                        run.compute_loss, run.device, epoch, cfg, state, show=run.main)
        final = epoch == opt.epochs - 1
        stop = end_epoch(run, epoch, losses, final) if run.main else False
        if run.world_size > 1:  # every process must leave the loop together
            flag = [stop]
            torch.distributed.broadcast_object_list(flag, 0)
            stop = flag[0]
        if stop and not final:
            run.log(f'Early stopping: no improvement in {opt.patience} epochs (best epoch {run.best_epoch + 1})')
            break
        cfg.pop('on_first_batch', None)
    if run.main:
        run.log(f'{epoch - run.start_epoch + 1} epochs completed in {(time.time() - t0) / 3600:.3f} hours')
        finish(run, epoch)
        results = final_validation(run)
    return results


def final_validation(run):
    best = run.weights_dir / 'best.pt'
    if not best.exists():
        return (0.0,) * 7
    results, _, _ = run.validate(data=run.data, weights=str(best), batch_size=run.opt.batch_size * 2,
                                 imgsz=run.imgsz, device=str(run.device.index if run.device.type == 'cuda' else 'cpu'),
                                 save_dir=run.save_dir, plots=not run.opt.noplots, verbose=True,
                                 workers=run.opt.workers, single_cls=run.opt.single_cls)
    run.log(f'Results saved to {run.save_dir}: mAP50 {results[2]:.3f}, mAP50-95 {results[3]:.3f}')
    return results


def plot_batch(run, imgs, targets):
    plot_images(imgs, targets, None, run.save_dir / 'train_batch0.jpg', names=run.names)


def prepare_run_dir(run):
    """runs/train/exp{N}/weights (the resumed run's own folder on --resume) and opt.yaml; main process only."""
    opt = run.opt
    if not run.main:
        run.save_dir = None
        return
    run.save_dir = Path(opt.resume).parent.parent if opt.resume else increment_path(Path(opt.project) / opt.name,
                                                                                   exist_ok=opt.exist_ok)
    run.weights_dir = run.save_dir / 'weights'
    run.weights_dir.mkdir(parents=True, exist_ok=True)
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opt).items()}
    (run.save_dir / 'opt.yaml').write_text(yaml.safe_dump(options, sort_keys=False))

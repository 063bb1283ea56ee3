"""Everything a training run builds before its first epoch, one step at a time; each step returns what it built.

    config = load_config(run, ckpt)                         # hyp, data, classes
    model, plan = setup_model(run, config, ckpt)            # weights in, FreezePlan applied (fingerprints taken)
    choose_batch_size(run, model)                           # --batch-size -1 only: AutoBatch on the frozen model
    loaders = setup_loaders(run, config, model, fresh)      # train/val loaders, labels plot, autoanchor
    learner, decay = setup_learner(run, config, model, plan, loaders.imgsz)   # loss, optimizer, EMA, scaler
    session = resume(run, Session(...), ckpt)               # optimizer/EMA/scaler/counters of a resumed run

``setup`` chains them and wraps the model for DDP. ``release_layers`` is the --unfreeze-epoch step.
"""
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import yaml

from models.prefix_memo import PrefixMemo
from models.yolo import Model
from utils.data.sizes import check_imgsz
from utils.train.autoanchor import check_anchors
from utils.train.autobatch import autobatch
from utils.weights.checkpoint import read_weights
from utils.freeze.class_map import build_class_map
from utils.data.config import check_dataset, load_hyp
from utils.data.datasets import create_dataloader
from utils.weights.download import resolve_weights
from utils.train.ema import ModelEMA, ema_settings
from utils.train.engine import NOMINAL_BATCH, Learner, accumulate_steps, seed_everything
from utils.freeze.plan import FreezePlan, bn_stats_option, parse_freeze
from utils.train.loss import ComputeLoss, scale_loss_gains
from utils.freeze.optim import make_optimizer, optimizer_param_groups, replace_optimizer, scale_lr
from utils.eval.plots import plot_labels
from utils.freeze.transfer import class_rows_for, format_transfer_report, transfer_weights


@dataclass
class RunConfig:
    """Hyper-parameters, the data YAML (checked) and the classes the model and loss see."""
    hyp: dict
    data: dict
    nc: int
    names: list


@dataclass
class Loaders:
    """Train loader and its dataset (every process), val loader (main process only), the checked image size."""
    train: object
    dataset: object
    val: object
    imgsz: int


@dataclass
class Progress:
    """Where the run stands: the first epoch to train, the best fitness so far and its epoch, and for a run
    interrupted mid-epoch where in ``start_epoch`` it stopped ({'epoch', 'batch', 'ni'}, see trainer.py)."""
    start_epoch: int = 0
    best_fitness: float = 0.0
    best_epoch: int = -1
    resume_at: dict = None


@dataclass
class Session:
    """What ``setup`` built: the run's configuration, loaders, learner, freeze plan and progress."""
    config: RunConfig
    loaders: Loaders
    learner: Learner
    plan: FreezePlan
    weight_decay: float  # scaled to the batch size; a release builds its parameter groups with it
    progress: Progress = field(default_factory=Progress)


def load_config(run, ckpt=None):
    """hyp (the checkpoint's on a resume), the data YAML, and the classes (one 'item' with --single-cls)."""
    hyp = ckpt['hyp'] if ckpt else load_hyp(run.opt.hyp)
    data = check_dataset(run.opt.data)
    # --single-cls: the data keep their classes (labels are checked against them); model and loss see one class
    nc, names = (1, ['item']) if run.opt.single_cls else (data['nc'], list(data['names']))
    if run.main:
        (run.save_dir / 'hyp.yaml').write_text(yaml.safe_dump(hyp, sort_keys=False))
    return RunConfig(hyp, data, nc, names)


def build_model(run, config):
    """Model from --cfg / the checkpoint's YAML, with pretrained weights transferred where shapes match."""
    opt = run.opt
    weights = read_weights(resolve_weights(opt.weights)) if opt.weights else None
    cfg = opt.cfg or (weights['yaml'] if weights else 'v6/yolov5s.yaml')
    if not weights:
        model = Model(cfg, nc=config.nc).to(run.device)
    else:
        cmap = build_class_map(config.names, weights['names'], None if opt.single_cls else config.data['class_map'],
                               where=config.data.get('yaml_file') or 'data')
        model = Model(cfg, nc=config.nc, class_rows=class_rows_for(cmap, weights['yaml'])).to(run.device)
        report = transfer_weights(model, weights['state_dict'], opt.weights, cmap, weights['yaml'],
                                  keep_anchors=bool(opt.cfg))  # --cfg anchors are the user's choice
        run.log(format_transfer_report(report))
    model.names = list(config.names)
    return model


def setup_model(run, config, ckpt=None):
    """The model (new, pretrained or resumed) and its FreezePlan, applied: from --freeze on a new run, from the
    checkpoint (with the fingerprints of the run's start) on a resume."""
    seed_everything(run.opt.seed)  # same initial weights (and autoanchor) for the same seed
    if ckpt:
        model = Model(ckpt['yaml']).to(run.device)
        model.load_state_dict(ckpt['model'])
        model.names = list(ckpt['names'])
        plan = FreezePlan.from_checkpoint(ckpt)
    else:
        model = build_model(run, config)
        plan = FreezePlan.from_spec(run.opt.freeze, model, bn_stats=bn_stats_option(run.opt.freeze_bn_stats))
    plan.apply(model)
    run.log(plan.report(model, run.opt.imgsz))
    return model, plan


def log_kept_difficult(run, dataset):
    n = sum(int(r.difficult.sum()) for r in dataset.records)
    if n and run.main:
        run.log(f'keep_difficult 1: {n} VOC difficult boxes are trained on as objects (upstream leaves them out, '
                f'so they are taught as background: keep_difficult 0)')


def setup_loaders(run, config, model, fresh):
    """Train loader (every process) and val loader (main process); labels plot and anchor check on a new run."""
    opt, hyp = run.opt, config.hyp
    gs = max(int(model.stride.max()), 32)
    imgsz = check_imgsz(opt.imgsz, gs)[0]
    batch = opt.batch_size // max(run.world_size, 1)
    keep_difficult = bool(hyp.get('keep_difficult', 0))
    with run.phases.phase('scans and caches'):
        train_loader, dataset = create_dataloader(
            config.data['train'], imgsz, batch, gs, hyp=hyp, augment=True, rect=opt.rect, cache=opt.cache,
            workers=opt.workers, shuffle=True, rank=run.rank, single_cls=opt.single_cls, seed=opt.seed,
            data=config.data, prefix='train: ', image_weights=opt.image_weights,
            keep_difficult=keep_difficult)
        if keep_difficult:
            log_kept_difficult(run, dataset)
        if not run.main:
            return Loaders(train_loader, dataset, None, imgsz)
        val_loader, _ = create_dataloader(
            config.data['val'], imgsz, batch * 2, gs, hyp=hyp, augment=False, rect=True, cache=opt.cache,
            workers=opt.workers, pad=0.5, single_cls=opt.single_cls, data=config.data, prefix='val: ', keep_workers=True)
    if fresh and not opt.noplots:
        with run.phases.phase('labels plot'):
            plot_labels(dataset.labels, config.names, run.save_dir)
    if fresh and not opt.noautoanchor:
        with run.phases.phase('autoanchor'):
            check_anchors(dataset, model, thr=hyp['anchor_t'], imgsz=imgsz, log=run.log, replace=not opt.weights)
    return Loaders(train_loader, dataset, val_loader, imgsz)


def choose_batch_size(run, model):
    """--batch-size -1: AutoBatch measures the model as frozen and sets ``opt.batch_size`` (saved in opt.yaml and
    the checkpoints, so a resumed run keeps it)."""
    imgsz = check_imgsz(run.opt.imgsz, max(int(model.stride.max()), 32))[0]
    run.opt.batch_size = autobatch(model, imgsz, run.device, log=run.log)
    if run.main:
        write_options(run.save_dir, run.opt)


def write_options(save_dir, opt):
    """The run's options as ``opt.yaml``."""
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opt).items()}
    (save_dir / 'opt.yaml').write_text(yaml.safe_dump(options, sort_keys=False))


def setup_learner(run, config, model, plan, imgsz):
    """Loss, optimizer (trainable parameters only), EMA (skipping the plan's frozen tensors), AMP scaler.
    Returns the Learner (model not yet DDP-wrapped) and the batch-scaled weight decay."""
    opt, hyp = run.opt, config.hyp
    compute_loss = ComputeLoss(model, scale_loss_gains(hyp, model.model[-1].nl, config.nc, imgsz),
                               opt.label_smoothing)
    nbs = hyp.get('nbs', NOMINAL_BATCH)
    weight_decay = hyp['weight_decay'] * opt.batch_size * accumulate_steps(opt.batch_size, nbs) / nbs
    groups = backbone_scaled(optimizer_param_groups(model, weight_decay), model, hyp)
    optimizer = make_optimizer(groups, opt.optimizer, hyp['lr0'], hyp['momentum'])
    if any('lr_scale' in g for g in groups):
        run.log(f"backbone_lr {hyp['backbone_lr']}: the backbone's trainable parameters train at "
                f"{hyp['backbone_lr']}x the LR")
    where = str(opt.hyp) if isinstance(opt.hyp, (str, Path)) and opt.hyp else 'hyp'  # a dict from train.run(hyp=)
    ema = ModelEMA(model, *ema_settings(hyp, where)) if run.main else None
    if ema:
        ema.set_frozen(plan.ema_skip)
        ema.ema.prefix_memo = PrefixMemo.for_frozen(model, run.device)  # validation reuses frozen layers' outputs
    scaler = torch.amp.GradScaler('cuda', enabled=run.amp)
    return Learner(model, compute_loss, optimizer, scaler, ema), weight_decay


def backbone_scaled(groups, model, hyp):
    """Optimizer groups in which the backbone (the model YAML's backbone section) trains at ``hyp['backbone_lr']``
    times the LR (optional hyp key, default 1: one LR for all)."""
    return scale_lr(groups, model, parse_freeze('backbone', model), hyp.get('backbone_lr', 1.0))


def release_layers(run, session, epoch, nb):
    """--unfreeze-epoch: the plan releases every frozen layer; returns the Learner with an optimizer whose new
    groups warm the released layers up over one epoch (``nb`` iterations) and an EMA that now averages them.
    The model comes back unwrapped: DDP must re-wrap it to sync the released parameters."""
    learner, hyp = session.learner, session.config.hyp
    model = getattr(learner.model, 'module', learner.model)
    groups = session.plan.release(model, learner.optimizer, session.weight_decay, start_iter=epoch * nb,
                                  ramp_iters=nb)
    groups = backbone_scaled(groups, model, hyp)
    optimizer = replace_optimizer(learner.optimizer, groups, run.opt.optimizer, hyp['lr0'], hyp['momentum'])
    if learner.ema:
        learner.ema.set_frozen(session.plan.ema_skip)
        learner.ema.ema.prefix_memo = None  # no frozen layers left
    run.log(f'epoch {epoch + 1}: unfroze all layers; their LR warms up over one epoch')
    return replace(learner, model=model, optimizer=optimizer)


def resume(run, session, ckpt):
    """A resumed run's optimizer, EMA, scaler and counters (a release the run had passed is re-done first, so the
    optimizer has the groups its saved state was written for)."""
    learner = session.learner
    if session.plan.released:
        learner = release_layers(run, session, run.opt.unfreeze_epoch, len(session.loaders.train))
    learner.optimizer.load_state_dict(ckpt['optimizer'])
    if learner.ema:
        learner.ema.ema.load_state_dict(ckpt['ema'])
        learner.ema.updates = ckpt['ema_updates']
    if ckpt.get('scaler'):
        learner.scaler.load_state_dict(ckpt['scaler'])
    start, at = ckpt['epoch'] + 1, ckpt.get('resume_at')
    progress = Progress(start, ckpt['best_fitness'], ckpt.get('best_epoch', start - 1), at)
    where = f", batch {at['batch'] + 1}" if at else ''
    run.log(f"Resuming {run.opt.resume} from epoch {start + 1}/{run.opt.epochs}{where}")
    return replace(session, learner=learner, progress=progress)


def wrap_ddp(run, model):
    """The model wrapped in DistributedDataParallel when several processes train; as it is otherwise."""
    if run.world_size == 1:
        return model
    ids = [run.device.index] if run.device.type == 'cuda' else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def setup(run, ckpt=None):
    """Everything before the first epoch (see the module docstring); returns the Session."""
    config = load_config(run, ckpt)
    with run.phases.phase('model build and transfer'):
        model, plan = setup_model(run, config, ckpt)
    if run.opt.batch_size == -1:
        choose_batch_size(run, model)
    loaders = setup_loaders(run, config, model, fresh=ckpt is None)
    learner, weight_decay = setup_learner(run, config, model, plan, loaders.imgsz)
    session = Session(config, loaders, learner, plan, weight_decay)
    if ckpt:
        session = resume(run, session, ckpt)
    model = session.learner.model
    if run.world_size > 1 and run.opt.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return replace(session, learner=replace(session.learner, model=wrap_ddp(run, model)))

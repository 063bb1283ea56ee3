"""Everything a training run builds before its first epoch, one step at a time; each step returns what it built.

    config = load_config(run, ckpt)                         # hyp, data, classes
    model, plan = setup_model(run, config, ckpt)            # weights in, FreezePlan applied (fingerprints taken)
    run = choose_batch_size(run, model)                     # --batch-size -1 only: AutoBatch on the frozen model
    loaders = setup_loaders(run, config, model, fresh)      # train/val loaders, labels plot, autoanchor,
                                                            # --cache features
    state = setup_learner(run, config, model, plan, loaders)   # loss, optimizer, EMA, scaler: the TrainState
    resume(run, state, ckpt)                                # optimizer/EMA/scaler/counters of a resumed run

``setup`` chains them and wraps the model for DDP. ``release_layers`` is the --unfreeze-epoch step. ``run`` is
the run's ``TrainConfig`` (utils/train/config.py), never changed; ``TrainState`` is everything that changes.
"""
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from models.prefix_memo import PrefixMemo
from models.yolo import Model, build_model as build_model_from_yaml
from utils.data.sizes import check_imgsz
from utils.weights.checkpoint import read_weights
from utils.data.config import check_dataset, load_hyp
from utils.data.datasets import create_dataloader
from utils.weights.official import resolve_weights
from utils.train.engine import NOMINAL_BATCH, ModelEMA, accumulate_steps, ema_settings, seed_everything
from utils.freeze.plan import FreezePlan, bn_stats_option, parse_freeze
from utils.train.loss import ComputeLoss, check_anchors, scale_loss_gains
from utils.freeze.optim import make_optimizer, optimizer_param_groups, replace_optimizer, scale_lr
from utils.eval.plots import plot_labels
from utils.freeze.transfer import build_class_map, class_rows_for, format_transfer_report, transfer_weights


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
class TrainState:
    """Everything that changes while a run trains, in one place: what a step works on (the model, DDP-wrapped
    when distributed; its loss; the optimizer; the AMP scaler; the EMA, None outside the main process), the freeze
    plan and loaders, and where the run stands. ``setup`` builds it; the epoch loop updates it in place."""
    model: torch.nn.Module
    compute_loss: object
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: object
    plan: FreezePlan
    loaders: Loaders
    hyp: dict
    data: dict
    names: list
    weight_decay: float  # scaled to the batch size; a release builds its parameter groups with it
    epoch: int = 0  # the epoch being trained (the first one to train, before the loop)
    best_fitness: float = 0.0
    best_epoch: int = -1  # the epoch best.pt was saved at (-1: none yet)
    ni: int = 0  # iterations (batches) trained since the run began
    last_step: int = -1  # the iteration of the last optimizer step
    skip_batches: int = 0  # batches of ``epoch`` trained before an interruption (a resume skips them)
    mloss: list = None  # their mean losses; after a stop mid-epoch, those of the batches done
    stopped_after: int = None  # set when a signal stopped the epoch: the batches of it done

    @property
    def bare_model(self):
        """The model without its DDP wrapper."""
        return getattr(self.model, 'module', self.model)


def load_config(run, ckpt=None):
    """hyp (the checkpoint's on a resume), the data YAML, and the classes (one 'item' with --single-cls)."""
    hyp = ckpt['hyp'] if ckpt else load_hyp(run.hyp)
    data = check_dataset(run.data)
    # --single-cls: the data keep their classes (labels are checked against them); model and loss see one class
    nc, names = (1, ['item']) if run.single_cls else (data['nc'], list(data['names']))
    if run.main:
        (run.save_dir / 'hyp.yaml').write_text(yaml.safe_dump(hyp, sort_keys=False))
    return RunConfig(hyp, data, nc, names)


def build_model(run, config):
    """Model from --cfg / the checkpoint's YAML, with pretrained weights transferred where shapes match."""
    weights = read_weights(resolve_weights(run.weights)) if run.weights else None
    cfg = run.cfg or (weights['yaml'] if weights else 'v6/yolov5s.yaml')
    if run.keep_classes:  # checkpoint's head kept beside a trainable copy (utils/freeze/keep.py)
        from utils.freeze.keep import keep_classes_model  # lazy: only --keep-classes runs need it
        model, report = keep_classes_model(weights, config.names, config.data['class_map'], list(run.freeze),
                                           config.data.get('yaml_file') or 'data', run.weights)
        run.log(report)
        return model.to(run.device)
    if not weights:
        model = Model(cfg, nc=config.nc).to(run.device)
    else:
        cmap = build_class_map(config.names, weights['names'], None if run.single_cls else config.data['class_map'],
                               where=config.data.get('yaml_file') or 'data')
        model = Model(cfg, nc=config.nc, class_rows=class_rows_for(cmap, weights['yaml'])).to(run.device)
        report = transfer_weights(model, weights['state_dict'], run.weights, cmap, weights['yaml'],
                                  keep_anchors=bool(run.cfg))  # --cfg anchors are the user's choice
        run.log(format_transfer_report(report))
    model.names = list(config.names)
    return model


def setup_model(run, config, ckpt=None):
    """The model (new, pretrained or resumed) and its FreezePlan, applied: from --freeze on a new run, from the
    checkpoint (with the fingerprints of the run's start) on a resume."""
    seed_everything(run.seed)  # same initial weights (and autoanchor) for the same seed
    if ckpt:
        model = build_model_from_yaml(ckpt['yaml']).to(run.device)
        model.load_state_dict(ckpt['model'])
        model.names = list(ckpt['names'])
        plan = FreezePlan.from_checkpoint(ckpt)
    else:
        model = build_model(run, config)
        plan = FreezePlan.from_spec(list(run.freeze), model, bn_stats=bn_stats_option(run.freeze_bn_stats))
    if getattr(model, 'kept', None):
        model.trainable_only = True  # a kept model (--keep-classes) validates on the data's classes while it trains
    plan.apply(model)
    run.log(plan.report(model, run.imgsz))
    return model, plan


def log_kept_difficult(run, dataset):
    n = sum(int(r.difficult.sum()) for r in dataset.records)
    if n and run.main:
        run.log(f'keep_difficult 1: {n} VOC difficult boxes are trained on as objects (upstream leaves them out, '
                f'so they are taught as background: keep_difficult 0)')


def setup_loaders(run, config, model, fresh):
    """Train loader (every process) and val loader (main process); labels plot and anchor check on a new run."""
    hyp = config.hyp
    gs = max(int(model.stride.max()), 32)
    imgsz = check_imgsz(run.imgsz, gs)[0]
    batch = run.batch_size // max(run.world_size, 1)
    keep_difficult = bool(hyp.get('keep_difficult', 0))
    cache = 'auto' if run.cache == 'features' else run.cache  # images: as by default; the features: later
    with run.phases.phase('scans and caches'):
        train_loader, dataset = create_dataloader(
            config.data['train'], imgsz, batch, gs, hyp=hyp, augment=True, rect=run.rect, cache=cache,
            workers=run.workers, shuffle=True, rank=run.rank, single_cls=run.single_cls, seed=run.seed,
            data=config.data, prefix='train: ', image_weights=run.image_weights,
            keep_difficult=keep_difficult)
        if keep_difficult:
            log_kept_difficult(run, dataset)
        if not run.main:
            return Loaders(train_loader, dataset, None, imgsz)
        val_loader, _ = create_dataloader(
            config.data['val'], imgsz, batch * 2, gs, hyp=hyp, augment=False, rect=True, cache=cache,
            workers=run.workers, pad=0.5, single_cls=run.single_cls, data=config.data, prefix='val: ',
            keep_workers=True)
    if fresh and not run.noplots:
        with run.phases.phase('labels plot'):
            plot_labels(dataset.labels, config.names, run.save_dir)
    if fresh and not run.noautoanchor:
        with run.phases.phase('autoanchor'):
            check_anchors(dataset, model, thr=hyp['anchor_t'], imgsz=imgsz, log=run.log, replace=not run.weights)
    if run.cache == 'features':  # the frozen layers' outputs of K views per image, computed once
        from utils.train.feature_cache import feature_loader  # lazy: only --cache features runs need it
        with run.phases.phase('feature cache'):
            train_loader = feature_loader(run, model, dataset, run.cache_views, hyp, log=run.log)
    return Loaders(train_loader, dataset, val_loader, imgsz)


def choose_batch_size(run, model):
    """--batch-size -1: AutoBatch measures the model as frozen; returns the TrainConfig with its batch size (saved
    in opt.yaml and the checkpoints, so a resumed run keeps it)."""
    from utils.train.autobatch import autobatch  # only for --batch-size -1
    imgsz = check_imgsz(run.imgsz, max(int(model.stride.max()), 32))[0]
    run = run.with_batch_size(autobatch(model, imgsz, run.device, log=run.log))
    if run.main:
        write_options(run.save_dir, run.options)
    return run


def write_options(save_dir, options):
    """The run's options (a dict) as ``opt.yaml``."""
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in dict(options).items()}
    (save_dir / 'opt.yaml').write_text(yaml.safe_dump(options, sort_keys=False))


def setup_learner(run, config, model, plan, loaders):
    """Loss, optimizer (trainable parameters only), EMA (skipping the plan's frozen tensors), AMP scaler: the
    TrainState of a new run (model not yet DDP-wrapped; weight decay scaled to the batch size)."""
    hyp = config.hyp
    compute_loss = ComputeLoss(model, scale_loss_gains(hyp, model.model[-1].nl, config.nc, loaders.imgsz),
                               run.label_smoothing)
    nbs = hyp.get('nbs', NOMINAL_BATCH)
    weight_decay = hyp['weight_decay'] * run.batch_size * accumulate_steps(run.batch_size, nbs) / nbs
    groups = backbone_scaled(optimizer_param_groups(model, weight_decay), model, hyp)
    optimizer = make_optimizer(groups, run.optimizer, hyp['lr0'], hyp['momentum'])
    if any('lr_scale' in g for g in groups):
        run.log(f"backbone_lr {hyp['backbone_lr']}: the backbone's trainable parameters train at "
                f"{hyp['backbone_lr']}x the LR")
    where = str(run.hyp) if isinstance(run.hyp, (str, Path)) and run.hyp else 'hyp'  # a dict from train.run(hyp=)
    ema = ModelEMA(model, *ema_settings(hyp, where)) if run.main else None
    if ema:
        ema.set_frozen(plan.ema_skip)
        ema.ema.prefix_memo = PrefixMemo.for_frozen(model, run.device)  # validation reuses frozen layers' outputs
    scaler = torch.amp.GradScaler('cuda', enabled=run.amp)
    return TrainState(model, compute_loss, optimizer, scaler, ema, plan, loaders, hyp, config.data,
                      list(config.names), weight_decay)


def backbone_scaled(groups, model, hyp):
    """Optimizer groups in which the backbone (the model YAML's backbone section) trains at ``hyp['backbone_lr']``
    times the LR (optional hyp key, default 1: one LR for all)."""
    return scale_lr(groups, model, parse_freeze('backbone', model), hyp.get('backbone_lr', 1.0))


def release_layers(run, state, epoch):
    """--unfreeze-epoch: the plan releases every frozen layer; ``state`` gets an optimizer whose new groups warm
    the released layers up over one epoch and an EMA that now averages them. The model comes back unwrapped:
    DDP must re-wrap it to sync the released parameters."""
    model, hyp, nb = state.bare_model, state.hyp, len(state.loaders.train)
    groups = state.plan.release(model, state.optimizer, state.weight_decay, start_iter=epoch * nb, ramp_iters=nb)
    groups = backbone_scaled(groups, model, hyp)
    state.optimizer = replace_optimizer(state.optimizer, groups, run.optimizer, hyp['lr0'], hyp['momentum'])
    if state.ema:
        state.ema.set_frozen(state.plan.ema_skip)
        state.ema.ema.prefix_memo = None  # no frozen layers left
    state.model = model
    run.log(f'epoch {epoch + 1}: unfroze all layers; their LR warms up over one epoch')


def resume(run, state, ckpt):
    """A resumed run's optimizer, EMA, scaler and counters (a release the run had passed is re-done first, so the
    optimizer has the groups its saved state was written for). A run stopped mid-epoch continues where it
    stopped: its step counters, mean losses and the gradients of its unfinished accumulation are put back."""
    if state.plan.released:
        release_layers(run, state, run.unfreeze_epoch)
    state.optimizer.load_state_dict(ckpt['optimizer'])
    if state.ema:
        state.ema.ema.load_state_dict(ckpt['ema'])
        state.ema.updates = ckpt['ema_updates']
    if ckpt.get('scaler'):
        state.scaler.load_state_dict(ckpt['scaler'])
    start, at, nb = ckpt['epoch'] + 1, ckpt.get('resume_at'), len(state.loaders.train)
    state.epoch, state.best_fitness, state.best_epoch = start, ckpt['best_fitness'], ckpt.get('best_epoch', start - 1)
    state.ni, state.last_step = start * nb, start * nb - 1
    if at:
        state.ni, state.last_step, state.mloss, state.skip_batches = at['ni'], at['last_step'], at['mloss'], at['batch']
        pending = ckpt.get('pending_grads') or {}
        for name, p in state.bare_model.named_parameters():
            if name in pending:
                p.grad = pending[name].to(p.device)
    where = f", batch {at['batch'] + 1}" if at else ''
    run.log(f"Resuming {run.resume} from epoch {start + 1}/{run.epochs}{where}")


def wrap_ddp(run, model):
    """The model wrapped in DistributedDataParallel when several processes train; as it is otherwise."""
    if run.world_size == 1:
        return model
    ids = [run.device.index] if run.device.type == 'cuda' else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def setup(run, ckpt=None):
    """Everything before the first epoch (see the module docstring); returns the run's TrainConfig (a new one
    when AutoBatch chose the batch size) and its TrainState."""
    config = load_config(run, ckpt)
    with run.phases.phase('model build and transfer'):
        model, plan = setup_model(run, config, ckpt)
    if run.batch_size == -1:
        run = choose_batch_size(run, model)
    loaders = setup_loaders(run, config, model, fresh=ckpt is None)
    state = setup_learner(run, config, model, plan, loaders)
    if ckpt:
        resume(run, state, ckpt)
    if run.world_size > 1 and run.sync_bn:
        state.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(state.model)
    state.model = wrap_ddp(run, state.model)
    return run, state

"""One epoch of training and what it needs: seeding, the LR schedule and warm-up, gradient accumulation, the
optimizer step, the EMA of the weights, and stopping on Ctrl-C/SIGTERM (optimizers: utils/freeze/optim.py; the
epoch loop: utils/train/trainer.py). Each piece is tested on its own.
"""
import math
import os
import random
import signal
import threading
from copy import deepcopy

import numpy as np
import torch
from tqdm import tqdm

from utils.errors import InputError

NOMINAL_BATCH = 64  # YOLOv5 accumulates gradients up to this batch size (hyp key 'nbs' overrides)
WARMUP_SHARE = 0.1  # warm-up takes at most this share of a run's iterations (hyp key 'warmup_share' overrides)


def seed_everything(seed):
    """Seed Python, NumPy and torch. Called at every epoch with seed + epoch, so a resumed run replays it."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def accumulate_steps(batch_size, nbs=NOMINAL_BATCH):
    """Batches whose gradients are summed before one optimizer step, to reach the nominal batch ``nbs``."""
    return max(round(nbs / batch_size), 1)


def lr_factor(epoch, epochs, lrf, cos=False):
    """LR multiplier at ``epoch``: linear or cosine from 1 to ``lrf`` over the run."""
    if cos:
        return ((1 - math.cos(epoch * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return (1 - epoch / epochs) * (1.0 - lrf) + lrf


def set_lr(optimizer, ni, epoch, epochs, hyp, warmup_iters, cos=False):
    """Per-iteration LR and momentum: warm-up (bias LR from ``warmup_bias_lr`` down, others from 0 up, momentum
    from ``warmup_momentum``) during the first ``warmup_iters`` iterations, then the epoch schedule."""
    f = lr_factor(epoch, epochs, hyp['lrf'], cos)
    for g in optimizer.param_groups:
        target = g['initial_lr'] * f
        if ni < warmup_iters:
            start = hyp['warmup_bias_lr'] if g.get('name') == 'bias' else 0.0
            g['lr'] = float(np.interp(ni, [0, warmup_iters], [start, target]))
            momentum = float(np.interp(ni, [0, warmup_iters], [hyp['warmup_momentum'], hyp['momentum']]))
        else:
            g['lr'], momentum = target, hyp['momentum']  # the warm-up's last value is short of the target
        if 'momentum' in g:
            g['momentum'] = momentum
        if 'ramp' in g:  # newly unfrozen parameters warm up on their own
            start_iter, length = g['ramp']
            g['lr'] *= min(1.0, max(0.0, (ni - start_iter) / max(length, 1)))
        g['lr'] *= g.get('lr_scale', 1.0)  # hyp backbone_lr: the backbone's share of the LR


def warmup_iterations(hyp, nb, epochs):
    """Warm-up length in iterations: YOLOv5's ``warmup_epochs`` (at least 100 iterations), but never more than
    ``warmup_share`` of the run, so a short fine-tune is not spent warming up (4 batches x 20 epochs: 8, not 80)."""
    yolo = max(round(hyp['warmup_epochs'] * nb), 100)
    return min(yolo, max(round(hyp.get('warmup_share', WARMUP_SHARE) * epochs * nb), 1))


def warmup_accumulate(ni, warmup_iters, batch_size, nbs=NOMINAL_BATCH):
    """Accumulation steps: 1 at the start of warm-up, growing to the nominal batch by its end."""
    if ni >= warmup_iters:
        return accumulate_steps(batch_size, nbs)
    return max(1, round(float(np.interp(ni, [0, warmup_iters], [1, nbs / batch_size]))))


def optimizer_step(model, optimizer, scaler, ema):
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g['params']], max_norm=10.0)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        ema.update(model)


def model_input(imgs, device):
    """A batch's model input on ``device``: uint8 images as floats in 0-1, or a loader's own batch object (the
    ``CachedBatch`` of --cache features, utils/train/feature_cache.py) moved there."""
    if isinstance(imgs, torch.Tensor):
        return imgs.to(device, non_blocking=True).float() / 255
    return imgs.to(device)


def forward(model, x):
    """The model's output for ``model_input``'s value: images run through every layer, a cached batch from the
    first layer after the cached ones."""
    return model(x) if isinstance(x, torch.Tensor) else x.forward(model)


def train_one_epoch(run, state, loader, should_stop=None, on_first_batch=None, multi_scale=None):
    """One pass over ``loader`` at ``state.epoch`` (``run``: a TrainConfig; ``state``: the TrainState, whose
    model, optimizer, scaler, EMA and step counters ``ni``/``last_step`` it updates). A resumed epoch skips its
    first ``state.skip_batches`` batches (loaded, so the data order and augmentation replay, but not trained
    again; ``state.mloss`` holds their mean losses). ``should_stop()`` is asked after each batch: True ends the
    epoch there with ``state.stopped_after`` = batches done and ``state.mloss`` their mean losses (any gradients
    of an unfinished accumulation stay in ``.grad``). ``on_first_batch(imgs, targets)``; ``multi_scale``: a
    ``MultiScale``. The loader yields (images or a cached batch, targets, paths, metas): ``model_input``/``forward``.
    Returns the mean (box, obj, cls) losses."""
    model, optimizer, scaler, ema, hyp, device = (state.model, state.optimizer, state.scaler, state.ema, state.hyp,
                                                  run.device)
    model.train()
    nb, epoch, skip, show = len(loader), state.epoch, state.skip_batches, run.main
    warmup_iters, nbs = warmup_iterations(hyp, nb, run.epochs), hyp.get('nbs', NOMINAL_BATCH)
    mloss = torch.tensor(state.mloss, device=device) if skip else torch.zeros(3, device=device)
    pbar = tqdm(enumerate(loader), total=nb, disable=not show, bar_format='{l_bar}{bar:10}{r_bar}')
    state.stopped_after = None
    for i, (imgs, targets, _, _) in pbar:
        if i < skip:
            continue
        set_lr(optimizer, state.ni, epoch, run.epochs, hyp, warmup_iters, run.cos_lr)
        imgs = model_input(imgs, device)
        if multi_scale is not None:  # this batch's size from (seed, epoch, i)
            imgs = multi_scale(imgs, epoch, i)
        targets = targets.to(device)
        with torch.autocast(device_type=device.type, enabled=run.amp):
            loss, items = state.compute_loss(forward(model, imgs), targets)
            loss = loss * run.world_size  # DDP averages gradients over processes
        scaler.scale(loss).backward()
        if state.ni - state.last_step >= warmup_accumulate(state.ni, warmup_iters, run.batch_size, nbs):
            optimizer_step(model, optimizer, scaler, ema)
            state.last_step = state.ni
        state.ni += 1
        mloss = (mloss * i + items) / (i + 1)
        if i == 0 and on_first_batch is not None and isinstance(imgs, torch.Tensor):  # images to plot
            on_first_batch(imgs, targets)
        if show:
            mem = f'{torch.cuda.memory_reserved(device) / 1e9:.2f}G' if device.type == 'cuda' else 'cpu'
            pbar.set_description(f"{epoch + 1}/{run.epochs} {mem} box {mloss[0]:.4f} obj {mloss[1]:.4f} "
                                 f"cls {mloss[2]:.4f} inst {targets.shape[0]} {imgs.shape[-1]}px")
        if should_stop is not None and i < nb - 1 and should_stop():
            state.stopped_after, state.mloss = i + 1, mloss.cpu().tolist()
            return state.mloss  # a partial accumulation stays in .grad
    if state.last_step != state.ni - 1:  # flush a partial accumulation: each epoch is self-contained (resume)
        optimizer_step(model, optimizer, scaler, ema)
        state.last_step = state.ni - 1
    return mloss.cpu().tolist()


# ---------------------------------------------------------------- the EMA
# Exponential moving average of model weights (used for validation and saving), as YOLOv5's ModelEMA. Frozen
# tensors are never touched, so the EMA copy of a frozen layer stays bit-identical to the model's.
DECAY, TAU = 0.9999, 2000  # YOLOv5's EMA: full decay, reached over about TAU updates


class ModelEMA:
    """Keeps ``ema`` = decay * ema + (1 - decay) * model, with the decay ramped up over the first ``tau``-ish
    updates (YOLOv5's 0.9999 and 2000). ``tau`` 0: no ramp, the full decay from the first update (a pretrained
    start, whose first weights are already good; see ``ema_settings``)."""

    def __init__(self, model, decay=DECAY, tau=TAU, updates=0):
        self.ema = deepcopy(getattr(model, 'module', model)).eval()
        self.ema.requires_grad_(False)
        self.updates = updates
        self.decay, self.tau = decay, tau
        self.skip = set()  # names of frozen tensors (set_frozen)

    def set_frozen(self, names):
        """Tensors never averaged (the frozen parameters and BatchNorm buffers)."""
        self.skip = set(names)

    def current_decay(self):
        if self.tau <= 0:
            return self.decay
        return self.decay * (1 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model):
        self.updates += 1
        d = self.current_decay()
        src = getattr(model, 'module', model).state_dict()
        ema_t, model_t = [], []
        for k, v in self.ema.state_dict().items():
            if k in self.skip:
                continue
            if v.dtype.is_floating_point:
                ema_t.append(v)
                model_t.append(src[k].detach().to(v.dtype))
            else:
                v.copy_(src[k])  # integer buffers (num_batches_tracked) follow the model
        if ema_t:
            torch._foreach_lerp_(ema_t, model_t, 1.0 - d)


def ema_settings(hyp, where='hyp'):
    """ModelEMA's (decay, tau) from the optional hyp keys ``ema_decay`` and ``ema_tau`` (YOLOv5's 0.9999 and 2000
    where absent); ``where`` names the hyp file in the error."""
    decay, tau = float(hyp.get('ema_decay', DECAY)), float(hyp.get('ema_tau', TAU))
    if not 0.0 <= decay < 1.0 or tau < 0:
        raise InputError(f'{where}: ema_decay {decay} / ema_tau {tau}: expected 0 <= ema_decay < 1 and ema_tau >= 0')
    return decay, tau


# ---------------------------------------------------------------- Ctrl-C and SIGTERM
# Ctrl-C and SIGTERM during training: the first signal asks the run to stop at the next safe point, a second
# one ends the process at once.
#
#     with StopOnSignal(log=print) as stop:
#         for batch in batches:
#             step(batch)
#             if stop.requested():     # the trainer saves a resumable last.pt, then raises Interrupted
#                 break
#
# A "safe point" is the end of the current batch: the trainer saves the model, optimizer, EMA, the position in the
# epoch and the gradients of an unfinished accumulation, so a resume continues exactly where the run stopped. At
# once means ``os._exit``: nothing else runs, and the ``last.pt`` on disk (always written atomically) is the
# previous complete one.
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal:
    """Context manager that installs the two-stage SIGINT/SIGTERM handler in the main thread and restores the
    previous handlers on exit. ``requested()`` is True once a first signal arrived; ``signum`` says which."""

    def __init__(self, log=print):
        self.log, self.signum, self._previous = log, None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        return False

    def requested(self):
        return self.signum is not None

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signum is not None:  # the second signal: leave now, without running anything else
            os.write(2, f'\n{name} again: exiting now; the last complete last.pt stays valid\n'.encode())
            os._exit(128 + signum)
        self.signum = signum
        self.log(f'\n{name}: stopping after the current batch and saving a resumable last.pt '
                 f'(send {name} again to exit at once)')

"""Training machinery: LR schedule, warm-up, one epoch of training, seeding (optimizers: utils/freeze/optim.py).

``train.py`` orchestrates; these functions hold the logic and are tested on their own.
"""
import math
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

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


class StepState:
    """Counters that survive across epochs: global iteration and last optimizer step. When
    ``cfg['should_stop']`` ends an epoch early: ``stopped_after`` (batches of it done; None when it ran to the
    end) and ``mloss`` (their mean losses), with any gradients of an unfinished accumulation left in ``.grad``."""

    def __init__(self, ni=0, last_step=-1, mloss=None):
        self.ni, self.last_step, self.mloss = ni, last_step, mloss
        self.stopped_after = None


def optimizer_step(model, optimizer, scaler, ema):
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g['params']], max_norm=10.0)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        ema.update(model)


@dataclass
class Learner:
    """What a training step works on: the model (DDP-wrapped when distributed), its loss, the optimizer, the AMP
    scaler and the EMA (None outside the main process)."""
    model: torch.nn.Module
    compute_loss: object
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: object = None


def train_one_epoch(learner, loader, device, epoch, cfg, state, show=True):
    """One pass over ``loader``. ``cfg`` holds epochs, hyp, warmup_iters, batch_size, cos_lr, amp, world_size,
    imgsz, optionally multi_scale, on_first_batch, ``skip_batches`` (a resumed epoch: batches loaded, so the data
    order and augmentation replay, but not trained again; ``state.mloss`` holds their mean losses) and
    ``should_stop()`` (asked after each batch; True ends the epoch there, see ``StepState``). Returns the mean
    (box, obj, cls) losses and images/s."""
    model, optimizer, scaler, ema = learner.model, learner.optimizer, learner.scaler, learner.ema
    model.train()
    nb, skip, should_stop = len(loader), cfg.get('skip_batches', 0), cfg.get('should_stop')
    mloss = torch.tensor(state.mloss, device=device) if skip else torch.zeros(3, device=device)
    pbar = tqdm(enumerate(loader), total=nb, disable=not show, bar_format='{l_bar}{bar:10}{r_bar}')
    t0, n_img, state.stopped_after = time.time(), 0, None
    for i, (imgs, targets, _, _) in pbar:
        if i < skip:
            continue
        ni = state.ni
        set_lr(optimizer, ni, epoch, cfg['epochs'], cfg['hyp'], cfg['warmup_iters'], cfg['cos_lr'])
        imgs = imgs.to(device, non_blocking=True).float() / 255
        if cfg.get('multi_scale'):  # a MultiScale: this batch's size from (seed, epoch, i)
            imgs = cfg['multi_scale'](imgs, epoch, i)
        targets = targets.to(device)
        with torch.autocast(device_type=device.type, enabled=cfg['amp']):
            loss, items = learner.compute_loss(model(imgs), targets)
            loss = loss * cfg['world_size']  # DDP averages gradients over processes
        scaler.scale(loss).backward()
        nbs = cfg['hyp'].get('nbs', NOMINAL_BATCH)
        stepped = ni - state.last_step >= warmup_accumulate(ni, cfg['warmup_iters'], cfg['batch_size'], nbs)
        if stepped:
            optimizer_step(model, optimizer, scaler, ema)
            state.last_step = ni
        state.ni += 1
        n_img += imgs.shape[0]
        mloss = (mloss * i + items) / (i + 1)
        if i == 0 and cfg.get('on_first_batch'):
            cfg['on_first_batch'](imgs, targets)
        if show:
            mem = f'{torch.cuda.memory_reserved(device) / 1e9:.2f}G' if device.type == 'cuda' else 'cpu'
            pbar.set_description(f"{epoch + 1}/{cfg['epochs']} {mem} box {mloss[0]:.4f} obj {mloss[1]:.4f} "
                                 f"cls {mloss[2]:.4f} inst {targets.shape[0]} {imgs.shape[-1]}px")
        if should_stop is not None and i < nb - 1 and should_stop():
            state.stopped_after, state.mloss = i + 1, mloss.cpu().tolist()
            return state.mloss, n_img / max(time.time() - t0, 1e-9)  # a partial accumulation stays in .grad
    if state.last_step != state.ni - 1:  # flush a partial accumulation: each epoch is self-contained (resume)
        optimizer_step(model, optimizer, scaler, ema)
        state.last_step = state.ni - 1
    return mloss.cpu().tolist(), n_img / max(time.time() - t0, 1e-9)

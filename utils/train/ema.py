"""Exponential moving average of model weights (used for validation and saving), as YOLOv5's ModelEMA.

Frozen tensors are never touched, so the EMA copy of a frozen layer stays bit-identical to the model's.
"""
import math
from copy import deepcopy

import torch
from utils.errors import InputError

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

"""Optimizers over trainable parameters only, in YOLOv5's three groups, and the rebuild after layers are released.

    from utils.freeze.optim import build_optimizer, optimizer_param_groups
    groups = optimizer_param_groups(model, weight_decay=5e-4)   # [decay, bn, bias]; frozen parameters left out
    optimizer = build_optimizer(model, 'SGD', lr=0.01, momentum=0.937, weight_decay=5e-4)
"""
import torch
import torch.nn as nn
from utils.errors import InputError

OPTIMIZERS = ('SGD', 'Adam', 'AdamW')


def optimizer_param_groups(model, weight_decay=5e-4):
    """YOLOv5's three parameter groups, built from trainable parameters only.

    Returns [weights with decay, BatchNorm weights without decay, biases without decay].
    """
    decay, bn_weights, biases = [], [], []
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if pname == 'bias':
                biases.append(p)
            elif pname == 'weight' and isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
                bn_weights.append(p)
            else:
                decay.append(p)
    return [{'params': decay, 'weight_decay': weight_decay, 'name': 'decay'},
            {'params': bn_weights, 'weight_decay': 0.0, 'name': 'bn'},
            {'params': biases, 'weight_decay': 0.0, 'name': 'bias'}]


def scale_lr(groups, model, prefixes, scale):
    """``groups`` with the parameters under ``prefixes`` split off into groups of their own whose LR is ``scale``
    times the rest (``group['lr_scale']``, read by ``utils.train.engine.set_lr``); other keys (name, ramp) are
    kept, the unscaled group of each kind comes first. ``scale`` 1: ``groups`` unchanged."""
    if scale == 1:
        return groups
    under = {id(p) for n, p in model.named_parameters() if any((n + '.').startswith(q) for q in prefixes)}
    out = []
    for g in groups:
        base = {k: v for k, v in g.items() if k != 'params'}
        out.append({**base, 'params': [p for p in g['params'] if id(p) not in under]})
        out.append({**base, 'params': [p for p in g['params'] if id(p) in under], 'lr_scale': scale})
    return [g for g in out if g['params']]


IMPLEMENTATIONS = {'default': {}, 'foreach': {'foreach': True}, 'fused': {'fused': True}}


def make_optimizer(groups, name='SGD', lr=0.01, momentum=0.937, impl='default'):
    """A torch optimizer over ``groups`` (empty ones dropped); every group starts from ``initial_lr`` = lr.
    ``impl``: torch's choice ('default': a loop on CPU, foreach on CUDA), 'foreach' (one multi-tensor kernel per
    operation) or 'fused' (one kernel for the whole step), the candidates for a faster GPU step
    (benchmarks/freeze.py --optimizer-impl)."""
    groups = [g for g in groups if g['params']]
    if impl not in IMPLEMENTATIONS:
        raise InputError(f"optimizer implementation {impl}: expected one of {', '.join(IMPLEMENTATIONS)}")
    kwargs = IMPLEMENTATIONS[impl]
    if name == 'SGD':
        opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True, **kwargs)
    elif name == 'Adam':
        opt = torch.optim.Adam(groups, lr=lr, betas=(momentum, 0.999), **kwargs)
    elif name == 'AdamW':
        opt = torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999), **kwargs)
    else:
        raise InputError(f"--optimizer {name}: expected {', '.join(OPTIMIZERS[:-1])} or {OPTIMIZERS[-1]}")
    for g in opt.param_groups:
        g['initial_lr'] = lr
    return opt


def build_optimizer(model, name='SGD', lr=0.01, momentum=0.937, weight_decay=5e-4, impl='default'):
    """YOLOv5's optimizer over trainable parameters only: conv/linear weights with decay, BN weights and
    biases without. Each group remembers its kind in ``group['name']`` (decay / bn / bias)."""
    return make_optimizer(optimizer_param_groups(model, weight_decay), name, lr, momentum, impl)


def ramped_param_groups(model, old, weight_decay, start_iter, ramp_iters):
    """The groups after layers were released: each kind splits into the parameters ``old`` (an optimizer) already
    trains and the newly trainable ones, whose LR ramps from 0 over ``ramp_iters`` iterations from ``start_iter``
    (``group['ramp']``, read by ``utils.train.engine.set_lr``)."""
    known = {id(p) for g in old.param_groups for p in g['params']}
    groups = []
    for g in optimizer_param_groups(model, weight_decay):
        base = {k: v for k, v in g.items() if k != 'params'}
        groups.append({**base, 'params': [p for p in g['params'] if id(p) in known]})
        groups.append({**base, 'params': [p for p in g['params'] if id(p) not in known],
                       'ramp': (start_iter, ramp_iters)})
    return [g for g in groups if g['params']]


def replace_optimizer(old, groups, name, lr, momentum):
    """A new optimizer over ``groups`` that keeps ``old``'s state (momentum buffers) for the parameters it had."""
    new = make_optimizer(groups, name, lr, momentum)
    for g in new.param_groups:
        for p in g['params']:
            if p in old.state:
                new.state[p] = old.state[p]
    return new

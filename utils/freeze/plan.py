"""Layer freezing that is real: frozen parameters get no gradient, are left out of the optimizer, and their
BatchNorm layers stay in eval mode, so running mean/var/num_batches_tracked never change, even after
``model.train()``.

    from utils.freeze.plan import freeze, freeze_report
    prefixes = freeze(model, '10')          # model.0. ... model.9. (the backbone of yolov5s)
    print(freeze_report(model))

Training holds all of its freeze state in one ``FreezePlan`` (prefixes, frozen BatchNorm names, SHA-256 of every
frozen tensor, released or not): ``apply`` freezes, ``ema_skip`` names what the EMA leaves alone, ``release``
unfreezes and returns the optimizer's new parameter groups, ``verify`` checks the frozen tensors bit for bit,
``state_dict``/``from_checkpoint`` carry it through checkpoints and resumes.

Freeze specs (``--freeze`` values): ``10`` (first 10 layers), ``0 1 2`` (those layers), ``backbone``
(the YAML's backbone section), ``all`` (everything but the Detect head), and parameter-name prefixes such as
``model.24.`` or ``model.24.m.0``. Prefixes match whole dotted components: ``model.1.`` never matches ``model.11.``.
"""
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn

from utils.freeze.optim import ramped_param_groups
from utils.errors import InputError


def _layer_prefix(i, n_layers, spec):
    if not 0 <= i < n_layers:
        raise InputError(f"--freeze {spec}: layer {i} is out of range (the model has layers 0-{n_layers - 1})")
    return f'model.{i}.'


def parse_freeze(spec, model):
    """Turn a freeze spec (int, str or list of either) into a sorted list of parameter-name prefixes."""
    items = spec if isinstance(spec, (list, tuple)) else [spec]
    items = [tok for x in items for tok in str(x).replace(',', ' ').split()]  # '0 1', '0,1', ['0', '1'] alike
    n_layers = len(model.model)
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    if len(items) == 1 and _is_index(items[0]):  # YOLOv5: a single N means the first N layers
        n = int(items[0])
        if n > n_layers:
            raise InputError(f'--freeze {n}: the model has only {n_layers} layers')
        return [f'model.{i}.' for i in range(n)]
    prefixes = []
    for item in items:
        if _is_index(item):
            prefixes.append(_layer_prefix(int(item), n_layers, item))
        elif item == 'backbone':
            prefixes += [f'model.{i}.' for i in range(model.backbone_len)]
        elif item == 'all':
            prefixes += [f'model.{i}.' for i in range(n_layers - 1)]
        elif item.startswith(('model.', 'kept.')):  # kept.: the frozen heads of a kept model (models/keep.py)
            p = item if item.endswith('.') else item + '.'
            whole_layer = p in {f'model.{i}.' for i in range(n_layers)}  # may hold no parameters (Upsample)
            if not whole_layer and not any((n + '.').startswith(p) for n in names):
                raise InputError(f"--freeze {item}: no parameter name starts with '{p}'")
            prefixes.append(p)
        else:
            raise InputError(f"--freeze {item}: expected a layer count, layer indices, 'backbone', 'all' "
                             f"or a name prefix like 'model.24.'")
    return sorted(set(prefixes), key=_natural_key)


def _is_index(item):
    return item.isascii() and item.isdecimal()  # '10', not '²' or '١٠'


def _natural_key(prefix):
    return [(0, int(t), '') if _is_index(t) else (1, 0, t) for t in prefix.split('.')]  # model.2. before model.10.


def is_frozen_name(name, prefixes):
    """Whether a parameter/module name falls under one of the prefixes (whole components only)."""
    return any((name + '.').startswith(p) for p in prefixes)


def freeze(model, spec):
    """Freeze the parameters selected by ``spec`` (see module docstring). Returns the prefixes applied.

    Previously frozen layers stay frozen; use ``unfreeze`` to release them.
    """
    prefixes = parse_freeze(spec, model)
    for name, p in model.named_parameters():
        if is_frozen_name(name, prefixes):
            p.requires_grad_(False)
    model.frozen_bn.update(batchnorm_names(model, prefixes))
    model.train(model.training)  # the frozen BatchNorms to eval mode
    model.set_frozen_fast_path()  # computation-only speed-ups for the frozen layers (models/fastpath.py)
    return prefixes


def batchnorm_names(model, prefixes):
    """BatchNorm modules with any parameter under ``prefixes`` (any of it frozen: all of its statistics too)."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and any(is_frozen_name(f'{name}.{p}', prefixes) for p in ('weight', 'bias'))]


def unfreeze(model, spec=None):
    """Make parameters trainable again: all of them (``spec=None``) or those selected by ``spec``."""
    prefixes = None if spec is None else parse_freeze(spec, model)
    for name, p in model.named_parameters():
        if prefixes is None or is_frozen_name(name, prefixes):
            p.requires_grad_(True)
    model.frozen_bn = {n for n in model.frozen_bn if prefixes is not None and not is_frozen_name(n, prefixes)}
    model.train(model.training)  # re-apply the mode to the released BatchNorms
    return prefixes


def frozen_names(model):
    """Names of the frozen parameters and of the buffers of frozen BatchNorm layers."""
    names = [n for n, p in model.named_parameters() if not p.requires_grad]
    for bn in sorted(model.frozen_bn):
        names += [f'{bn}.{b}' for b, _ in model.get_submodule(bn).named_buffers()]
    return names


def snapshot_frozen(model):
    """Cloned copies of every frozen tensor (cloned: state_dict tensors share storage with the live model)."""
    state = model.state_dict()
    return {n: state[n].detach().clone() for n in frozen_names(model) if n in state}


def changed_frozen(model_or_state, snapshot):
    """Names in ``snapshot`` whose tensor in the model (or a state_dict) is no longer bit-identical."""
    state = model_or_state if isinstance(model_or_state, dict) else model_or_state.state_dict()
    return [n for n, t in snapshot.items() if n not in state or not _bit_equal(state[n], t)]


def _bit_equal(a, b):
    a = a.detach().cpu()
    b = b.detach().cpu()
    return a.shape == b.shape and a.dtype == b.dtype and bool((a == b).all() | (a.isnan() & b.isnan()).all())


def tensor_digests(model_or_state, names):
    """SHA-256 of each named tensor's bytes: a compact fingerprint that survives checkpoints and resumes."""
    state = model_or_state if isinstance(model_or_state, dict) else model_or_state.state_dict()
    return {n: hashlib.sha256(state[n].detach().cpu().contiguous().numpy().tobytes()).hexdigest() for n in names}


def freeze_summary(model, img_size=640):
    """Counts behind the report: per-layer rows and totals (parameters and FLOPs frozen)."""
    from models.yolo import layer_flops  # lazy: FLOPs need a forward pass
    flops = layer_flops(model, img_size)
    rows = []
    for layer, f in zip(model.model, flops):
        params = list(layer.parameters())
        n = sum(p.numel() for p in params)
        n_frozen = sum(p.numel() for p in params if not p.requires_grad)
        state = 'frozen' if params and n_frozen == n else 'partial' if n_frozen else 'trainable'
        rows.append({'i': layer.i, 'type': layer.type, 'params': n, 'frozen': n_frozen, 'state': state, 'flops': f})
    total_p = sum(r['params'] for r in rows)
    frozen_p = sum(r['frozen'] for r in rows)
    total_f = sum(flops) or 1.0
    frozen_f = sum(r['flops'] for r in rows if r['state'] == 'frozen')
    return {'rows': rows, 'params': total_p, 'frozen_params': frozen_p,
            'flops': total_f, 'frozen_flops': frozen_f, 'frozen_flops_share': frozen_f / total_f}


def freeze_report(model, img_size=640):
    """A table of layers (frozen/partial/trainable), parameter counts and the share of FLOPs frozen."""
    s = freeze_summary(model, img_size)
    lines = [f"{'layer':>5}  {'module':<14}{'params':>12}{'frozen':>12}  {'state':<10}{'GFLOPs':>8}"]
    for r in s['rows']:
        lines.append(f"{r['i']:>5}  {r['type']:<14}{r['params']:>12,}{r['frozen']:>12,}  {r['state']:<10}"
                     f"{r['flops'] / 1e9:>8.2f}")
    share_p = s['frozen_params'] / max(s['params'], 1)
    lines.append(f"frozen: {s['frozen_params']:,}/{s['params']:,} parameters ({share_p:.1%}), "
                 f"{len(model.frozen_bn)} BatchNorm layers in eval mode, "
                 f"{s['frozen_flops_share']:.1%} of forward FLOPs at {img_size}")
    return '\n'.join(lines)


def bn_stats_option(value):
    """``--freeze-bn-stats`` as a plan's ``bn_stats``: 'true' -> True, 'false' -> False, 'all' -> 'all'."""
    return {'true': True, 'false': False, 'all': 'all'}[str(value)]


@dataclass
class FreezePlan:
    """Everything a training run knows about freezing, in one place.

    ``prefixes``: the frozen parameter-name prefixes; ``bn_stats``: whether their BatchNorm layers stay in eval
    mode (``--freeze-bn-stats``; False is upstream YOLOv5's behaviour; ``'all'``: every BatchNorm layer keeps the
    statistics it was loaded with, frozen or not, while the weights of trainable layers still train, released
    ones too); ``bn_names``: the BatchNorm modules of frozen parameters;
    ``digests``: SHA-256 of every frozen tensor when it was first frozen; ``released``: ``release`` has run.
    """
    prefixes: list = field(default_factory=list)
    bn_stats: bool = True
    bn_names: list = field(default_factory=list)
    digests: dict = field(default_factory=dict)
    released: bool = False

    @classmethod
    def from_spec(cls, spec, model, bn_stats=True):
        """The plan for a ``--freeze`` value (see the module docstring); raises ValueError on a bad spec."""
        kept = ['kept.'] if getattr(model, 'kept', None) else []  # a kept model's checkpoint heads: always frozen
        return cls(prefixes=parse_freeze(spec, model) + kept, bn_stats=bn_stats)

    def apply(self, model):
        """Freeze ``model`` as planned. The first time, fingerprint every frozen tensor (weights, and BatchNorm
        buffers when ``bn_stats``); a plan read from a checkpoint keeps the fingerprints of the run's start."""
        freeze(model, self.prefixes)
        self.bn_names = batchnorm_names(model, self.prefixes)
        model.frozen_bn = set(self.bn_names) if self.bn_stats else set()
        self._fix_every_bn(model)
        model.train(model.training)  # released BatchNorms (bn_stats False) back to the model's mode
        if not self.digests:
            self.digests = tensor_digests(model, frozen_names(model))
        return self

    @property
    def ema_skip(self):
        """Names of the tensors the EMA must not average: every frozen tensor until the plan is released."""
        return set() if self.released else set(self.digests)

    def release(self, model, optimizer, weight_decay, start_iter, ramp_iters):
        """Unfreeze everything; returns the optimizer's new parameter groups, in which the released parameters
        warm up from LR 0 over ``ramp_iters`` iterations from ``start_iter`` (``utils.freeze.optim.replace_optimizer``
        turns them into an optimizer that keeps ``optimizer``'s state)."""
        unfreeze(model)
        self._fix_every_bn(model)
        self.released = True
        return ramped_param_groups(model, optimizer, weight_decay, start_iter, ramp_iters)

    def _fix_every_bn(self, model):
        """With ``bn_stats == 'all'``: every BatchNorm layer in eval mode (statistics as loaded)."""
        if self.bn_stats == 'all':
            model.frozen_bn = set(batchnorm_names(model, ['']))
            model.train(model.training)

    def verify(self, model, ema=None, files=(), log=print):
        """Every frozen tensor in ``model``, ``ema`` (a model or state_dict) and the EMA saved in each checkpoint
        file must match its fingerprint bit for bit. Returns the number of tensors checked (0 once released)."""
        if self.released or not self.digests:
            return 0
        from utils.weights.checkpoint import load_checkpoint  # lazy: only the final check reads files
        sources = {'model': model, **({'EMA': ema} if ema is not None else {}),
                   **{Path(f).name: load_checkpoint(f)['ema'] for f in files}}
        names = list(self.digests)
        bad = [f'{src}:{n}' for src, obj in sources.items() for n, d in tensor_digests(obj, names).items()
               if d != self.digests[n]]
        if bad:
            raise RuntimeError(f'{len(bad)} frozen tensors changed during training: {", ".join(bad[:5])}')
        log(f'Frozen tensors verified: {len(names)} tensors (weights and BatchNorm buffers) bit-identical to '
            f'their starting values in the {", ".join(sources)}')
        return len(names)

    def report(self, model, img_size=640):
        """``freeze_report`` of the model, plus a line when frozen BatchNorm statistics keep updating."""
        text = freeze_report(model, img_size)
        if self.bn_stats == 'all':
            text += (f'\n--freeze-bn-stats all: every BatchNorm layer ({len(model.frozen_bn)}) keeps the statistics '
                     f'it was loaded with; the weights of trainable layers still train')
        elif self.bn_names and not self.bn_stats:
            text += (f'\n--freeze-bn-stats false: the {len(self.bn_names)} BatchNorm layers of frozen parameters '
                     f'keep updating their statistics (upstream YOLOv5)')
        return text

    def state_dict(self):
        """The checkpoint keys that carry the plan (merged into the checkpoint dict; see utils/weights/checkpoint.py)."""
        return {'frozen': list(self.prefixes), 'frozen_sha256': dict(self.digests), 'frozen_bn': list(self.bn_names),
                'freeze_bn_stats': self.bn_stats, 'frozen_released': self.released}

    @classmethod
    def from_checkpoint(cls, ckpt):
        """The plan saved in a training checkpoint (older ones lack the last three keys: derived from 'opt')."""
        opt = ckpt.get('opt', {})
        unfreeze_epoch = opt.get('unfreeze_epoch', -1)
        released = ckpt.get('frozen_released', 0 <= unfreeze_epoch <= ckpt.get('epoch', -1))
        return cls(prefixes=list(ckpt.get('frozen', [])),
                   bn_stats=ckpt.get('freeze_bn_stats', bn_stats_option(opt.get('freeze_bn_stats', 'true'))),
                   bn_names=list(ckpt.get('frozen_bn', [])), digests=dict(ckpt.get('frozen_sha256', {})),
                   released=released)

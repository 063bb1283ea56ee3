"""The ``--evolve`` search space: upstream YOLOv5's hyper-parameter ranges, plus the freezing choices that only
a framework with real freezing can search (freeze depth, frozen BatchNorm statistics, unfreeze epoch).

``--evolve-space`` narrows or fixes any of them; each item is one of

    lr0=0.001:0.02        narrow a range            mosaic=1.0            fix a value
    freeze=0,backbone,10  choose among values       search=lr0,freeze     search only these; fix the rest
    space.yaml            a YAML of the same: lr0: [0.001, 0.02] (two numbers: a range), mosaic: 1.0,
                          freeze: [0, backbone, [0, 1, 2]], unfreeze_epoch: {choices: [-1, 3]}, search: [lr0]

A freeze choice that is a list of layers is written ``0+1+2`` on the command line (``[0, 1, 2]`` in YAML).
"""
from dataclasses import dataclass, replace
from pathlib import Path

import yaml
from utils.errors import InputError

# upstream YOLOv5's evolution ranges: key -> (low, high); lr0 is searched on a log scale
HYP_RANGES = {
    'lr0': (1e-5, 1e-1), 'lrf': (0.01, 1.0), 'momentum': (0.6, 0.98), 'weight_decay': (0.0, 0.001),
    'warmup_epochs': (0.0, 5.0), 'warmup_momentum': (0.0, 0.95), 'warmup_bias_lr': (0.0, 0.2),
    'box': (0.02, 0.2), 'cls': (0.2, 4.0), 'obj': (0.2, 4.0),
    'hsv_h': (0.0, 0.1), 'hsv_s': (0.0, 0.9), 'hsv_v': (0.0, 0.9), 'degrees': (0.0, 45.0), 'translate': (0.0, 0.9),
    'scale': (0.0, 0.9), 'shear': (0.0, 10.0), 'perspective': (0.0, 0.001), 'flipud': (0.0, 1.0),
    'fliplr': (0.0, 1.0), 'mosaic': (0.0, 1.0), 'mixup': (0.0, 1.0)}
LOG_SCALE = {'lr0'}
FREEZE_CHOICES = ('0', 'backbone', '10', 'all')  # none, backbone, YOLOv5's first 10 layers, all but Detect
FREEZE_KEYS = ('freeze', 'freeze_bn_stats', 'unfreeze_epoch')  # training options rather than hyp keys
CONDITIONAL = ('unfreeze_epoch',)  # only meaningful when something is frozen


@dataclass(frozen=True)
class Param:
    """One searched (or fixed) value: a float/int range, a set of choices, or a fixed value."""
    name: str
    kind: str  # 'float', 'int', 'choice' or 'fixed'
    low: float = None
    high: float = None
    log: bool = False
    choices: tuple = ()
    value: object = None

    def suggest(self, trial):
        if self.kind == 'fixed':
            return self.value
        if self.kind == 'choice':
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == 'int':
            return trial.suggest_int(self.name, int(self.low), int(self.high))
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def describe(self):
        if self.kind == 'fixed':
            return f'{self.name}={self.value}'
        if self.kind == 'choice':
            return f"{self.name} in {{{', '.join(map(str, self.choices))}}}"
        return f"{self.name} in [{self.low:g}, {self.high:g}]{' (log)' if self.log else ''}"


def freeze_value(spec):
    """A freeze choice as one string: '10', 'backbone', ['0', '1'] or '0+1' -> '0 1'."""
    if isinstance(spec, (list, tuple)):
        return ' '.join(str(s) for s in spec)
    return str(spec).replace('+', ' ').strip()


def default_space(hyp, opt):
    """The full space for these base options: every hyp range, and the freezing choices when starting from
    weights (freezing randomly initialised layers is not a recipe worth searching; fix or list it to search)."""
    space = {k: Param(k, 'float', lo, hi, log=k in LOG_SCALE) for k, (lo, hi) in HYP_RANGES.items() if k in hyp}
    base_freeze = freeze_value(opt.freeze)
    if opt.weights:
        space['freeze'] = Param('freeze', 'choice', choices=tuple(dict.fromkeys(FREEZE_CHOICES + (base_freeze,))))
        space['freeze_bn_stats'] = Param('freeze_bn_stats', 'choice', choices=('true', 'false', 'all'))
        space['unfreeze_epoch'] = Param('unfreeze_epoch', 'int', -1, opt.epochs - 1)
    else:
        space['freeze'] = Param('freeze', 'fixed', value=base_freeze)
        space['freeze_bn_stats'] = Param('freeze_bn_stats', 'fixed', value=opt.freeze_bn_stats)
        space['unfreeze_epoch'] = Param('unfreeze_epoch', 'fixed', -1, opt.epochs - 1, value=opt.unfreeze_epoch)
    return space


def base_values(hyp, opt):
    """The recipe the run would use without --evolve: the starting point (trial 0 of a new study)."""
    return {**{k: hyp[k] for k in HYP_RANGES if k in hyp}, 'freeze': freeze_value(opt.freeze),
            'freeze_bn_stats': opt.freeze_bn_stats, 'unfreeze_epoch': opt.unfreeze_epoch}


def read_overrides(items):
    """--evolve-space items (KEY=VALUE or YAML files) -> {key: raw value} in the YAML form."""
    out = {}
    for item in items or ():
        if '=' in item:
            key, text = item.split('=', 1)
            out[key.strip()] = _parse_flag_value(text.strip())
            continue
        path = Path(item)
        if not path.is_file():
            raise FileNotFoundError(f"--evolve-space {item}: no such file (expected KEY=VALUE or a YAML file)")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise InputError(f'{path}: not valid YAML ({str(e).splitlines()[0]})') from None
        if not isinstance(data, dict):
            raise InputError(f'{path}: expected a mapping of key: value, [low, high] or [choices]')
        out.update(data)
    return out


def _parse_flag_value(text):
    if ':' in text:
        lo, hi = text.split(':', 1)
        return {'range': [yaml.safe_load(lo), yaml.safe_load(hi)]}
    if ',' in text:
        return {'choices': [yaml.safe_load(t) for t in text.split(',')]}
    return yaml.safe_load(text)


def apply_overrides(space, overrides, epochs, source='--evolve-space'):
    """Narrow/fix ``space`` by ``overrides`` (see the module docstring). Unknown keys and bad values: ValueError."""
    space = dict(space)
    only = overrides.get('search')
    if isinstance(only, dict):
        only = only.get('choices', only.get('range'))
    for key, raw in overrides.items():
        if key == 'search':
            continue
        if key not in space:
            raise InputError(f"{source}: unknown key '{key}' (searchable: {', '.join(space)}, search)")
        space[key] = _override(space[key], raw, source)
    if only is not None:
        only = [only] if isinstance(only, str) else list(only)
        unknown = [k for k in only if k not in space]
        if unknown:
            raise InputError(f"{source}: search={','.join(map(str, unknown))}: unknown key(s)")
        space = {k: p if k in only or p.kind == 'fixed' else _fix_at_default(p) for k, p in space.items()}
    _check_unfreeze_epoch(space['unfreeze_epoch'], epochs, source)
    return space


def _fix_at_default(p):
    return replace(p, kind='fixed', value=None)  # value None: the base recipe's value (filled in by fill_fixed)


def fill_fixed(space, base):
    """Fixed parameters without a value take the base recipe's."""
    return {k: replace(p, value=base[k]) if p.kind == 'fixed' and p.value is None else p for k, p in space.items()}


def _override(p, raw, source):
    name = p.name
    if isinstance(raw, dict) and 'choices' in raw:
        raw = tuple(raw['choices'])  # a tuple: always choices, even two numbers
    elif isinstance(raw, dict) and 'range' in raw:
        raw = raw['range']
        if p.low is None:
            raise InputError(f'{source}: {name} takes choices (a,b,c), not a range')
    if isinstance(raw, list) and len(raw) == 2 and p.low is not None and \
            all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
        lo, hi = (float(v) for v in raw)
        kind = 'int' if name == 'unfreeze_epoch' else 'float'
        if lo > hi:
            raise InputError(f'{source}: {name}={lo:g}:{hi:g}: low is above high')
        if kind == 'int' and (lo != int(lo) or hi != int(hi)):
            raise InputError(f'{source}: {name} takes whole numbers')
        return replace(p, kind=kind, low=lo, high=hi, log=p.log and lo > 0)
    if isinstance(raw, (list, tuple)):
        choices = tuple(_clean(name, v) for v in raw)
        if not choices:
            raise InputError(f'{source}: {name}: empty list of choices')
        return replace(p, kind='choice', choices=tuple(dict.fromkeys(choices)))
    return replace(p, kind='fixed', value=_clean(name, raw))


def _clean(name, v):
    """A value as the trainer takes it: freeze specs as strings, BatchNorm choice as 'true'/'false'."""
    if name == 'freeze':
        return freeze_value(v)
    if name == 'freeze_bn_stats':
        return str(v).lower()
    if name == 'unfreeze_epoch' and isinstance(v, (int, float)):
        return int(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InputError(f"--evolve-space: {name}={v!r}: expected a number")
    return float(v)


def _check_unfreeze_epoch(p, epochs, source):
    for v in _values(p) or [p.low, p.high]:
        if v is not None and not -1 <= int(v) < epochs:
            raise InputError(f'{source}: unfreeze_epoch {v}: must be -1 (never) or an epoch 0-{epochs - 1}')


def build_space(hyp, opt, items=None):
    """The search space for ``--evolve``: defaults narrowed/fixed by the --evolve-space items."""
    space = apply_overrides(default_space(hyp, opt), read_overrides(items), opt.epochs)
    space = fill_fixed(space, base_values(hyp, opt))
    for v in _values(space['freeze_bn_stats']):
        if v not in ('true', 'false', 'all'):
            raise InputError(f"--evolve-space: freeze_bn_stats={v}: expected true, false or all")
    return space


def _values(p):
    return [p.value] if p.kind == 'fixed' else list(p.choices) if p.kind == 'choice' else []


def suggest(space, trial):
    """Sample one recipe: {hyp key: value, 'freeze': spec, 'freeze_bn_stats': 'true'|'false'|'all',
    'unfreeze_epoch': n}. The unfreeze epoch is only sampled when the trial freezes something; with nothing frozen
    'true' and 'false' are the same recipe, written 'true'."""
    values = {k: p.suggest(trial) for k, p in space.items() if k not in CONDITIONAL}
    if values['freeze'] in ('0', ''):
        values.update(freeze='0', unfreeze_epoch=-1)
        if values['freeze_bn_stats'] == 'false':
            values['freeze_bn_stats'] = 'true'
    else:
        values.update({k: space[k].suggest(trial) for k in CONDITIONAL})
    return values


def searched(space):
    """Names of the parameters that vary."""
    return [k for k, p in space.items() if p.kind != 'fixed']


def describe(space):
    fixed = [p.describe() for p in space.values() if p.kind == 'fixed']
    free = [p.describe() for p in space.values() if p.kind != 'fixed']
    return f"searching {len(free)}: {'; '.join(free)}\nfixed {len(fixed)}: {', '.join(fixed)}"


def baseline_params(space, base):
    """The base recipe as trial parameters for Optuna: searched keys only, clipped into narrowed ranges; a base
    value that is not among the choices is left to the sampler."""
    out = {}
    for k, p in space.items():
        v = base[k]
        if p.kind in ('float', 'int'):
            v = min(max(v, p.low), p.high)
            out[k] = float(v) if p.kind == 'float' else int(v)
        elif p.kind == 'choice' and v in p.choices:
            out[k] = v
    return out


def recipe(space, params):
    """The full recipe of a trial from its Optuna parameters (fixed values filled in, as ``suggest`` did)."""
    values = {k: params.get(k, p.value) for k, p in space.items()}
    if values['freeze'] in ('0', ''):
        values.update(freeze='0', freeze_bn_stats='true', unfreeze_epoch=-1)
    return values

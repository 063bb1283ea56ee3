"""Probing a model's layers with one image: each detection level's grid size, and the checks
of a model YAML.

Two probes give the same answer:

- ``quick_level_sizes`` runs a QUICK_SIZE (64 px) image through the real CPU layers. The meta device would
  allocate nothing, but its Python shape functions import ``torch._dynamo`` and sympy (over a second in every
  process), so this is the usual probe. Hooks refuse, before it runs, any op whose output or cost would be
  large, and check that every resizing op maps its input exactly: a stride-``s`` conv or pool gives ``h / s``,
  an upsample by a whole factor ``h * f``, Focus halves an even size. Whether a conv or pool divides exactly
  does not depend on ``h`` (its padding and kernel decide), so at PROBE_SIZE (256) every shape would be the
  quick one with its height and width times four: the grid sizes, the output-size check (``output_check``)
  and every shape match follow without running at 256.
  When it cannot vouch for that (a guard, an error, an inexact op) it returns None and
- ``meta_level_sizes`` runs a PROBE_SIZE image on the meta device, as before: the one that decides about
  unusual or broken YAMLs and words their errors.

The YAML checks keep a broken or hostile model YAML from crashing ``Model`` or exhausting memory and time; every
failure is a one-line InputError naming the YAML file. ``models/yolo.py`` runs ``check_header`` and ``check_from``
while parsing and builds the layers on the meta device (nothing allocated) for ``check_param_count``; the probes
then check the layer outputs for a PROBE_SIZE image (``output_check``).
"""
import torch
import torch.nn as nn
from torch.nn.modules.utils import _pair

from models.common import SPP, SPPF, Focus
from utils.errors import InputError

# What a model YAML may ask for (yolov5x6: 141M parameters, largest layer output at the 256-px probe 1.3M values):
# far beyond any real model, low enough that a hostile YAML cannot exhaust memory or time.
MAX_PARAMS = 500_000_000
MAX_OUTPUT_VALUES = 2 ** 28  # values in one layer's output for the probe image
MAX_REPEATS = 100  # a layer's repeat count after the depth multiple
MAX_MULTIPLE = 10  # depth_multiple and width_multiple
PROBE_SIZE = 256


def _positive(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < float('inf')


def check_header(d):
    """nc, depth/width multiples, anchors and the layer lists must have usable types and values."""
    where = d.get('yaml_file', 'model YAML')
    if type(d['nc']) is not int or d['nc'] < 1:
        raise InputError(f"{where}: nc must be a positive integer, got {d['nc']!r:.80}")
    for k in ('depth_multiple', 'width_multiple'):
        if not _positive(d[k]) or d[k] > MAX_MULTIPLE:
            raise InputError(f'{where}: {k} must be a number in (0, {MAX_MULTIPLE}], got {d[k]!r:.80}')
    anchors = d['anchors']
    if isinstance(anchors, int):
        raise InputError(f'{where}: integer anchors (autoanchor from scratch) are not supported; list them in the YAML')
    if (not isinstance(anchors, list) or not anchors or not all(isinstance(a, list) for a in anchors)
            or len({len(a) for a in anchors}) != 1 or len(anchors[0]) % 2 or not anchors[0]
            or not all(_positive(v) for a in anchors for v in a)):
        raise InputError(f'{where}: anchors must be levels of equal length, each w1,h1,w2,h2,... positive numbers')
    for k in ('backbone', 'head'):
        if not isinstance(d[k], list) or not all(isinstance(r, list) for r in d[k]):
            raise InputError(f'{where}: {k} must be a list of [from, number, module, args] rows')


def check_from(f, i):
    """'from' must name earlier layers: -1 (the previous one), an absolute index < i, or a relative one -k."""
    for x in [f] if isinstance(f, int) else f:
        earlier = x == -1 or (isinstance(x, int) and (0 <= x < i or -i <= x < -1))
        if not earlier or (i == 0 and x != -1):
            raise InputError(f"'from' index {x} does not name an earlier layer")


def check_repeats(n):
    if not isinstance(n, int) or not 1 <= n <= MAX_REPEATS:
        raise InputError(f'number {n!r:.40} must be a whole count in [1, {MAX_REPEATS}]')


def check_param_count(n, where):
    if n > MAX_PARAMS:
        raise InputError(f'{where}: {n:,} parameters, more than the {MAX_PARAMS:,} this tool builds')


def output_check(where):
    """``check(i, output)`` for the probe: refuses an empty or oversized layer output."""
    def check(i, out):
        for t in out if isinstance(out, (list, tuple)) else [out]:
            if t.numel() > MAX_OUTPUT_VALUES or 0 in t.shape:
                raise InputError(f'{where}: layer {i} outputs {tuple(t.shape)} for a {PROBE_SIZE} px image')
    return check


QUICK_SIZE = 64
SCALE = PROBE_SIZE // QUICK_SIZE
QUICK_MAX_VALUES = 2 ** 24  # values the quick probe's ops may output in all (v6/yolov5x: 1.1M)
QUICK_MAX_MACS = 10 ** 10  # multiply-adds in the whole quick probe (v6/yolov5x: 1.0e9)
QUICK_MAX_PARAMS = 200_000_000  # larger models (yolov5x6: 141M) use the meta probe before anything is allocated
SHAPE_KEEPING = (nn.BatchNorm2d, nn.SiLU, nn.LeakyReLU, nn.Hardswish, nn.ReLU, nn.Identity)
CONTAINERS = (nn.Sequential, nn.ModuleList)
PROBE_ERRORS = (RuntimeError, TypeError, IndexError, ArithmeticError, ValueError)


class NotQuick(Exception):
    """The quick probe cannot vouch for these layers: the meta probe decides."""


def meta_level_sizes(layers, save, ch, where, run_layers):
    """Each detection level's grid height for a PROBE_SIZE image, from meta-device ``layers``; a one-line
    ValueError when a layer's output would be too large or empty, or the layers do not fit together."""
    try:
        feats = run_layers(layers.train(), save, torch.zeros(1, ch, PROBE_SIZE, PROBE_SIZE, device='meta'),
                           check=output_check(where))
    except PROBE_ERRORS as e:
        if str(e).startswith(f'{where}: '):  # output_check: already says what is wrong
            raise
        msg = ' '.join(str(e).split())[:200] or type(e).__name__
        raise InputError(f'{where}: the layers do not fit together ({msg})') from None
    return [f.shape[-3] for f in feats]


def quick_level_sizes(layers, save, ch, run_layers, blocks):
    """Each detection level's grid height for a PROBE_SIZE image, from a QUICK_SIZE image through the real
    ``layers`` (BatchNorm in eval mode, no gradients: nothing the model holds changes); None when the meta
    probe must decide. ``blocks``: module classes whose forward only combines their children's outputs
    (concatenation, sums, views; Focus's even slicing) and so needs no hook of its own."""
    guard = ProbeGuard()
    hooks, modes = [], [(m, m.training) for m in layers.modules()]
    try:
        for m in layers.modules():
            if not guard.watch(m, blocks):
                return None
            hooks += [m.register_forward_pre_hook(guard.before), m.register_forward_hook(guard.after)]
        for m in layers.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        with torch.no_grad():
            feats = run_layers(layers, save, torch.zeros(1, ch, QUICK_SIZE, QUICK_SIZE), check=check_quick_output)
    except (NotQuick, *PROBE_ERRORS):
        return None
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes:
            m.training = mode
    return [f.shape[-3] * SCALE for f in feats]


def check_quick_output(i, out):
    """A layer's output scaled to PROBE_SIZE must pass ``output_check`` (else the meta probe says so)."""
    for t in out if isinstance(out, (list, tuple)) else [out]:
        if t.numel() * SCALE ** 2 > MAX_OUTPUT_VALUES or 0 in t.shape:
            raise NotQuick(f'layer {i}')


class ProbeGuard:
    """Forward hooks for the quick probe: bound each op's output and the total cost before it runs, and check
    afterwards that it resized its input exactly."""

    def __init__(self):
        self.values = self.macs = 0

    @staticmethod
    def watch(m, blocks):
        """Whether the guard knows what ``m`` does to shapes."""
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.Upsample, *SHAPE_KEEPING, *CONTAINERS)):
            return not isinstance(m, nn.Conv2d) or (isinstance(m.padding, tuple) and m.padding_mode == 'zeros')
        return isinstance(m, tuple(blocks))

    def before(self, m, inputs):
        x = inputs[0]
        if isinstance(x, (list, tuple)):  # Concat, Detect: as many values as their inputs
            self.values += sum(t.numel() for t in x)
            if self.values > QUICK_MAX_VALUES:
                raise NotQuick(f'{type(m).__name__} of {len(x)} inputs')
            return
        h, w = x.shape[-2:]
        if isinstance(m, Focus) and (h % 2 or w % 2):
            raise NotQuick('Focus of an odd size')
        channels, cost = x.shape[1], 0
        if isinstance(m, nn.Conv2d):
            size, channels, cost = window_output(m, (h, w)), m.out_channels, m.weight[0].numel()
        elif isinstance(m, nn.MaxPool2d):
            if m.ceil_mode or m.return_indices:
                raise NotQuick('MaxPool2d options')
            k = _pair(m.kernel_size)
            size, cost = window_output(m, (h, w)), k[0] * k[1]
        elif isinstance(m, nn.Upsample):
            size = upsample_output(m, (h, w))
        elif isinstance(m, (SPP, SPPF)):  # concatenates its pools: as many channels as cv2 reads
            size, channels = (h, w), m.cv2.conv.in_channels
        else:
            return
        values = x.shape[0] * channels * size[0] * size[1]
        self.values, self.macs = self.values + values, self.macs + values * cost
        if min(size) < 1 or self.values > QUICK_MAX_VALUES or self.macs > QUICK_MAX_MACS:
            raise NotQuick(f'{type(m).__name__} output {size} x {channels}')

    @staticmethod
    def after(m, inputs, out):
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            if any(o * s != i for o, s, i in zip(out.shape[-2:], _pair(m.stride), inputs[0].shape[-2:])):
                raise NotQuick(f'{type(m).__name__} does not divide its input exactly')
        elif isinstance(m, nn.Upsample):
            if any(o != i * f for o, i, f in zip(out.shape[-2:], inputs[0].shape[-2:], _pair(m.scale_factor))):
                raise NotQuick('Upsample does not scale its input exactly')


def window_output(m, hw):
    """Output height and width of a Conv2d or MaxPool2d on an ``hw`` input (PyTorch's formula, floor mode)."""
    k, s, p, d = (_pair(v) for v in (m.kernel_size, m.stride, m.padding, m.dilation))
    return tuple((hw[j] + 2 * p[j] - d[j] * (k[j] - 1) - 1) // s[j] + 1 for j in range(2))


def upsample_output(m, hw):
    """Output height and width of an nn.Upsample by whole factors; NotQuick for a fixed ``size`` or a fraction
    (``floor(h * f)`` in floating point need not be exact at four times ``h``)."""
    factors = m.scale_factor
    if m.size is not None or factors is None:
        raise NotQuick('Upsample to a fixed size')
    factors = _pair(factors)
    if not all(isinstance(f, (int, float)) and 1 <= f < float('inf') and f == int(f) for f in factors):
        raise NotQuick('Upsample by a fraction')
    return tuple(v * int(f) for v, f in zip(hw, factors))


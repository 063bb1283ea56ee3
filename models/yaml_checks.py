"""Checks that keep a broken or hostile model YAML from crashing ``Model`` or exhausting memory and time.

Every failure is a one-line ValueError naming the YAML file. ``models/yolo.py`` runs ``check_header`` and
``check_from`` while parsing and builds the layers on the meta device (nothing allocated) for
``check_param_count``; ``models/probe.py`` then checks the layer outputs for a PROBE_SIZE image (``output_check``).
"""
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

"""``--keep-classes``: a fine-tune that keeps the checkpoint's classes (``models/keep.py`` is the model).

The frozen layers 0..B-1 are shared; the checkpoint's own layers B..end stay, frozen, for its classes; a trainable
copy of them learns the data's classes. B, the *branch point*, is the first layer ``--freeze`` leaves trainable:
the frozen set must be exactly the layers 0..B-1 (``--freeze 10``, ``backbone``, ``all``: then only Detect is
doubled).

Names: the checkpoint's, then each data class that is not among them (matched by name and synonym, or the data
YAML's ``class_map:``, as ``utils/freeze/transfer.py`` matches).

**Overlap rule.** A data class that is a checkpoint class (a user's ``person``) keeps the checkpoint's index: the new
head learns it from the data (its class rows start as the checkpoint's), the checkpoint's head keeps predicting it
too, and class-aware NMS merges both. A data class made of several checkpoint classes (``vehicle: [car, truck]``)
is a new class, its rows starting as the class map gives them.

    w = read_weights('yolov5n.pt')
    model, report = keep_classes_model(w, ['helmet', 'head'], None, '10', 'hardhat.yaml', 'yolov5n.pt')
    model.names[-2:]         # ['helmet', 'head']; model.names[:80] are COCO's

A kept model used as ``--weights`` with ``--keep-classes`` again keeps both sets: its kept heads stay, its trained
head joins them (frozen), and one new trainable head learns the new data (same branch point required).
"""
from copy import deepcopy
from dataclasses import dataclass

from models.keep import KeepModel
from models.yolo import build_model
from utils.errors import InputError
from utils.freeze.plan import parse_freeze
from utils.freeze.transfer import ClassMap, build_class_map, canonical, class_rows_for, format_transfer_report, \
    transfer_weights


@dataclass(frozen=True)
class NameMerge:
    """``names``: merged names; ``classes[i]``: merged index of data class i; ``cmap``: data <- checkpoint."""
    names: tuple
    classes: tuple
    cmap: ClassMap

    @property
    def overlap(self):
        """Data class ids that are checkpoint classes (the overlap rule applies to them)."""
        return [i for i, j in enumerate(self.classes) if j < len(self.cmap.source_names)]


def has_class_names(names):
    """False for a checkpoint without class names (none, or only their ids '0', '1', ...)."""
    return bool(names) and any(str(n) != str(i) for i, n in enumerate(names))


def merge_names(ckpt_names, data_names, spec=None, where='data YAML'):
    """The merged names and where each data class goes in them (module docstring: the overlap rule)."""
    cmap = build_class_map(data_names, ckpt_names, spec, where)
    names, classes, owner = list(cmap.source_names), [], {}
    for i, name in enumerate(cmap.data_names):
        src = cmap.sources[i]
        if len(src) == 1:
            j = src[0]
            if j in owner:
                raise InputError(f"{where}: data classes '{cmap.data_names[owner[j]]}' and '{name}' both map onto "
                                 f"checkpoint class '{names[j]}'; --keep-classes needs one data class per "
                                 f'checkpoint class')
            owner[j] = i
            classes.append(j)
            continue
        if any(canonical(n) == canonical(name) for n in names):
            raise InputError(f"{where}: data class '{name}' is new (class_map) but its name is already a class "
                             f'of the model; rename it')
        classes.append(len(names))
        names.append(name)
    return NameMerge(tuple(names), tuple(classes), cmap)


def branch_point(spec, model):
    """The first trainable layer for ``--freeze spec``, which must freeze exactly the layers before it."""
    prefixes = parse_freeze(spec, model)
    shown = ' '.join(map(str, spec)) if isinstance(spec, (list, tuple)) else str(spec)
    n = len(model.model)
    b = 0
    while b < n and f'model.{b}.' in prefixes:
        b += 1
    if b == 0:
        raise InputError(f'--freeze {shown} --keep-classes: no frozen layers, so nothing to share between the '
                         f"checkpoint's head and the new one (use --freeze 10, backbone or all)")
    if b == n:
        raise InputError(f'--freeze {shown} --keep-classes: Detect (layer {n - 1}) must stay trainable')
    if set(prefixes) != {f'model.{i}.' for i in range(b)}:
        extra = ', '.join(p for p in prefixes if p not in {f'model.{i}.' for i in range(b)})
        raise InputError(f'--freeze {shown} --keep-classes: the frozen layers must be the first whole layers '
                         f'(0-{b - 1} here) for the heads to share them; also frozen: {extra}')
    return b


def check_keep_options(opt):
    """train.py's flags that cannot go with ``--keep-classes`` (one-line errors, before anything is built)."""
    if not getattr(opt, 'keep_classes', False):
        return
    freeze = [str(f) for f in opt.freeze] if isinstance(opt.freeze, (list, tuple)) else [str(opt.freeze)]
    problems = (
        (not opt.weights, 'needs --weights: the checkpoint whose classes are kept'),
        (freeze == ['0'], "--freeze 0: no frozen layers, so nothing to share between the checkpoint's head "
                          'and the new one (use --freeze 10, backbone or all)'),
        (opt.cfg, '--cfg: the checkpoint decides the architecture of the kept and the trainable heads'),
        (opt.unfreeze_epoch >= 0, "--unfreeze-epoch: the shared layers must stay frozen, or the checkpoint's "
                                  'classes would change'),
        (str(opt.freeze_bn_stats) == 'false', "--freeze-bn-stats false: the shared layers' BatchNorm statistics "
                                              "must stay frozen, or the checkpoint's classes would change"),
        (getattr(opt, 'evolve', None) is not None, '--evolve searches plain fine-tunes only'),
    )
    for bad, why in problems:
        if bad:
            raise InputError(f'--keep-classes: {why}')


def _head_entry(nc, classes, yaml):
    entry = {'nc': int(nc), 'classes': [int(c) for c in classes]}
    if yaml.get('class_rows'):
        entry['class_rows'] = list(yaml['class_rows'])
    return entry


def keep_section(weights, merge, branch):
    """The new model's ``keep`` section: earlier kept heads, then the checkpoint's trainable head, now kept."""
    y, prev = weights['yaml'], weights['yaml'].get('keep')
    heads = deepcopy(prev['heads']) if prev else []
    heads.append(_head_entry(y['nc'], prev['classes'] if prev else range(y['nc']), y))
    return {'branch': branch, 'names': list(merge.names), 'classes': list(merge.classes), 'heads': heads}


def kept_state(state_dict, branch, n_layers, head):
    """The checkpoint's tensors plus its layers branch..end again as kept head ``head`` (``kept.<head>.<i>.*``)."""
    out = dict(state_dict)
    for name, t in state_dict.items():
        parts = name.split('.', 2)
        if parts[0] == 'model' and branch <= int(parts[1]) < n_layers:
            out[f'kept.{head}.{parts[1]}.{parts[2]}'] = t
    return out


def check_branch(weights, branch, source):
    prev = weights['yaml'].get('keep')
    if prev and prev['branch'] != branch:
        raise InputError(f"{source}: a kept model sharing layers 0-{prev['branch'] - 1}; --keep-classes on it "
                         f"needs the same frozen layers (--freeze {prev['branch']}), not 0-{branch - 1}")


def keep_classes_model(weights, data_names, spec, freeze_spec, where='data YAML', source='weights'):
    """A ``KeepModel`` for ``data_names`` from ``weights`` (``read_weights`` output) to be frozen by ``freeze_spec``
    (not yet applied), and the report to log."""
    if not has_class_names(weights['names']):
        raise InputError(f'{source}: --keep-classes needs the class names of the checkpoint, and it has none')
    y = weights['yaml']
    branch = branch_point(freeze_spec, build_model(y))
    check_branch(weights, branch, source)
    merge = merge_names(weights['names'], data_names, spec, where)
    prev = y.get('keep')
    # the class rows of the trainable copy come from the checkpoint's trainable head (its own classes)
    cmap = merge.cmap if not prev else build_class_map(
        data_names, [weights['names'][j] for j in prev['classes']], None, where)
    d = deepcopy(y)
    d['nc'] = len(data_names)
    d.pop('class_rows', None)
    rows = class_rows_for(cmap, y)
    if rows:
        d['class_rows'] = rows
    d['keep'] = keep_section(weights, merge, branch)
    model = KeepModel(d)
    state = kept_state(weights['state_dict'], branch, len(model.model), len(d['keep']['heads']) - 1)
    report = transfer_weights(model, state, source, cmap, y)
    return model, format_transfer_report(report) + '\n' + describe_keep(model, merge)


def describe_keep(model, merge):
    """Two lines: what is shared and kept, and where each data class goes."""
    k = model.yaml['keep']
    kept = ' + '.join(str(h['nc']) for h in k['heads'])
    lines = [f"Keep classes: layers 0-{k['branch'] - 1} shared (frozen); kept head(s) of {kept} classes frozen "
             f"in eval mode; a trainable copy of layers {k['branch']}-{len(model.model) - 1} learns "
             f'{len(merge.classes)} data classes; {len(merge.names)} classes in all']
    parts = []
    for i, name in enumerate(merge.cmap.data_names):
        j = merge.classes[i]
        how = 'checkpoint class, both heads predict it' if i in merge.overlap else 'new'
        parts.append(f'{name} -> {j} ({how})')
    lines.append('  ' + ' | '.join(parts))
    return '\n'.join(lines)


def kept_and_new(model_names, kept_nc, data_names, spec=None, where='data YAML'):
    """Data class ids evaluated through a checkpoint class (merged index < ``kept_nc``) and those that are new."""
    cmap = build_class_map(data_names, model_names, spec, where)
    kept = [i for i, s in enumerate(cmap.sources) if s and all(j < kept_nc for j in s)]
    return kept, [i for i in range(len(cmap.data_names)) if i not in kept]

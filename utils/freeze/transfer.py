"""Starting a model from a checkpoint: every tensor whose name and shape match is copied, and the Detect head is
transferred row by row, class by class, through a ``ClassMap`` (below).

For the Detect output convolutions (the last layer's ``m.*``) the box (4) and objectness (1) rows of every anchor
are always kept. A data class matched to one checkpoint class gets that class's rows exactly (weight and bias,
every anchor, every level), so its score equals the checkpoint's score for the source class. A data class made
of several checkpoint classes keeps all their rows, when the model was built with ``class_rows_for`` (Detect
then folds them with a fixed rule, max by default); in a model with one row per class it gets their mean. A class
without a source keeps its fresh initialisation.

    w = read_weights('yolov5n.pt')
    cmap = build_class_map(data['names'], w['names'], data.get('class_map'), where=data['yaml_file'])
    model = Model(w['yaml'], nc=len(cmap.data_names), class_rows=class_rows_for(cmap, w['yaml']))
    print(format_transfer_report(transfer_weights(model, w['state_dict'], 'yolov5n.pt', cmap, w['yaml'])))

The class map: which checkpoint classes each data class comes from, used by the weight transfer and by the
zero-shot evaluation through a mapping (``val.py``).

Automatic matching compares names after normalisation (case, spaces, ``_`` and ``-`` ignored) and knows the
PASCAL VOC / COCO synonyms. The data YAML's optional ``class_map:`` key overrides it per data class::

    class_map:
      vehicle: [car, truck, bus, motorcycle, bicycle, airplane, train, boat]   # several source classes
      pedestrian: person                                                       # one
      novelty: []                                                              # explicitly new
    class_map: none                                                            # mapping off: every class new

    cmap = build_class_map(['person', 'vehicle'], coco_names, spec, where='data/mine.yaml')
    cmap.sources   # ((0,), (2, 7, 5, 3, 1, 4, 6, 8))
"""
import difflib
from dataclasses import dataclass
from pathlib import Path

import torch

from utils.errors import InputError

ANCHOR_KEYS = ('.anchors', '.anchor_grid')


def source_class_rows(source_yaml, n_classes):
    """Output rows of each class of the checkpoint (one each unless its Detect grouped them)."""
    rows = (source_yaml or {}).get('class_rows')
    return list(rows) if rows else [1] * n_classes


def class_rows_for(cmap, source_yaml=None):
    """Rows per data class for a model that keeps every source row of a many-to-one class; [] when all are 1."""
    src_rows = source_class_rows(source_yaml, len(cmap.source_names))
    rows = [max(sum(src_rows[j] for j in s), 1) for s in cmap.sources]
    return rows if any(r > 1 for r in rows) else []


def _offsets(rows):
    out, at = [], 5
    for r in rows:
        out.append(at)
        at += r
    return out


def _copy_detect_rows(dst, src, na, plan):
    """Copy rows anchor by anchor: ``plan`` is [(dst_start, [(src_start, n_rows), ...], reduce)], reduce 'mean'
    averages the listed source rows into one row. False (nothing copied) when the layouts do not fit."""
    if dst.shape[1:] != src.shape[1:] or dst.shape[0] % na or src.shape[0] % na:
        return False
    no_dst, no_src = dst.shape[0] // na, src.shape[0] // na
    ends = [d + (1 if how == 'mean' else sum(n for _, n in blocks)) for d, blocks, how in plan]
    if min(no_dst, no_src) < 5 or max(ends, default=0) > no_dst or \
            any(s + n > no_src for _, blocks, _ in plan for s, n in blocks):
        return False
    for a in range(na):
        d0, s0 = a * no_dst, a * no_src
        dst[d0:d0 + 5].copy_(src[s0:s0 + 5])
        for d, blocks, how in plan:
            rows = torch.cat([src[s0 + s:s0 + s + n] for s, n in blocks])
            if how == 'mean':
                dst[d0 + d].copy_(rows.mean(0))
            else:
                dst[d0 + d:d0 + d + len(rows)].copy_(rows)
    return True


def detect_plan(model, cmap, source_yaml=None):
    """Per data class with a source: (first dst row, [(src row, n rows)], 'rows' | 'mean')."""
    detect = model.model[-1]
    dst_rows = list(detect.class_rows or [1] * detect.nc)
    src_rows = source_class_rows(source_yaml, len(cmap.source_names))
    dst_at, src_at = _offsets(dst_rows), _offsets(src_rows)
    plan = []
    for i, sources in enumerate(cmap.sources):
        if sources:
            blocks = [(src_at[j], src_rows[j]) for j in sources]
            n = sum(b for _, b in blocks)
            plan.append((dst_at[i], blocks, 'rows' if n == dst_rows[i] else 'mean'))
    return plan


def transfer_weights(model, state_dict, source=None, class_map=None, source_yaml=None, keep_anchors=False):
    """Copy every tensor of ``state_dict`` whose name and shape match into ``model``; the Detect convs class by
    class through ``class_map`` (without one: box+objectness rows only, class rows stay fresh unless the shapes
    match). ``keep_anchors``: the model's own anchors stay (a --cfg given with --weights).
    Returns a report dict for ``format_transfer_report``."""
    own = model.state_dict()  # tensors share storage with the model
    params = dict(model.named_parameters())
    detect = model.model[-1]
    prefix = f'model.{len(model.model) - 1}.m.'
    if class_map is not None and class_map.is_identity and detect.class_rows is None \
            and not (source_yaml or {}).get('class_rows'):
        class_map = None  # same classes, same order: a plain copy
    plan = detect_plan(model, class_map, source_yaml) if class_map is not None else []
    whole, partial, reinit, kept = [], [], [], []
    n_params = 0
    with torch.no_grad():
        for name, dst in own.items():
            src = state_dict.get(name)
            if keep_anchors and name.endswith(ANCHOR_KEYS):
                kept.append(name)
            elif name.startswith(prefix) and src is not None and (class_map is not None or src.shape != dst.shape):
                if _copy_detect_rows(dst, src, detect.na, plan):
                    partial.append(name)
                    n_rows = 5 + sum(1 if how == 'mean' else sum(n for _, n in b) for _, b, how in plan)
                    n_params += detect.na * n_rows * dst[0].numel() if name in params else 0
                else:
                    reinit.append(name)
            elif src is not None and src.shape == dst.shape:
                dst.copy_(src)
                whole.append(name)
                n_params += dst.numel() if name in params else 0
            else:
                reinit.append(name)
    return {'source': str(source) if source else None, 'tensors_total': len(own), 'tensors_copied': len(whole),
            'tensors_partial': partial, 'tensors_reinitialised': reinit, 'anchors_kept': kept,
            'unused': sorted(set(state_dict) - set(own)),
            'params_copied': n_params, 'params_total': sum(p.numel() for p in params.values()),
            'detect_anchors': detect.na, 'detect_levels': detect.nl,
            'classes': _class_lines(class_map, plan, detect) if class_map is not None and partial else None}


def _class_lines(cmap, plan, detect):
    """'person <- person', 'vehicle <- max(car, bus)' (rows kept, folded by Detect), 'mean(...)', 'tree: new'."""
    how = iter(p[2] for p in plan)
    lines = []
    for i, name in enumerate(cmap.data_names):
        src = [cmap.source_names[j] for j in cmap.sources[i]]
        if not src:
            lines.append(f'{name}: new')
            continue
        rule = next(how)
        if len(src) == 1 and (rule == 'rows' or (detect.class_rows or [1] * detect.nc)[i] == 1):
            lines.append(f'{name} <- {src[0]}')
        else:
            fold = detect.class_reduce if rule == 'rows' else 'mean'
            lines.append(f"{name} <- {fold}({', '.join(src)})")
    return lines


def format_transfer_report(report):
    """How much of the model came from the checkpoint, what the Detect head kept, each data class's source."""
    r = report
    src = f" from {Path(r['source']).name}" if r.get('source') else ''
    s = (f"Transferred {r['tensors_copied']}/{r['tensors_total']} tensors whole "
         f"({r['params_copied']:,}/{r['params_total']:,} params){src}")
    if r['tensors_partial']:
        classes = r.get('classes')
        n_src = sum(1 for c in classes or [] if not c.endswith(': new'))
        what = (f'class rows from the checkpoint for {n_src}/{len(classes)} classes' if classes is not None
                else 'class rows re-initialised')
        s += (f"; Detect: box+obj rows of {r['detect_anchors']} anchors x {r['detect_levels']} levels kept "
              f"({len(r['tensors_partial'])} tensors), {what}")
        if classes:
            s += '\nClass rows (data <- checkpoint): ' + ' | '.join(classes)
    if r.get('anchors_kept'):
        s += f"\nAnchors from --cfg kept ({', '.join(r['anchors_kept'])}), not the checkpoint's"
    others = list(r['tensors_reinitialised'])
    if others:
        shown = ', '.join(others[:3]) + (', ...' if len(others) > 3 else '')
        s += f'\nRe-initialised {len(others)} tensors not in the checkpoint or of another shape: {shown}'
    return s


# ---------------------------------------------------------------- the class map
# PASCAL VOC name -> COCO name, both normalised. (diningtable/dining table and pottedplant/potted plant need
# no entry: they are equal once normalised.)
SYNONYMS = (('aeroplane', 'airplane'), ('motorbike', 'motorcycle'), ('sofa', 'couch'), ('tvmonitor', 'tv'))
OFF = ('none', 'off', False)  # class_map values that turn mapping off (YAML reads `off`/`false` as False)


def normalise(name):
    """'Dining_Table', 'dining-table' and 'dining table' all become 'diningtable'."""
    return ''.join(ch for ch in str(name).lower() if ch not in ' _-\t')


def canonical(name):
    """The normalised name, with a VOC synonym replaced by its COCO name."""
    n = normalise(name)
    return next((coco for voc, coco in SYNONYMS if n == voc), n)


@dataclass(frozen=True)
class ClassMap:
    """``sources[i]``: the checkpoint class ids data class ``i`` comes from (empty: a new class)."""
    data_names: tuple
    source_names: tuple
    sources: tuple
    explicit: frozenset = frozenset()  # data class ids set by the YAML's class_map
    off: bool = False  # class_map: none

    @property
    def mapped(self):
        return [i for i, s in enumerate(self.sources) if s]

    @property
    def unmapped(self):
        return [i for i, s in enumerate(self.sources) if not s]

    @property
    def is_identity(self):
        """Data classes are the checkpoint's classes, in the same order (nothing to map)."""
        return self.sources == tuple((i,) for i in range(len(self.source_names))) and not self.off

    def data_classes_of(self):
        """{checkpoint class id: [data class ids it feeds]} for every checkpoint class that feeds one."""
        out = {}
        for i, sources in enumerate(self.sources):
            for j in sources:
                out.setdefault(j, []).append(i)
        return out

    def source_list(self, i):
        """'person', 'car+truck+bus' or 'new'."""
        return '+'.join(self.source_names[j] for j in self.sources[i]) or 'new'

    def describe(self):
        """One line per data class: ``vehicle <- car, truck, bus (class_map)`` or ``horse: new``."""
        if self.off:
            return ['class_map: none, every class row starts new']
        lines = []
        for i, name in enumerate(self.data_names):
            how = ' (class_map)' if i in self.explicit else ''
            src = ', '.join(self.source_names[j] for j in self.sources[i])
            lines.append(f'{name} <- {src}{how}' if src else f'{name}: new{how}')
        return lines

    def summary(self):
        """``3/3 data classes mapped to checkpoint classes`` (+ the unmapped names)."""
        if self.off:
            return 'class mapping off (class_map: none)'
        s = f'{len(self.mapped)}/{len(self.data_names)} data classes mapped to checkpoint classes'
        missing = [self.data_names[i] for i in self.unmapped]
        return s + (f'; no source (new): {", ".join(missing)}' if missing else '')


def _closest(name, candidates):
    by_norm = {normalise(c): c for c in candidates}
    close = difflib.get_close_matches(normalise(name), list(by_norm), n=3, cutoff=0.5)
    return ', '.join(by_norm[c] for c in close) or 'none close'


def check_class_map_spec(spec, data_names, where='data YAML'):
    """Validate the shape of a ``class_map:`` value against the data's names (no checkpoint needed yet).

    Returns None (absent), 'none' (mapping off) or {data class name: [checkpoint class names]}.
    """
    if spec is None:
        return None
    if spec in OFF or (isinstance(spec, str) and spec.strip().lower() in OFF):
        return 'none'
    if not isinstance(spec, dict):
        raise InputError(f'{where}: class_map must be a mapping {{data class: checkpoint class or list}} or none')
    by_norm = {normalise(n): n for n in data_names}
    out = {}
    for key, value in spec.items():
        if normalise(key) not in by_norm:
            raise InputError(f"{where}: class_map key '{key}' is not a data class "
                             f'(closest data names: {_closest(key, data_names)})')
        values = value if isinstance(value, (list, tuple)) else [value]
        if value is None or not all(isinstance(v, str) for v in values):
            raise InputError(f"{where}: class_map '{key}' must be a checkpoint class name or a list of names")
        out[by_norm[normalise(key)]] = list(values)
    return out


def build_class_map(data_names, source_names, spec=None, where='data YAML'):
    """Map each data class to checkpoint classes: ``class_map`` entries first, else a match by canonical name.

    ``spec`` is a data YAML's ``class_map`` value (raw or checked). An entry naming a class the checkpoint
    does not have raises a one-line ValueError naming ``where`` and the closest checkpoint names.
    """
    data_names, source_names = tuple(str(n) for n in data_names), tuple(str(n) for n in source_names)
    spec = check_class_map_spec(spec, data_names, where)
    if spec == 'none':
        return ClassMap(data_names, source_names, tuple(() for _ in data_names), off=True)
    index = {}
    for j, n in enumerate(source_names):
        index.setdefault(canonical(n), j)  # the first of duplicate names wins
    sources, explicit = [], set()
    for i, name in enumerate(data_names):
        if name in (spec or {}):
            explicit.add(i)
            ids = []
            for s in spec[name]:
                j = index.get(canonical(s))
                if j is None:
                    raise InputError(f"{where}: class_map '{name}': '{s}' is not a class of the checkpoint "
                                     f'(closest: {_closest(s, source_names)})')
                if j not in ids:
                    ids.append(j)
            sources.append(tuple(ids))
        else:
            j = index.get(canonical(name))
            sources.append(() if j is None else (j,))
    return ClassMap(data_names, source_names, tuple(sources), frozenset(explicit))


def remap_detections(det, cmap, iou_thres, max_det=300):
    """Detections ``(n, 6)`` [x1, y1, x2, y2, conf, cls] in checkpoint classes -> the same in data classes.

    A data class's detections are those of its source classes, merged by class-aware NMS (``iou_thres``):
    a car and a truck box on one vehicle become one vehicle box. Classes that feed no data class are dropped.
    At most ``max_det`` rows, by confidence.
    """
    import torch
    import torchvision
    pairs = [(j, i) for j, targets in cmap.data_classes_of().items() for i in targets]
    src = det[:, 5].long()
    parts = []
    for j, i in pairs:
        rows = det[src == j]
        if len(rows):
            parts.append(torch.cat((rows[:, :5], torch.full_like(rows[:, 5:6], i)), 1))
    if not parts:
        return det[:0]
    out = torch.cat(parts)
    keep = torchvision.ops.batched_nms(out[:, :4].float(), out[:, 4].float(), out[:, 5].long(), iou_thres)
    return out[keep[:max_det]]


def data_class_postprocess(model_names, data_names, spec, iou_thres, max_det, where='data YAML'):
    """For ``evaluate``: detections of a model with more classes than the data (a kept model) -> the data's
    classes through the class map; None when the model's names are the data's."""
    if [str(n) for n in model_names] == [str(n) for n in data_names]:
        return None
    return remapping_postprocess(build_class_map(data_names, model_names, spec, where), iou_thres, max_det)


def remapping_postprocess(cmap, iou_thres, max_det):
    """The evaluator's post-NMS step: each image's detections in the model's classes -> the data's (``cmap``)."""
    return lambda dets, metas: [remap_detections(d, cmap, iou_thres, max_det) for d in dets]

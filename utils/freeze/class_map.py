"""Which checkpoint classes each data class comes from: one small pure module, used by the weight transfer
(``utils/weights/checkpoint.py``) and by the zero-shot evaluation through a mapping (``val.py``).

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
from utils.errors import InputError

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

"""Configuration files: data YAMLs (``check_dataset``) and hyper-parameter YAMLs (``load_hyp``).

Usage::

    data = check_dataset('data/shapes.yaml')   # resolves paths, generates the demo set, finds instances JSONs
    data = check_dataset('VOC.yaml')           # a name of ours in data/, any case: downloads VOC on first use
    hyp = load_hyp('data/hyps/hyp.scratch.yaml')

``YOLOV5_FREEZE_DATASETS``: when set, a data YAML in the repo's data/ folder whose ``path:`` starts with
``../datasets/`` (e.g. data/voc.yaml's ``../datasets/VOC``) finds its data under ``$YOLOV5_FREEZE_DATASETS/``
(``$YOLOV5_FREEZE_DATASETS/VOC``) instead of <repo>/datasets/; other YAMLs and paths are left as written.
"""
import difflib
import os
from pathlib import Path, PurePosixPath

from utils.freeze.transfer import check_class_map_spec
from utils.data.label_formats import load_coco_json
from utils.safe_yaml import load_yaml_file
from utils.errors import InputError

REPO = Path(__file__).resolve().parents[2]  # utils/<wing>/<module>.py
FORMATS = ('yolo', 'voc', 'coco')
EVALS = (None, 'coco', 'voc07', 'voc12')
SPLITS = ('train', 'val', 'test')
HYP_KEYS = ('lr0', 'lrf', 'momentum', 'weight_decay', 'warmup_epochs', 'warmup_momentum', 'warmup_bias_lr',
            'box', 'cls', 'cls_pw', 'obj', 'obj_pw', 'iou_t', 'anchor_t', 'fl_gamma', 'hsv_h', 'hsv_s', 'hsv_v',
            'degrees', 'translate', 'scale', 'shear', 'perspective', 'flipud', 'fliplr', 'mosaic', 'mixup',
            'copy_paste')
# The data YAMLs upstream YOLOv5 ships (v7.0 and later): named in the error for one we do not have
UPSTREAM_DATA = ('Argoverse.yaml', 'GlobalWheat2020.yaml', 'ImageNet.yaml', 'ImageNet10.yaml', 'ImageNet100.yaml',
                 'ImageNet1000.yaml', 'Objects365.yaml', 'SKU-110K.yaml', 'VOC.yaml', 'VisDrone.yaml', 'coco.yaml',
                 'coco128-seg.yaml', 'coco128.yaml', 'xView.yaml')


# ---------------------------------------------------------------- YAML files
def load_yaml(file, what='YAML'):
    """Load a YAML mapping; FileNotFoundError / ValueError with one line naming the file otherwise (alias bombs
    and deep nesting included, see utils/safe_yaml.py)."""
    d = load_yaml_file(file, what)
    if not isinstance(d, dict):
        raise InputError(f'{file}: expected a YAML mapping of keys, got {type(d).__name__}')
    return d


def load_hyp(hyp=None):
    """Hyper-parameters from a YAML path or dict (default data/hyps/hyp.scratch.yaml); all keys checked."""
    if hyp is None:
        hyp = REPO / 'data' / 'hyps' / 'hyp.scratch.yaml'
    elif not isinstance(hyp, dict) and not Path(hyp).exists() and (REPO / 'data' / 'hyps' / Path(hyp).name).is_file():
        hyp = REPO / 'data' / 'hyps' / Path(hyp).name  # a bare name such as hyp.scratch-high.yaml
    d = dict(hyp) if isinstance(hyp, dict) else load_yaml(hyp, 'hyp')
    where = hyp if not isinstance(hyp, dict) else 'hyp'
    missing = [k for k in HYP_KEYS if k not in d]
    if missing:
        raise InputError(f'{where}: missing keys {", ".join(missing)}')
    if d.get('keep_difficult', 0) not in (0, 1):
        raise InputError(f"{where}: keep_difficult {d['keep_difficult']!r}: expected 0 (VOC difficult boxes left out "
                         f"of training, upstream's rule) or 1 (trained on as objects)")
    return d


def find_data_yaml(data):
    """A data YAML path as given, else one of ours in the repo's data/ folder: 'shapes.yaml', and for a bare name
    any case with or without '.yaml' ('VOC.yaml', 'Coco', 'voc' -> data/voc.yaml, data/coco.yaml).

    A bare name found nowhere is a one-line FileNotFoundError naming our closest YAMLs (upstream names included:
    'Argoverse.yaml' is upstream's, not ours). A path with folders is returned as is for the caller to report.
    """
    p = Path(data)
    if p.exists() or p.is_absolute():
        return p
    if (REPO / 'data' / p).is_file():
        return REPO / 'data' / p
    if len(p.parts) != 1:
        return p
    ours = {f.stem.lower(): f for f in sorted((REPO / 'data').glob('*.yaml'))}
    stem = (p.stem if p.suffix.lower() in ('.yaml', '.yml') else p.name).lower()
    if stem in ours:
        return ours[stem]
    close = [ours[c].name for c in difflib.get_close_matches(stem, list(ours), n=3)]
    upstream = next((u for u in UPSTREAM_DATA if u.lower() == f'{stem}.yaml'), None)
    what = (f"upstream YOLOv5's {upstream} is not shipped with yolov5-freeze" if upstream
            else 'no such file, and no data YAML of ours in data/ has that name')
    mean = ' or '.join(close) if close else f"one of {', '.join(f.name for f in ours.values())}"
    raise FileNotFoundError(f'{data}: {what}; did you mean {mean}?')


# ---------------------------------------------------------------- check_dataset
def check_dataset(data):
    """Validate a data YAML (path or loaded dict) and resolve it into a plain dict; see module docstring.

    Returns keys ``path`` (root), ``train``/``val``/``test`` (lists of absolute sources), ``nc``, ``names``
    (list), ``format``, ``eval``, ``yaml_file`` and ``annotations`` ({split: instances JSON Path}).
    """
    if isinstance(data, dict):
        cfg, yaml_file = dict(data), data.get('yaml_file')
        yaml_file = Path(yaml_file) if yaml_file else None
    else:
        yaml_file = find_data_yaml(data).resolve()
        cfg = load_yaml(yaml_file, 'data YAML')
    where = yaml_file or 'data dict'
    base = yaml_file.parent if yaml_file else Path.cwd()
    root = _root(datasets_override(cfg.get('path'), yaml_file), base, where)
    names, nc = _names_and_nc(cfg, where)
    fmt = _format(cfg, where)
    archives = []
    if cfg.get('download') is not None:  # checked even when the data are on disk
        from utils.data.download import parse_download  # lazy: the download machinery only for data that has one
        archives = parse_download(cfg['download'], root, where)
    if cfg.get('generate') == 'shapes':
        from utils.data.shapes import ensure_shapes  # only the demo set needs it
        ensure_shapes(root)
    elif cfg.get('generate'):
        raise InputError(f"{where}: unknown generate: '{cfg['generate']}' (only 'shapes' is built in)")
    out = {**cfg, 'path': root, 'names': names, 'nc': nc, 'format': fmt, 'yaml_file': yaml_file}
    for split in SPLITS:
        out[split] = _sources(cfg.get(split), root, where, split)
    if not out['train'] and not out['val']:
        raise InputError(f"{where}: needs 'train' and 'val' entries")
    if archives:
        from utils.data.download import ensure_dataset
        ensure_dataset(archives, root, where, out['train'] + out['val'])  # first use: download and unpack
    for p in out['val']:
        if not Path(p).exists():
            from utils.data.download import upstream_note
            raise FileNotFoundError(f"{where}: val source {p} not found{upstream_note(cfg.get('download'))}")
    out['test'] = [p for p in out['test'] if Path(p).exists()]
    out['annotations'] = _annotations(cfg, out, root, where)
    out['eval'] = _eval_kind(cfg, out, where)
    if names is None:
        out['names'], out['nc'] = _names_from_json(out, where)
    out['class_map'] = check_class_map_spec(cfg.get('class_map'), out['names'], where)
    return out


def datasets_override(path, yaml_file):
    """``path:`` of a built-in data YAML (data/*.yaml) under ``../datasets/`` re-rooted at $YOLOV5_FREEZE_DATASETS
    when that is set (module docstring); any other ``path:`` as given."""
    env = os.environ.get('YOLOV5_FREEZE_DATASETS')
    if not env or not isinstance(path, str) or yaml_file is None or Path(yaml_file).resolve().parent != REPO / 'data':
        return path
    parts = PurePosixPath(path.replace('\\', '/')).parts
    if parts[:2] != ('..', 'datasets'):
        return path
    return Path(env).expanduser().absolute().joinpath(*parts[2:])


def _root(path, base, where):
    """The data set's root folder: ``path:`` (absolute, or relative to the YAML's folder), else that folder."""
    if path is not None and not isinstance(path, (str, Path)):
        raise InputError(f'{where}: path must be a folder, got {type(path).__name__} {path!r:.80}')
    root = Path(path or base)
    return (root if root.is_absolute() else base / root).resolve()


def _names_and_nc(cfg, where):
    names, nc = cfg.get('names'), cfg.get('nc')
    if isinstance(names, dict):
        if not all(type(k) is int for k in names) or sorted(names) != list(range(len(names))):
            raise InputError(f'{where}: names mapping must have ids 0..{len(names) - 1}')
        names = [str(names[i]) for i in range(len(names))]
    elif isinstance(names, (list, tuple)):
        names = [str(n) for n in names]
    elif names is not None:
        raise InputError(f'{where}: names must be a list or an {{id: name}} mapping')
    if nc is not None and (type(nc) is not int or nc < 1):
        raise InputError(f'{where}: nc must be a positive integer, got {nc!r}')
    if names is not None and nc is not None and len(names) != nc:
        raise InputError(f'{where}: nc is {nc} but {len(names)} names are given')
    if names is None and nc is not None:
        names = [f'class{i}' for i in range(nc)]
    return names, (len(names) if names is not None else None)


def _format(cfg, where):
    fmt = cfg.get('format')
    if fmt is None:
        srcs = [s for k in SPLITS for s in as_list(cfg.get(k))]
        fmt = 'voc' if any('ImageSets' in Path(str(s)).parts for s in srcs) else 'yolo'
    if fmt not in FORMATS:
        raise InputError(f"{where}: format '{fmt}' is not one of {', '.join(FORMATS)}")
    return fmt


def as_list(v):
    return [] if v is None else list(v) if isinstance(v, (list, tuple)) else [v]


def _sources(value, root, where, split):
    out = []
    for s in as_list(value):
        if not isinstance(s, (str, Path)):
            raise InputError(f'{where}: {split} entry {s!r} is not a path')
        p = Path(s)
        out.append(str(p if p.is_absolute() else (root / p).resolve()))
    return out


def _split_stem(src):
    p = Path(src)
    return p.stem if p.suffix else p.name  # images/val2017 -> val2017, val2017.txt -> val2017


def _annotations(cfg, out, root, where):
    """Instances JSON per split: as named in the YAML, else annotations/instances_<split>.json beside it."""
    given = cfg.get('annotations') or {}
    if not isinstance(given, dict):
        given = {'val': given}
    ann = {}
    for split in SPLITS:
        if split in given:
            if not isinstance(given[split], str):
                raise InputError(f'{where}: {split} annotations must be a JSON file path, got {given[split]!r:.80}')
            p = Path(given[split])
            p = p if p.is_absolute() else (root / p).resolve()
            if not p.is_file():
                raise FileNotFoundError(f'{where}: {split} annotations {p} not found')
            ann[split] = p
        elif out[split]:
            p = root / 'annotations' / f'instances_{_split_stem(out[split][0])}.json'
            if p.is_file():
                ann[split] = p
        if out['format'] == 'coco' and out[split] and split not in ann and split != 'test':
            raise FileNotFoundError(f"{where}: COCO-format {split} needs an instances JSON "
                                    f"(annotations: {{{split}: path}} or {p})")
    return ann


def _eval_kind(cfg, out, where):
    kind = cfg.get('eval')
    if kind is None:
        if out['format'] == 'coco' or 'val' in out['annotations']:
            kind = 'coco'
        elif out['format'] == 'voc':
            kind = 'voc07' if any('VOC2007' in s for s in out['val']) else 'voc12'
    if kind not in EVALS:
        raise InputError(f"{where}: eval '{kind}' is not one of coco, voc07, voc12")
    return kind


def _names_from_json(out, where):
    ann = out['annotations'].get('train') or out['annotations'].get('val')
    if ann is None:
        raise InputError(f"{where}: needs 'names' or 'nc'")
    cats = sorted(load_coco_json(ann)['categories'], key=lambda c: c['id'])
    return [c['name'] for c in cats], len(cats)

"""Data YAMLs, the detection dataset and its loader.

Usage::

    data = check_dataset('data/shapes.yaml')                 # resolves paths, generates the demo set
    loader, ds = create_dataloader(data['train'], 320, 16, 32, hyp, augment=True, data=data)
    for imgs, targets, paths, shapes in loader: ...          # uint8 Bx3xHxW RGB, Nx6 [i, cls, cx, cy, w, h]
"""
import signal
from multiprocessing.pool import ThreadPool
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info

from utils.augment import (Albumentations, augment_hsv, flip_lr, flip_ud, letterbox, mixup, mosaic4,
                           random_perspective)
from utils.boxes import xywhn2xyxy, xyxy2xywhn
from utils.label_formats import Record, ScanReport, load_coco_json, scan_source  # noqa: F401 (Record re-exported)
from utils.safe_yaml import load_yaml_file

REPO = Path(__file__).resolve().parents[1]
FORMATS = ('yolo', 'voc', 'coco')
EVALS = (None, 'coco', 'voc07', 'voc12')
SPLITS = ('train', 'val', 'test')
HYP_KEYS = ('lr0', 'lrf', 'momentum', 'weight_decay', 'warmup_epochs', 'warmup_momentum', 'warmup_bias_lr',
            'box', 'cls', 'cls_pw', 'obj', 'obj_pw', 'iou_t', 'anchor_t', 'fl_gamma', 'hsv_h', 'hsv_s', 'hsv_v',
            'degrees', 'translate', 'scale', 'shear', 'perspective', 'flipud', 'fliplr', 'mosaic', 'mixup',
            'copy_paste')


# ---------------------------------------------------------------- YAML files
def load_yaml(file, what='YAML'):
    """Load a YAML mapping; FileNotFoundError / ValueError with one line naming the file otherwise."""
    d = load_yaml_file(file, what)
    if not isinstance(d, dict):
        raise ValueError(f'{file}: expected a YAML mapping of keys, got {type(d).__name__}')
    return d


def load_hyp(hyp=None):
    """Hyper-parameters from a YAML path or dict (default data/hyps/hyp.scratch.yaml); all keys checked."""
    if hyp is None:
        hyp = REPO / 'data' / 'hyps' / 'hyp.scratch.yaml'
    d = dict(hyp) if isinstance(hyp, dict) else load_yaml(hyp, 'hyp')
    missing = [k for k in HYP_KEYS if k not in d]
    if missing:
        raise ValueError(f'{hyp if not isinstance(hyp, dict) else "hyp"}: missing keys {", ".join(missing)}')
    return d


def find_data_yaml(data):
    """A data YAML path as given, or a bare name like 'shapes.yaml' found in the repo's data/ folder."""
    p = Path(data)
    if not p.exists() and not p.is_absolute() and (REPO / 'data' / p).is_file():
        return REPO / 'data' / p
    return p


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
    root = _root(cfg.get('path'), base, where)
    names, nc = _names_and_nc(cfg, where)
    fmt = _format(cfg, where)
    if cfg.get('generate') == 'shapes':
        from utils.shapes import ensure_shapes  # only the demo set needs it
        ensure_shapes(root)
    elif cfg.get('generate'):
        raise ValueError(f"{where}: unknown generate: '{cfg['generate']}' (only 'shapes' is built in)")
    out = {**cfg, 'path': root, 'names': names, 'nc': nc, 'format': fmt, 'yaml_file': yaml_file}
    for split in SPLITS:
        out[split] = _sources(cfg.get(split), root, where, split)
    if not out['train'] and not out['val']:
        raise ValueError(f"{where}: needs 'train' and 'val' entries")
    for p in out['val']:
        if not Path(p).exists():
            raise FileNotFoundError(f'{where}: val source {p} not found')
    out['test'] = [p for p in out['test'] if Path(p).exists()]
    out['annotations'] = _annotations(cfg, out, root, where)
    out['eval'] = _eval_kind(cfg, out, where)
    if names is None:
        out['names'], out['nc'] = _names_from_json(out, where)
    return out


def _root(path, base, where):
    """The data set's root folder: ``path:`` (absolute, or relative to the YAML's folder), else that folder."""
    if path is not None and not isinstance(path, (str, Path)):
        raise ValueError(f'{where}: path must be a folder, got {type(path).__name__} {path!r:.80}')
    root = Path(path or base)
    return (root if root.is_absolute() else base / root).resolve()


def _names_and_nc(cfg, where):
    names, nc = cfg.get('names'), cfg.get('nc')
    if isinstance(names, dict):
        if not all(type(k) is int for k in names) or sorted(names) != list(range(len(names))):
            raise ValueError(f'{where}: names mapping must have ids 0..{len(names) - 1}')
        names = [str(names[i]) for i in range(len(names))]
    elif isinstance(names, (list, tuple)):
        names = [str(n) for n in names]
    elif names is not None:
        raise ValueError(f'{where}: names must be a list or an {{id: name}} mapping')
    if nc is not None and (type(nc) is not int or nc < 1):
        raise ValueError(f'{where}: nc must be a positive integer, got {nc!r}')
    if names is not None and nc is not None and len(names) != nc:
        raise ValueError(f'{where}: nc is {nc} but {len(names)} names are given')
    if names is None and nc is not None:
        names = [f'class{i}' for i in range(nc)]
    return names, (len(names) if names is not None else None)


def _format(cfg, where):
    fmt = cfg.get('format')
    if fmt is None:
        srcs = [s for k in SPLITS for s in _as_list(cfg.get(k))]
        fmt = 'voc' if any('ImageSets' in Path(str(s)).parts for s in srcs) else 'yolo'
    if fmt not in FORMATS:
        raise ValueError(f"{where}: format '{fmt}' is not one of {', '.join(FORMATS)}")
    return fmt


def _as_list(v):
    return [] if v is None else list(v) if isinstance(v, (list, tuple)) else [v]


def _sources(value, root, where, split):
    out = []
    for s in _as_list(value):
        if not isinstance(s, (str, Path)):
            raise ValueError(f'{where}: {split} entry {s!r} is not a path')
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
                raise ValueError(f'{where}: {split} annotations must be a JSON file path, got {given[split]!r:.80}')
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
        raise ValueError(f"{where}: eval '{kind}' is not one of coco, voc07, voc12")
    return kind


def _names_from_json(out, where):
    ann = out['annotations'].get('train') or out['annotations'].get('val')
    if ann is None:
        raise ValueError(f"{where}: needs 'names' or 'nc'")
    cats = sorted(load_coco_json(ann)['categories'], key=lambda c: c['id'])
    return [c['name'] for c in cats], len(cats)


# ---------------------------------------------------------------- records
def load_records(path, data=None, prefix='', use_cache=True, verbose=True):
    """Records of every usable image in ``path`` (a source or list of sources) and the combined ScanReport."""
    data = data or {}
    sources = _as_list(path)
    if not sources:
        raise ValueError(f'{prefix}no image sources given')
    fmt = data.get('format') or ('voc' if any('ImageSets' in Path(str(s)).parts for s in sources) else 'yolo')
    if fmt == 'voc' and not data.get('names'):
        raise ValueError(f'{sources[0]}: VOC sources need class names (pass data=check_dataset(...))')
    records, report = [], ScanReport()
    for src in sources:
        if not Path(src).exists():
            raise FileNotFoundError(f'{src}: image source not found')
        json_file = _json_for(src, data) if fmt == 'coco' else None
        recs, rep, cached = scan_source(src, fmt, data.get('nc'), data.get('names'), json_file, use_cache)
        records += recs
        report.add(rep)
        if verbose:
            print(f"{prefix}{src}: {rep.summary()}{' (from cache)' if cached else ''}")
    if verbose:
        for file, reason in report.messages[:10]:
            print(f'{prefix}  skipped/fixed {file}: {reason}')
        if len(report.messages) > 10:
            print(f'{prefix}  ... and {len(report.messages) - 10} more')
    if not records:
        raise ValueError(f'{sources[0]}: no usable images ({report.summary()})')
    return records, report


def _json_for(src, data):
    ann = data.get('annotations') or {}
    for split in SPLITS:
        if str(src) in [str(s) for s in _as_list(data.get(split))] and split in ann:
            return ann[split]
    return next(iter(ann.values())) if len(ann) == 1 else None


# ---------------------------------------------------------------- dataset
class DetectionDataset(Dataset):
    """Images + labels of one split, with YOLOv5 training augmentation or val letterboxing.

    ``mosaic`` may be switched off between epochs (``--close-mosaic``); each worker has its own seeded RNG.
    """

    def __init__(self, path, img_size=640, batch_size=16, augment=False, hyp=None, rect=False, cache=None,
                 stride=32, pad=0.0, single_cls=False, seed=0, data=None, prefix='', keep_difficult=False,
                 use_label_cache=True, verbose=True):
        self.img_size, self.stride, self.augment, self.prefix = img_size, stride, augment, prefix
        self.hyp = load_hyp(hyp) if augment else (load_hyp(hyp) if hyp is not None else None)
        self.records, self.report = load_records(path, data, prefix, use_label_cache, verbose)
        self.names = list((data or {}).get('names') or [])
        self.nc = 1 if single_cls else ((data or {}).get('nc') or len(self.names) or None)
        self.mosaic = augment and not rect
        self.rect = rect
        self.labels = [self._training_labels(r, augment and not keep_difficult, single_cls) for r in self.records]
        if rect:
            self._sort_by_aspect_ratio()
        self.batch_shapes, self.batch_index = self._batch_shapes(batch_size, pad) if rect else (None, None)
        self.rng = np.random.default_rng(seed)
        self.albumentations = Albumentations(seed=seed) if augment else None
        self.ims = self._cache_images() if cache in ('ram', True) else None
        if cache not in (None, False, 'ram', True):
            raise ValueError(f"cache '{cache}' must be 'ram' or None")

    @property
    def im_files(self):
        return [r.im_file for r in self.records]

    @property
    def shapes(self):
        return np.array([r.shape[::-1] for r in self.records], dtype=np.int64).reshape(-1, 2)  # (w, h)

    @staticmethod
    def _training_labels(rec, drop_flagged, single_cls):
        keep = ~(rec.difficult | rec.crowd) if drop_flagged else np.ones(len(rec.cls), bool)
        cls = np.zeros(int(keep.sum())) if single_cls else rec.cls[keep]
        return np.concatenate((cls[:, None], rec.boxes[keep]), 1).astype(np.float32).reshape(-1, 5)

    def _sort_by_aspect_ratio(self):
        order = np.argsort([r.shape[0] / r.shape[1] for r in self.records], kind='stable')
        self.records = [self.records[i] for i in order]
        self.labels = [self.labels[i] for i in order]

    def _batch_shapes(self, batch_size, pad):
        """Per batch an (h, w) stride multiple that fits its images' aspect ratios (rect val)."""
        ar = np.array([r.shape[0] / r.shape[1] for r in self.records])
        index = np.arange(len(ar)) // batch_size
        shapes = []
        for b in range(index[-1] + 1):
            a = ar[index == b]
            hw = [a.max(), 1] if a.max() < 1 else [1, 1 / a.min()] if a.min() > 1 else [1, 1]
            shapes.append(np.ceil(np.array(hw) * self.img_size / self.stride + pad).astype(int) * self.stride)
        return np.array(shapes), index

    def _cache_images(self):
        with ThreadPool(4) as pool:
            return list(pool.map(self._read_resized, range(len(self.records))))

    def __len__(self):
        return len(self.records)

    # -------------------------------------------------------- loading
    def _read_resized(self, i):
        """(image BGR resized so its long side is img_size, (h0, w0), ok); grey placeholder if unreadable."""
        im = cv2.imread(self.records[i].im_file)
        if im is None:
            h, w = self.records[i].shape
            r = self.img_size / max(h, w)
            return np.full((max(1, round(h * r)), max(1, round(w * r)), 3), 114, np.uint8), (h, w), False
        h0, w0 = im.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            interp = cv2.INTER_LINEAR if (self.augment or r > 1) else cv2.INTER_AREA
            im = cv2.resize(im, (max(1, round(w0 * r)), max(1, round(h0 * r))), interpolation=interp)
        return im, (h0, w0), True

    def load_image(self, i):
        if self.ims is not None:
            return self.ims[i]
        im, hw0, ok = self._read_resized(i)
        if not ok:
            print(f'{self.prefix}WARNING {self.records[i].im_file}: unreadable at load time, used blank image')
        return im, hw0, ok

    def _pixel_labels(self, i, w, h, padw=0.0, padh=0.0, ok=True):
        """Labels of image i as [cls, x1, y1, x2, y2] pixels in an image of (w, h) placed at (padw, padh)."""
        lb = self.labels[i].copy() if ok else np.zeros((0, 5), np.float32)
        lb[:, 1:] = xywhn2xyxy(lb[:, 1:], w, h, padw, padh)
        return lb

    def _three_others(self, index):
        """Three other images for a mosaic, distinct whenever the dataset has enough of them."""
        n = len(self)
        if n == 1:
            return [index] * 3
        others = self.rng.choice(n - 1, 3, replace=n - 1 < 3)
        return [int(i) + (i >= index) for i in others]  # skip ``index`` itself

    def load_mosaic(self, index):
        idx = [index] + self._three_others(index)
        ims, lbs = [], []
        for i in idx:
            im, _, ok = self.load_image(int(i))
            ims.append(im)
            lbs.append(self._pixel_labels(int(i), im.shape[1], im.shape[0], ok=ok))
        canvas, labels = mosaic4(ims, lbs, self.img_size, self.rng)
        h = self.hyp
        border = (-self.img_size // 2, -self.img_size // 2)
        return random_perspective(canvas, labels, self.rng, h['degrees'], h['translate'], h['scale'], h['shear'],
                                  h['perspective'], border=border)

    def _load_letterboxed(self, index):
        im, (h0, w0), ok = self.load_image(index)
        h, w = im.shape[:2]
        shape = tuple(self.batch_shapes[self.batch_index[index]]) if self.rect else self.img_size
        im, (rw, rh), pad = letterbox(im, shape, auto=False, scaleup=self.augment)
        shapes = (h0, w0), ((float(h / h0 * rh), float(w / w0 * rw)), (float(pad[0]), float(pad[1])))
        labels = self._pixel_labels(index, w * rw, h * rh, pad[0], pad[1], ok)
        if self.augment:
            hp = self.hyp
            im, labels = random_perspective(im, labels, self.rng, hp['degrees'], hp['translate'], hp['scale'],
                                            hp['shear'], hp['perspective'])
        return im, labels, shapes

    def __getitem__(self, index):
        if self.augment and self.mosaic and self.rng.random() < self.hyp['mosaic']:
            im, labels = self.load_mosaic(index)
            shapes = None
            if self.rng.random() < self.hyp['mixup']:
                im2, labels2 = self.load_mosaic(int(self.rng.integers(0, len(self))))
                im, labels = mixup(im, labels, im2, labels2, self.rng)
        else:
            im, labels, shapes = self._load_letterboxed(index)
        labels = labels.astype(np.float32)
        if len(labels):
            labels[:, 1:5] = xyxy2xywhn(labels[:, 1:5], w=im.shape[1], h=im.shape[0], clip=True)
        if self.augment:
            im, labels = self._colour_and_flips(im, labels)
        out = torch.zeros((len(labels), 6))
        out[:, 1:] = torch.from_numpy(labels)
        im = np.ascontiguousarray(im.transpose(2, 0, 1)[::-1])  # HWC BGR -> CHW RGB
        return torch.from_numpy(im), out, self.records[index].im_file, shapes

    def _colour_and_flips(self, im, labels):
        h = self.hyp
        if self.albumentations is not None:
            im, labels = self.albumentations(im, labels)
        augment_hsv(im, self.rng, h['hsv_h'], h['hsv_s'], h['hsv_v'])
        if self.rng.random() < h['flipud']:
            im, labels = flip_ud(im, labels)
        if self.rng.random() < h['fliplr']:
            im, labels = flip_lr(im, labels)
        return im, labels

    @staticmethod
    def collate_fn(batch):
        ims, labels, paths, shapes = zip(*batch)
        for i, lb in enumerate(labels):
            lb[:, 0] = i  # image index within the batch
        return torch.stack(ims, 0), torch.cat(labels, 0), paths, shapes


def seed_worker(worker_id):
    """Give each loader worker its own RNG stream derived from the loader's seeded base seed."""
    info = get_worker_info()
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C reaches the whole process group: the main process
        signal.signal(sig, signal.SIG_IGN)      # decides (utils/interrupt.py); workers end with it
    cv2.setNumThreads(0)  # workers are the parallelism; avoid oversubscribing the cores
    ds = info.dataset
    ds.rng = np.random.default_rng(info.seed)
    if ds.albumentations is not None:
        ds.albumentations.set_seed(info.seed % 2 ** 32)


def reseed_loader(loader, seed):
    """Restart a loader's randomness (shuffling, worker seeds, in-process augmentation) from ``seed``.

    train.py calls it at every epoch with a seed derived from the epoch, so a resumed run replays the same batches.
    """
    loader.generator.manual_seed(seed)
    ds = loader.dataset
    ds.rng = np.random.default_rng(seed)
    if ds.albumentations is not None:
        ds.albumentations.set_seed(seed % 2 ** 32)


def create_dataloader(path, imgsz, batch_size, stride, hyp=None, augment=False, rect=False, cache=None, workers=0,
                      shuffle=False, rank=-1, pad=0.0, single_cls=False, seed=0, data=None, prefix='',
                      keep_difficult=False, use_label_cache=True, verbose=True):
    """(DataLoader, DetectionDataset) for one split; see the module docstring for the batch layout."""
    if rect and shuffle:
        print(f'{prefix}WARNING --rect is incompatible with shuffle, shuffle=False')
        shuffle = False
    dataset = DetectionDataset(path, imgsz, batch_size, augment, hyp, rect, cache, stride, pad, single_cls, seed,
                               data, prefix, keep_difficult, use_label_cache, verbose)
    batch_size = min(batch_size, len(dataset))
    sampler = None if rank == -1 else DistributedSampler(dataset, shuffle=shuffle, seed=seed)
    generator = torch.Generator()
    generator.manual_seed(seed + max(rank, 0))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                        num_workers=workers, pin_memory=torch.cuda.is_available(),
                        collate_fn=DetectionDataset.collate_fn, worker_init_fn=seed_worker, generator=generator,
                        persistent_workers=False)
    return loader, dataset

"""The detection dataset and its loader (data YAMLs and hyp files: :mod:`utils.data.config`).

Usage::

    data = check_dataset('data/shapes.yaml')                 # resolves paths, generates the demo set
    loader, ds = create_dataloader(data['train'], 320, 16, 32, data=data, hyp=hyp, augment=True)
    for imgs, targets, paths, metas in loader: ...           # uint8 Bx3xHxW RGB, Nx6 [i, cls, cx, cy, w, h]

``metas`` holds one :class:`ImageMeta` per image: its index into ``ds.records`` (the ground truth), image id,
path, original (h, w) and the gain and pad that placed it in the batch (what ``scale_boxes`` needs).

Below the loader: its worker processes and the order of their draws, ``--image-weights`` included.

``SeededDraws`` numbers each image drawn in the main process, so augmentation does not depend on --workers;
``reseed_loader`` restarts a loader's randomness at every epoch; ``seed_worker`` sets up each worker (signals,
threads); ``end_workers_at_exit`` ends a loader's kept workers before the interpreter's exit would wait for them.

--image-weights: draw training images (with replacement) in proportion to how rare their classes are.

A class's weight is 1 / (its box count); an image's weight is the sum of its boxes' class weights (an image
without boxes gets the smallest non-zero image weight, so it can still be drawn). Upstream YOLOv5 also
multiplies the class weights by (1 - mAP of the class)^2 from the latest validation; we weight by rarity alone,
so the draw of an epoch depends only on (seed, epoch) and a resumed run replays it exactly.
"""
import atexit
import signal
import weakref
from dataclasses import dataclass, replace
from multiprocessing.pool import ThreadPool
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler

from utils.data.augment import (Albumentations, augment_hsv, flip_lr, flip_ud, letterbox, mixup, mosaic4,
                           random_perspective)
from utils.boxes import xywhn2xyxy, xyxy2xywhn
from utils.data.config import SPLITS, as_list, check_dataset, load_hyp  # noqa: F401 (check_dataset: public here too)
from utils.data.image_cache import auto_cache, read_cached
from utils.data.label_scan import ScanReport, assign_image_ids, scan_source
from utils.data.sizes import long_side_to
from utils.errors import InputError


@dataclass(frozen=True)
class ImageMeta:
    """One image's identity and geometry, returned by the dataset beside its pixels.

    ``index``: position in ``dataset.records`` (its ground truth); ``image_id``: unique within the dataset (COCO
    id, else the numeric file stem, else the position in path order); ``orig_hw``: original (h, w) pixels;
    ``gain_xy`` (gx, gy) and ``pad_xy`` (left, top): the placement in the network input as applied, so that
    input x = original x * gx + left (see :class:`utils.boxes.Placement`). Both are None for a mosaic.
    """
    index: int
    image_id: object
    path: str
    orig_hw: tuple
    gain_xy: tuple = None
    pad_xy: tuple = None


CACHE_MODES = ('ram', 'disk', 'auto', 'off')  # --cache values (train.py, benchmarks/dataloader.py)


@dataclass(frozen=True)
class LoaderOptions:
    """How a split is loaded; ``create_dataloader`` takes these as keyword arguments.

    ``rect`` batches images of similar aspect ratio into the smallest stride-multiple shape (+ ``pad`` strides);
    ``keep_difficult`` keeps VOC difficult boxes in the training labels (COCO crowd regions never are; evaluation
    reads both from the records either way); ``cache='ram'`` keeps the resized images in memory, ``'auto'`` does
    when they fit (utils/data/image_cache.py), ``cache='disk'`` reads decoded images from .npy files
    (utils/data/image_cache.py); ``image_weights`` draws images by class rarity instead of shuffling
    (``ImageWeightSampler``).
    """
    hyp: object = None
    augment: bool = False
    rect: bool = False
    cache: object = None
    workers: int = 0
    shuffle: bool = False
    rank: int = -1
    pad: float = 0.0
    single_cls: bool = False
    seed: int = 0
    prefix: str = ''
    keep_difficult: bool = False
    use_label_cache: bool = True
    image_weights: bool = False
    # reused pass after pass (the trainer's val loader): workers stay between passes instead of being forked again.
    # Opt-in: workers ignore SIGTERM (``seed_worker``), so kept ones outliving a loader's last pass would make
    # the interpreter's exit, which joins them, wait forever.
    keep_workers: bool = False
    verbose: bool = True


# ---------------------------------------------------------------- records
def load_records(path, data=None, prefix='', use_cache=True, verbose=True):
    """Records of every usable image in ``path`` (a source or list of sources) and the combined ScanReport."""
    data = data or {}
    sources = as_list(path)
    if not sources:
        raise InputError(f'{prefix}no image sources given')
    fmt = data.get('format') or ('voc' if any('ImageSets' in Path(str(s)).parts for s in sources) else 'yolo')
    if fmt == 'voc' and not data.get('names'):
        raise InputError(f'{sources[0]}: VOC sources need class names (pass data=check_dataset(...))')
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
            if rep.cache_note:  # why the cache was rebuilt, or where it went (read-only data)
                print(f'{prefix}{rep.cache_note}')
    if verbose:
        for file, reason in report.messages[:10]:
            print(f'{prefix}  skipped/fixed {file}: {reason}')
        if len(report.messages) > 10:
            print(f'{prefix}  ... and {len(report.messages) - 10} more')
    if not records:
        raise InputError(f'{sources[0]}: no usable images ({report.summary()})')
    return records, report


def _json_for(src, data):
    ann = data.get('annotations') or {}
    for split in SPLITS:
        if str(src) in [str(s) for s in as_list(data.get(split))] and split in ann:
            return ann[split]
    return next(iter(ann.values())) if len(ann) == 1 else None


# ---------------------------------------------------------------- dataset
class DetectionDataset(Dataset):
    """Images + labels of one split, with YOLOv5 training augmentation or val letterboxing.

    ``mosaic`` may be switched off between epochs (``--close-mosaic``). Indexed by the loader with
    ``(index, key)`` (see :class:`SeededDraws`), an image's augmentation is drawn from an RNG seeded by ``key``;
    indexed with a plain ``index``, from the dataset's own RNG.
    """

    def __init__(self, path, img_size=640, batch_size=16, stride=32, data=None, options=None):
        o = options or LoaderOptions()
        self.img_size, self.stride, self.augment, self.prefix = img_size, stride, o.augment, o.prefix
        self.hyp = load_hyp(o.hyp) if o.augment or o.hyp is not None else None
        self.records, self.report = load_records(path, data, o.prefix, o.use_label_cache, o.verbose)
        self.names = list((data or {}).get('names') or [])
        self.nc = 1 if o.single_cls else ((data or {}).get('nc') or len(self.names) or None)
        self.mosaic = o.augment and not o.rect
        self.rect = o.rect
        self.labels = [self._training_labels(r, o.augment, o.keep_difficult, o.single_cls)
                       for r in self.records]
        if o.rect:
            self._sort_by_aspect_ratio()
        ids = assign_image_ids(self.records)
        self.image_ids = [ids[str(r.im_file)] for r in self.records]
        self.batch_shapes, self.batch_index = self._batch_shapes(batch_size, o.pad) if o.rect else (None, None)
        self.rng = np.random.default_rng(o.seed)
        self.albumentations = Albumentations(seed=o.seed) if o.augment else None
        if o.cache not in (None, False, True, *CACHE_MODES):
            raise InputError(f"cache '{o.cache}' must be {', '.join(map(repr, CACHE_MODES))} or None")
        self.disk_cache = o.cache == 'disk'
        self.ims = self._cache_images() if self._in_ram(o.cache, o.verbose) else None

    @property
    def im_files(self):
        return [r.im_file for r in self.records]

    @property
    def shapes(self):
        return np.array([r.shape[::-1] for r in self.records], dtype=np.int64).reshape(-1, 2)  # (w, h)

    @staticmethod
    def _training_labels(rec, augment, keep_difficult, single_cls):
        """(n, 5) [cls, cx, cy, w, h] of one record. Training (``augment``) leaves out crowd regions and, unless
        ``keep_difficult``, difficult boxes; validation keeps every box, in record order."""
        flagged = rec.crowd | (rec.difficult & (not keep_difficult))
        keep = ~flagged if augment else np.ones(len(rec.cls), bool)
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

    def _in_ram(self, cache, verbose):
        """Whether the resized images are kept in RAM: --cache ram, or --cache auto when they fit
        (utils/data/image_cache.py, which says which in one line)."""
        if cache != 'auto':
            return cache in ('ram', True)
        decision = auto_cache([r.shape for r in self.records], self.img_size)
        if verbose:
            print(decision.line(self.prefix))
        return decision.use

    def _cache_images(self):
        with ThreadPool(4) as pool:
            return list(pool.map(self._read_resized, range(len(self.records))))

    def __len__(self):
        return len(self.records)

    # -------------------------------------------------------- loading
    def _read_resized(self, i):
        """(image BGR resized so its long side is img_size, (h0, w0), ok); grey placeholder if unreadable."""
        f = self.records[i].im_file
        im = read_cached(f) if self.disk_cache else cv2.imread(f)
        if im is None:
            h, w = self.records[i].shape
            return np.full((*long_side_to(h, w, self.img_size), 3), 114, np.uint8), (h, w), False
        h0, w0 = im.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            interp = cv2.INTER_LINEAR if (self.augment or r > 1) else cv2.INTER_AREA
            h, w = long_side_to(h0, w0, self.img_size)
            im = cv2.resize(im, (w, h), interpolation=interp)
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

    def meta(self, index, orig_hw, gain_xy=None, pad_xy=None):
        return ImageMeta(index, self.image_ids[index], self.records[index].im_file, tuple(orig_hw), gain_xy, pad_xy)

    def _load_letterboxed(self, index):
        """(image, labels [cls, x1, y1, x2, y2] pixels, meta); the meta's placement is None once augmented."""
        im, (h0, w0), ok = self.load_image(index)
        h, w = im.shape[:2]
        shape = tuple(self.batch_shapes[self.batch_index[index]]) if self.rect else self.img_size
        im, (gx, gy), (left, top) = letterbox(im, shape, auto=False, scaleup=self.augment)
        labels = self._pixel_labels(index, w * gx, h * gy, left, top, ok)
        if self.augment:  # warps and flips follow: no single gain and pad describes the result
            hp = self.hyp
            im, labels = random_perspective(im, labels, self.rng, hp['degrees'], hp['translate'], hp['scale'],
                                            hp['shear'], hp['perspective'])
            return im, labels, self.meta(index, (h0, w0))
        return im, labels, self.meta(index, (h0, w0), (w / w0 * gx, h / h0 * gy), (left, top))

    def __getitem__(self, index):
        """(CHW RGB uint8 image, labels (n, 6) [0, cls, cx, cy, w, h] normalised, path, ImageMeta)."""
        if isinstance(index, tuple):
            index, key = index
            self.seed_draw(key)
        if self.augment and self.mosaic and self.rng.random() < self.hyp['mosaic']:
            im, labels = self.load_mosaic(index)
            meta = self.meta(index, self.records[index].shape)
            if self.rng.random() < self.hyp['mixup']:
                im2, labels2 = self.load_mosaic(int(self.rng.integers(0, len(self))))
                im, labels = mixup(im, labels, im2, labels2, self.rng)
        else:
            im, labels, meta = self._load_letterboxed(index)
        labels = labels.astype(np.float32)
        if len(labels):
            labels[:, 1:5] = xyxy2xywhn(labels[:, 1:5], w=im.shape[1], h=im.shape[0], clip=True)
        if self.augment:
            im, labels = self._colour_and_flips(im, labels)
        out = torch.zeros((len(labels), 6))
        out[:, 1:] = torch.from_numpy(labels)
        im = np.ascontiguousarray(im.transpose(2, 0, 1)[::-1])  # HWC BGR -> CHW RGB
        return torch.from_numpy(im), out, self.records[index].im_file, meta

    def seed_draw(self, key):
        """The RNGs of one draw (numpy and albumentations), from its ``(seed, draw)`` key alone: not from a stream
        that depends on which worker loads the image or what it loaded before."""
        self.rng = np.random.default_rng(key)
        if self.albumentations is not None:
            self.albumentations.set_seed(int(self.rng.integers(2 ** 32)))

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
        ims, labels, paths, metas = zip(*batch)
        for i, lb in enumerate(labels):
            lb[:, 0] = i  # image index within the batch
        return torch.stack(ims, 0), torch.cat(labels, 0), paths, metas


def create_dataloader(path, imgsz, batch_size, stride, data=None, **options):
    """(DataLoader, DetectionDataset) for one split; ``options`` are :class:`LoaderOptions` fields (hyp, augment,
    rect, cache, workers, shuffle, rank, pad, single_cls, seed, prefix, ...). Batch layout: module docstring."""
    o = LoaderOptions(**options)
    if o.rect and o.shuffle:
        print(f'{o.prefix}WARNING --rect is incompatible with shuffle, shuffle=False')
        o = replace(o, shuffle=False)
    dataset = DetectionDataset(path, imgsz, batch_size, stride, data, o)
    batch_size = min(batch_size, len(dataset))
    generator = torch.Generator()
    generator.manual_seed(o.seed + max(o.rank, 0))
    sampler = SeededDraws(_order_sampler(dataset, o, generator), o.seed + max(o.rank, 0))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                        num_workers=o.workers, pin_memory=torch.cuda.is_available(),
                        collate_fn=DetectionDataset.collate_fn, worker_init_fn=seed_worker, generator=generator,
                        persistent_workers=o.workers > 0 and o.keep_workers)  # opt-in: see LoaderOptions
    if loader.persistent_workers:
        end_workers_at_exit(loader)
    return loader, dataset


def _order_sampler(dataset, o, generator):
    """The image order: drawn by --image-weights, split between DDP processes, shuffled (as DataLoader's
    shuffle=True would, from ``generator``) or as listed."""
    if o.image_weights:
        return ImageWeightSampler(dataset.labels, dataset.nc or 1, o.seed)
    if o.rank != -1:
        return DistributedSampler(dataset, shuffle=o.shuffle, seed=o.seed)
    return RandomSampler(dataset, generator=generator) if o.shuffle else SequentialSampler(dataset)


class SeededDraws(Sampler):
    """Wraps the loader's sampler to yield ``(index, (seed, draw))``, ``draw`` counting the images drawn since the
    last ``reseed``. Counted here, in the main process, so an image's augmentation (``DetectionDataset.seed_draw``)
    depends on the seed and its place in the epoch only, not on --workers: with per-worker RNG streams a run
    resumed with another worker count (``--resume`` keeps the new call's --workers) trained on other images."""

    def __init__(self, sampler, seed):
        self.sampler, self.seed, self.draws = sampler, seed, 0

    def reseed(self, seed):
        self.seed, self.draws = seed, 0

    def set_epoch(self, epoch):
        if hasattr(self.sampler, 'set_epoch'):  # DistributedSampler, ImageWeightSampler
            self.sampler.set_epoch(epoch)

    def __len__(self):
        return len(self.sampler)

    def __iter__(self):
        for index in self.sampler:
            self.draws += 1
            yield index, (self.seed, self.draws)


def seed_worker(worker_id):
    """Loader worker set-up: signals and threads (its images' RNGs come with their indices, see SeededDraws)."""
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C reaches the whole process group: the main process
        signal.signal(sig, signal.SIG_IGN)      # decides (utils/train/engine.py); workers end with it
    cv2.setNumThreads(0)  # workers are the parallelism; avoid oversubscribing the cores


def reseed_loader(loader, seed):
    """Restart a loader's randomness (shuffling, worker seeds, the draws' augmentation) from ``seed``.

    train.py calls it at every epoch with a seed derived from the epoch, so a resumed run replays the same batches.
    """
    loader.generator.manual_seed(seed)
    loader.sampler.reseed(seed)


def end_kept_workers(loader_ref):
    """Exit hook of a loader with kept workers: drop its iterator, which ends them the normal way.

    Kept workers ignore SIGTERM (``seed_worker``), and the interpreter's exit, which terminates and joins every
    child, would wait for them forever while the loader is still referenced (a module global, a cycle). Registered
    after ``multiprocessing``'s own exit hook, this one runs before it."""
    loader = loader_ref()
    if loader is not None:
        loader._iterator = None  # DataLoader's iterator shuts its workers down when released


def end_workers_at_exit(loader):
    """Have ``loader``'s kept workers ended at exit (``end_kept_workers``), without keeping the loader alive."""
    atexit.register(end_kept_workers, weakref.ref(loader))


def class_weights(labels, nc):
    """(nc,) weights summing to 1: inverse box count per class (a class without boxes counts as one box)."""
    classes = np.concatenate([lb[:, 0] for lb in labels]).astype(int) if labels else np.zeros(0, int)
    counts = np.bincount(classes, minlength=nc)[:nc].astype(np.float64)
    weights = 1 / np.maximum(counts, 1)
    return weights / weights.sum()


def image_weights(labels, nc):
    """(n,) weights summing to 1: per image, the sum of its boxes' class weights."""
    cw = class_weights(labels, nc)
    w = np.array([cw[lb[:, 0].astype(int)].sum() for lb in labels], dtype=np.float64)
    floor = w[w > 0].min() if (w > 0).any() else 1.0
    w = np.where(w > 0, w, floor)
    return w / w.sum()


class ImageWeightSampler(Sampler):
    """``len(labels)`` indices per epoch, drawn with replacement by ``image_weights``; ``set_epoch`` (called by
    the trainer every epoch) makes the draw a function of (seed, epoch)."""

    def __init__(self, labels, nc, seed=0):
        self.weights = torch.from_numpy(image_weights(labels, nc))
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.weights)

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.multinomial(self.weights, len(self.weights), replacement=True, generator=g).tolist())

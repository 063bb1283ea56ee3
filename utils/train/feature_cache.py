"""``--cache features``: the frozen layers run once per augmented view of each training image, not every epoch.

    cache = build_feature_cache(run, model, dataset)      # K views x N images through layers 0..cut-1, fp16
    loader = FeatureLoader(cache, batch_size, seed, hyp)  # the training loader: batches of cached outputs

Before the first epoch, each view k (0..K-1, ``--cache-views``) of each training image is drawn by the normal
training pipeline (mosaic, HSV, flips, affine, as the hyp says), seeded by (seed, k, image) alone, so a rebuild
draws the same views. It goes through the frozen prefix, layers 0..cut-1 (``models.prefix_memo.frozen_prefix_len``;
Detect never); only the outputs that layers >= cut read are kept (for YOLOv5 at --freeze 10: layers 4, 6 and 9), in
fp16, with the view's labels.

Where (utils/train/feature_store.py): in RAM when they fit in ``RAM_SHARE`` of the memory available, else in .npy
files (memory-mapped) under ``$YOLOV5_FREEZE_CACHE/features`` (default ``~/.cache/yolov5-freeze/features``), one
folder per training list and image size. A folder whose key (the frozen layers' tensors, image size, cut, K, seed,
the hyp's augmentation, the training images and labels) matches is reused, also by a run that would fit in RAM; one
whose key differs is rebuilt (in a private folder, moved in place when complete, so runs sharing the folder never
read a half-written cache) or, when the new cache stays in RAM, removed. When neither fits, one line says how
large the cache would be.

Training: epoch e gives image i its view ``(offset_i + e) % K`` (``offset_i`` drawn from the seed), so each image
cycles through its K views, in an order shuffled per (seed, epoch). The model runs from layer ``cut`` on the cached
outputs (``CachedBatch.forward``); the frozen layers do not run. Optional, in feature space (hyp keys, default 0;
utils/train/feature_augment.py):
``feature_fliplr`` (probability of a horizontal flip of every cached map, labels flipped) and ``feature_shift``
(largest shift, as a fraction of the image, in whole cells of the coarsest level; the uncovered border takes the
values a plain grey letterbox image gives there). ``feature_mosaic: 1`` caches each view at half the image size,
drawn without mosaic, and assembles every training sample from four of them, 2 x 2, in feature space: a mosaic
whose four images change every epoch, from a cache a quarter the size (the quadrants' borders are an approximation:
each was computed with padding where a real mosaic has its neighbour). ``feature_crop`` (default 0.8, ``FEATURE_CROP``;
1 or 0: none) trains each sample on a window of that share of its side (whole cells of the coarsest level, at a
random place each epoch; the boxes centred in it, whole): objects keep their size, and the layers after the cache do
0.64 of the work.
"""
import copy
import hashlib
import json
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from models.fastpath import runs_nhwc
from models.prefix_memo import frozen_prefix_len
from utils.data.datasets import DetectionDataset, seed_worker
from utils.errors import InputError
from utils.train.feature_augment import augment_one, crop_batch, crop_cells, mosaic_labels, mosaic_maps
from utils.train.feature_store import (allocate, build_folder, cache_dir, changed_parts, choose_storage, publish,
                                       retire, reuse, save_disk, saved_key, size_text)

VIEW_STREAM = 7919  # tags the (seed, stream, view, image) keys of the views' draws, apart from training's
AUGMENT_KEYS = ('hsv_h', 'hsv_s', 'hsv_v', 'degrees', 'translate', 'scale', 'shear', 'perspective', 'flipud',
                'fliplr', 'mosaic', 'mixup', 'copy_paste', 'feature_mosaic')
GREY = 114  # the letterbox's fill value
FEATURE_CROP = 0.8  # hyp feature_crop when the hyp has none: chosen on a hold-out split (docs/performance.md)


def check_options(opt, world_size):
    """One-line refusals of what --cache features does not support (train.py's check_options)."""
    refusals = (
        ([str(f) for f in opt.freeze] == ['0'], '--freeze 0: nothing is frozen, so there is nothing to cache'),
        (opt.multi_scale, '--multi-scale: the cached views have one image size'),
        (opt.rect, '--rect: the cached views are square mosaics/letterboxes'),
        (world_size > 1, 'DDP: each process would build its own cache'),
        (opt.unfreeze_epoch >= 0, '--unfreeze-epoch: the cached layers would change mid-run'),
        (opt.image_weights, '--image-weights: cached views are drawn uniformly'),
        (opt.close_mosaic > 0, '--close-mosaic: the cached views keep their mosaics'),
        (getattr(opt, 'keep_classes', False), '--keep-classes: not supported with a feature cache'),
        (opt.cache_views < 1, f'--cache-views {opt.cache_views}: must be at least 1'),
    )
    for refused, why in refusals:
        if refused:
            raise InputError(f'--cache features with {why}')


# ---------------------------------------------------------------- what the frozen prefix hands on
def kept_layers(model, cut):
    """Indices < ``cut`` whose outputs layers >= ``cut`` read: the last prefix layer and earlier saved ones."""
    kept = {cut - 1}
    for m in model.model[cut:]:
        for j in ([m.f] if isinstance(m.f, int) else m.f):
            if j != -1 and j < cut:
                kept.add(j)
    return sorted(kept)


def prefix_outputs(model, imgs, cut, kept):
    """[outputs of layers ``kept``] for float images ``imgs`` (0-1), the frozen prefix run in eval mode, no grad,
    and in NHWC on CPU where the frozen fast path runs it so (the training forward it stands in for)."""
    if runs_nhwc(model.fast_path, imgs):
        imgs = imgs.contiguous(memory_format=torch.channels_last)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            y = []
            y[cut - 1:] = [model.run_layers(0, imgs, y, stop=cut)]  # the last one is saved only when read later
    finally:
        model.train(was_training)
    return [y[j] for j in kept]


def probe_prefix(model, imgsz, cut, kept, device):
    """([(C, H, W)] of the kept outputs of one view, [(C,) fp16 values a plain grey image gives at their centre]:
    the shapes to allocate, and the border of a shifted map)."""
    grey = torch.full((1, 3, imgsz, imgsz), GREY / 255, device=device)
    outs = prefix_outputs(model, grey, cut, kept)
    return ([tuple(o.shape[1:]) for o in outs],
            [o[0, :, o.shape[2] // 2, o.shape[3] // 2].half().cpu().numpy() for o in outs])


# ---------------------------------------------------------------- the key
def tensor_digest(model, cut):
    h = hashlib.blake2b(digest_size=16)
    for name, t in (*model.model[:cut].named_parameters(), *model.model[:cut].named_buffers()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def data_digest(dataset):
    h = hashlib.blake2b(digest_size=16)
    for f, labels in zip(dataset.im_files, dataset.labels):
        st = os.stat(f)
        h.update(f'{f}\0{st.st_size}\0{st.st_mtime_ns}\0'.encode())
        h.update(np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()


def cache_key(model, cut, dataset, imgsz, views, seed, hyp):
    """{part: digest} of everything the cached views depend on; two caches match when every part does."""
    aug = {k: hyp.get(k) for k in AUGMENT_KEYS}
    return {'weights': tensor_digest(model, cut), 'imgsz': str(imgsz), 'freeze': str(cut), 'views': str(views),
            'seed': str(seed), 'hyp': json.dumps(aug, sort_keys=True), 'data': data_digest(dataset)}


# ---------------------------------------------------------------- storage
@dataclass
class FeatureCache:
    """K views x N images of the kept layers' outputs: ``arrays[j]`` is (K * N, C, H, W) fp16, row ``k * N + i``;
    ``labels[row]`` (n, 5) [cls, cx, cy, w, h] normalised; ``fill[j]`` (C,) fp16 (``probe_prefix``)."""
    kept: list
    cut: int
    arrays: list
    labels: list
    fill: list
    strides: list
    n_images: int
    views: int
    mosaic: bool = False  # views at half size, assembled 2 x 2 per sample (hyp feature_mosaic)
    where: str = 'RAM'
    build_s: float = 0.0

    @property
    def nbytes(self):
        return sum(a.nbytes for a in self.arrays)


# ---------------------------------------------------------------- building
def view_batches(dataset, views, seed, batch_size, workers):
    """Batches (images uint8, targets, paths, metas) of every view: view k, image i drawn with key
    (seed, VIEW_STREAM, k, i). Rows in order: view 0's images, then view 1's, ..."""
    n = len(dataset)
    keys = [(i, (seed, VIEW_STREAM, k, i)) for k in range(views) for i in range(n)]
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=keys, num_workers=workers,
                                       collate_fn=DetectionDataset.collate_fn, worker_init_fn=seed_worker)


def fill_cache(model, cache, batches, device, show=True):
    """Run every view batch through the frozen prefix into ``cache.arrays``/``cache.labels``."""
    row = 0
    bar = tqdm(batches, desc='--cache features', disable=not show, bar_format='{l_bar}{bar:10}{r_bar}')
    for imgs, targets, _, _ in bar:
        outs = prefix_outputs(model, imgs.to(device).float() / 255, cache.cut, cache.kept)
        for array, out in zip(cache.arrays, outs):
            array[row:row + len(imgs)] = out.half().cpu().numpy()
        for b in range(len(imgs)):
            cache.labels.append(targets[targets[:, 0] == b, 1:].numpy().copy())
        row += len(imgs)


def half_size_views(dataset):
    """``dataset`` drawing views at half its image size without mosaic (hyp feature_mosaic: the loader assembles
    four of them); everything else (colour, flips, affine) as its hyp says."""
    if dataset.img_size % 64:
        raise InputError(f'--cache features with feature_mosaic: --img-size {dataset.img_size} must be a multiple of '
                         f'64 (each quadrant a multiple of the stride 32)')
    half = copy.copy(dataset)
    half.img_size, half.ims, half.mosaic = dataset.img_size // 2, None, False
    half.hyp = {**dataset.hyp, 'mosaic': 0.0, 'mixup': 0.0}
    return half


def build_feature_cache(run, model, dataset, views, log=print):
    """The FeatureCache of ``dataset``'s training views for ``model``'s frozen prefix: reused from disk when its
    key matches, else built (in RAM or on disk, see the module docstring)."""
    cut = frozen_prefix_len(model)
    if cut == 0:
        raise InputError('--cache features: the model has no frozen prefix (its first layer trains, or '
                         '--freeze-bn-stats false lets frozen BatchNorm statistics change); use --freeze N')
    t0, imgsz, n = time.perf_counter(), dataset.img_size, len(dataset)
    mosaic = bool(dataset.hyp.get('feature_mosaic', 0))
    drawn = half_size_views(dataset) if mosaic else dataset
    kept = kept_layers(model, cut)
    shapes, fill = probe_prefix(model, drawn.img_size, cut, kept, run.device)
    cache = FeatureCache(kept, cut, None, [], fill, [drawn.img_size // s[1] for s in shapes], n, views, mosaic)
    key, folder = cache_key(model, cut, dataset, imgsz, views, run.seed, dataset.hyp), cache_dir(dataset, imgsz)
    old = saved_key(folder)
    if old == key and reuse(cache, folder):
        cache.build_s = time.perf_counter() - t0
        log(f'--cache features: reused {folder} ({views} views, {size_text(cache.nbytes)})')
        return cache
    cache.where = choose_storage(n * views * sum(2 * int(np.prod(s)) for s in shapes), folder, n, views)
    building = build_folder(folder)
    cache.arrays = allocate(shapes, n * views, building, cache.where)
    fill_cache(model, cache, view_batches(drawn, views, run.seed, run.batch_size, run.workers), run.device,
               run.main)
    if cache.where == 'disk':
        save_disk(cache, building, key)
        publish(building, folder)
    elif old:
        retire(folder)  # a stale disk cache of this list and size: nothing would ever reuse it
    cache.build_s = time.perf_counter() - t0
    place = f'disk at {folder}' if cache.where == 'disk' else 'RAM'
    why = f' (rebuilt: key changed: {", ".join(changed_parts(old, key))})' if old and cache.where == 'disk' else ''
    log(f'--cache features: built {views} views x {n} images{" at half size (feature_mosaic)" if mosaic else ""} '
        f'of layers {kept} through layer {cut - 1}: '
        f'{size_text(cache.nbytes)} in {place}, {cache.build_s:.1f} s{why}')
    return cache


# ---------------------------------------------------------------- training from the cache
class CachedBatch:
    """One training batch of cached prefix outputs: the model input of ``train_one_epoch``."""

    def __init__(self, outputs, cache, image_shape):
        self.outputs, self.cache, self.shape = outputs, cache, image_shape

    def to(self, device, dtype=torch.float32):
        form = torch.channels_last if torch.device(device).type == 'cpu' else torch.contiguous_format
        return CachedBatch([o.to(device, non_blocking=True).to(dtype, memory_format=form) for o in self.outputs],
                           self.cache, self.shape)

    def forward(self, model):
        """``model``'s output from layer ``cut`` on, with the prefix's outputs taken from the cache."""
        y = [None] * self.cache.cut
        for j, o in zip(self.cache.kept, self.outputs):
            y[j] = o
        return model.run_layers(self.cache.cut, y[-1], y)


class ViewSampler:
    """Which view of which image, in which order, per epoch: a function of (seed, epoch) only. The trainer calls
    ``reseed`` and ``set_epoch`` before each epoch, as on the image loader's sampler."""

    def __init__(self, n_images, views, seed):
        self.n, self.views, self.seed, self.epoch = n_images, views, seed, 0
        self.offsets = np.random.default_rng((seed, VIEW_STREAM)).integers(0, views, n_images)

    def reseed(self, seed):
        pass  # the order depends on (the run's seed, epoch) only

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        return iter(self.rows(np.random.default_rng((self.seed, VIEW_STREAM, self.epoch)).permutation(self.n)))

    def rows(self, images):
        """The cache rows of ``images`` (indices): each image at its view of this epoch."""
        return ((self.offsets[images] + self.epoch) % self.views) * self.n + images

    def __len__(self):
        return self.n


def crop_share(hyp):
    """hyp feature_crop (default ``FEATURE_CROP``), checked: one line when it is not between 0 and 1."""
    crop = float(hyp.get('feature_crop', FEATURE_CROP))
    if not 0 <= crop <= 1:
        raise InputError(f'hyp feature_crop {crop}: must be between 0 and 1 (the share of the image side a training '
                         f'sample keeps; 0 or 1: no crop)')
    return crop


class FeatureLoader:
    """The training loader of a FeatureCache: yields (CachedBatch, targets (n, 6), paths, metas) like the image
    loader yields (images, targets, paths, metas); paths and metas are empty."""

    def __init__(self, cache, batch_size, seed, hyp, imgsz):
        self.cache, self.batch_size, self.imgsz = cache, batch_size, imgsz
        self.sampler = ViewSampler(cache.n_images, cache.views, seed)
        self.generator = torch.Generator()  # reseed_loader seeds it; unused
        self.flip_p, self.shift = float(hyp.get('feature_fliplr', 0.0)), float(hyp.get('feature_shift', 0.0))
        self.crop = crop_share(hyp)

    def __len__(self):
        return -(-self.cache.n_images // self.batch_size)

    def __iter__(self):
        rows = list(self.sampler)
        rng = np.random.default_rng((self.sampler.seed, VIEW_STREAM, self.sampler.epoch, 1))
        for b in range(0, len(rows), self.batch_size):
            yield self.batch(rows[b:b + self.batch_size], rng)

    def batch(self, rows, rng):
        if self.cache.mosaic:
            outputs, labels = self.mosaics(rows, rng)
        else:
            idx = np.asarray(rows)
            outputs = [torch.from_numpy(np.ascontiguousarray(a[idx])) for a in self.cache.arrays]
            labels = [self.cache.labels[r].copy() for r in rows]
        size = self.imgsz
        if 0 < self.crop < 1:
            coarse = max(self.cache.strides)
            cells = crop_cells(self.imgsz // coarse, self.crop)
            outputs, labels = crop_batch(outputs, labels, rng, cells, self.cache.strides)
            size = cells * coarse
        for b in range(len(rows)):
            augment_one(outputs, labels, b, rng, self.flip_p, self.shift, self.cache, size)
        targets = torch.cat([torch.from_numpy(np.concatenate((np.full((len(lb), 1), b, np.float32), lb), 1))
                             for b, lb in enumerate(labels)]) if labels else torch.zeros((0, 6))
        return CachedBatch(outputs, self.cache, (len(rows), 3, size, size)), targets, (), ()

    def mosaics(self, rows, rng):
        """(outputs, labels) of one sample per row: the row's half-size view and three others' (each image at its
        view of this epoch), in random quadrants, assembled 2 x 2 at every kept level."""
        others = self.sampler.rows(rng.integers(0, self.cache.n_images, (len(rows), 3)))
        quads = rng.permuted(np.concatenate((np.asarray(rows)[:, None], others), 1), axis=1)
        return [mosaic_maps(a, quads) for a in self.cache.arrays], [mosaic_labels(self.cache.labels, q) for q in quads]


def feature_loader(run, model, dataset, views, hyp, log=print):
    """Build (or reuse) the cache and return its training loader (utils/train/setup.py, --cache features)."""
    crop_share(hyp)  # a bad value is refused before the build, not after it
    cache = build_feature_cache(run, model, dataset, views, log)
    dataset.ims = None  # training reads no image any more: the images kept in RAM (--cache auto) are let go
    return FeatureLoader(cache, min(run.batch_size, len(dataset)), run.seed, hyp, dataset.img_size)

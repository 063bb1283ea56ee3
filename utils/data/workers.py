"""The train and val loaders' worker processes and the order of their draws, ``--image-weights`` included.

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

import cv2
import numpy as np
import torch
from torch.utils.data import Sampler


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

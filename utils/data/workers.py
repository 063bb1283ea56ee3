"""The train and val loaders' worker processes and the order of their draws.

``SeededDraws`` numbers each image drawn in the main process, so augmentation does not depend on --workers;
``reseed_loader`` restarts a loader's randomness at every epoch; ``seed_worker`` sets up each worker (signals,
threads); ``end_workers_at_exit`` ends a loader's kept workers before the interpreter's exit would wait for them.
"""
import atexit
import signal
import weakref

import cv2
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
        signal.signal(sig, signal.SIG_IGN)      # decides (utils/train/interrupt.py); workers end with it
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

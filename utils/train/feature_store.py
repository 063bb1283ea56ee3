"""Where a ``--cache features`` cache lives (utils/train/feature_cache.py builds and reads it): in RAM when it fits
in ``RAM_SHARE`` of the memory available, else in .npy files memory-mapped from one folder per training list and
image size under ``$YOLOV5_FREEZE_CACHE/features``, else refused in one line with the sizes. A disk cache is built
in a private folder and moved in place when complete (``publish``), its key written last; a stale one is renamed
aside before it is removed (``retire``), so runs sharing the folder never read half-written or half-deleted files.

    where = choose_storage(nbytes, folder, n_images, views)   # 'RAM' or 'disk', or InputError
    arrays = allocate(shapes, rows, build_folder(folder), where)
    save_disk(cache, building, key); publish(building, folder)
    if saved_key(folder) == key: reuse(cache, folder)
"""
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from utils.data.image_cache import available_memory
from utils.errors import InputError

RAM_SHARE = 0.5  # the cache stays in RAM when it needs at most this share of the memory available
DISK_SHARE = 0.9  # ... else on disk when it needs at most this share of the free disk space


def cache_root():
    """Where disk caches go: ``$YOLOV5_FREEZE_CACHE/features``, else ``~/.cache/yolov5-freeze/features``."""
    env = os.environ.get('YOLOV5_FREEZE_CACHE')
    return Path(env) / 'features' if env else Path.home() / '.cache' / 'yolov5-freeze' / 'features'


def cache_dir(dataset, imgsz):
    """The disk cache folder of one training list at one image size."""
    digest = hashlib.sha1('\n'.join(map(str, dataset.im_files)).encode()).hexdigest()[:16]
    return cache_root() / f'{digest}-{imgsz}'


def size_text(nbytes):
    return f'{nbytes / 1e9:.1f} GB' if nbytes >= 1e8 else f'{nbytes / 1e6:.1f} MB'


def choose_storage(nbytes, folder, n_images, views, ram=None, disk=None):
    """'RAM' or 'disk' for a cache of ``nbytes``; InputError (one line, with the sizes) when neither fits.
    ``ram``/``disk``: bytes free (default: measured now)."""
    ram = available_memory() if ram is None else ram
    if ram is not None and nbytes <= ram * RAM_SHARE:
        return 'RAM'
    if disk is None:
        probe = next((p for p in (folder, *folder.parents) if p.exists()), Path('.'))
        disk = shutil.disk_usage(probe).free
    if nbytes <= disk * DISK_SHARE:
        return 'disk'
    ram_text = 'unknown' if ram is None else size_text(ram)
    raise InputError(f'--cache features: {n_images} images x {views} views need {size_text(nbytes)} (fp16); '
                     f'{ram_text} of RAM and {size_text(disk)} of disk at {folder} are free; lower --cache-views '
                     f'or --img-size')


def allocate(shapes, rows, folder, where):
    """Empty (rows, C, H, W) fp16 arrays: in memory, or new .npy files memory-mapped in ``folder`` (a private
    build folder, ``build_folder``)."""
    if where == 'RAM':
        return [np.empty((rows, *s), np.float16) for s in shapes]
    folder.mkdir(parents=True, exist_ok=True)
    return [np.lib.format.open_memmap(folder / f'layer{j}.npy', 'w+', np.float16, (rows, *s))
            for j, s in enumerate(shapes)]


def build_folder(folder):
    """This process's private folder beside ``folder`` to build a disk cache in: another run reading or building
    the cache of the same list and size never sees a half-written file (``publish`` moves it in place)."""
    return folder.parent / f'.{folder.name}.build-{os.getpid()}'


def publish(built, folder):
    """Move the complete cache ``built`` to ``folder``, in place of whatever is there; a run that has the old files
    memory-mapped keeps reading them (POSIX keeps them until unmapped). Of two runs that finish together, the
    later one's folder stays; both caches are complete."""
    for _ in range(3):
        retire(folder)
        try:
            os.rename(built, folder)
            return
        except OSError:  # another run published between the two steps: retire that one too
            continue
    raise OSError(f'--cache features: could not move {built} to {folder}')


def retire(folder):
    """Remove the cache ``folder`` (stale or replaced): renamed aside first, so no reader sees it half-deleted."""
    aside = folder.parent / f'.{folder.name}.old-{os.getpid()}-{time.monotonic_ns()}'
    try:
        os.rename(folder, aside)
    except FileNotFoundError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def save_labels(folder, labels):
    rows = np.concatenate([np.full(len(lb), r) for r, lb in enumerate(labels)]) if labels else np.zeros(0)
    np.save(folder / 'labels.npy', np.concatenate([rows[:, None], np.concatenate(labels)], 1).astype(np.float32))


def load_labels(folder, n_rows):
    table = np.load(folder / 'labels.npy')
    bounds = np.searchsorted(table[:, 0], np.arange(n_rows + 1))
    return [table[a:b, 1:] for a, b in zip(bounds[:-1], bounds[1:])]


def saved_key(folder):
    try:
        return json.loads((folder / 'key.json').read_text())
    except (OSError, ValueError):
        return None


def changed_parts(old, new):
    return [k for k in new if old.get(k) != new[k]]


def reuse(cache, folder):
    """Fill ``cache`` from the complete disk cache in ``folder`` (its arrays memory-mapped); False when it went away
    meanwhile (another run replaced it between reading its key and opening its files)."""
    try:
        cache.arrays = [np.load(folder / f'layer{j}.npy', mmap_mode='r') for j in range(len(cache.kept))]
        cache.labels = load_labels(folder, cache.n_images * cache.views)
    except FileNotFoundError:
        return False
    cache.where = 'disk'
    return True


def save_disk(cache, folder, key):
    """Finish a disk cache: arrays flushed, labels saved, and the key written last (what marks it complete)."""
    for a in cache.arrays:
        a.flush()
    save_labels(folder, cache.labels)
    (folder / 'key.json').write_text(json.dumps(key))

"""Image caches, the two kinds of ``--cache``: ``auto``/``ram`` keep resized images in memory, ``disk`` keeps decoded
ones as .npy files.

--cache auto (train.py's default): keep a split's resized images in RAM when they fit in a small share of the
memory that is free, so that later epochs skip JPEG decoding and resizing.

The cached image is exactly what reading it again would give (the same decode and resize, done once), so a run
with or without the cache trains and validates on the same pixels. Large sets (VOC at 640: about 15 GB) are read
from disk each epoch as before; ``--cache ram`` caches whatever the size, ``--cache off`` never.

    decision = auto_cache(records, img_size)      # CacheDecision(use=True, nbytes=..., budget=...)
    print(decision.line('train: '))

--cache disk: decoded images saved as .npy, so later epochs and runs skip JPEG/PNG decoding.

The .npy goes beside its image (``bus.jpg`` -> ``bus.jpg.npy``, so ``bus.png`` beside it gets its own) when the
image folder is writable, otherwise into a cache folder (``$YOLOV5_FREEZE_CACHE`` or
``~/.cache/yolov5-freeze/images``), under a sub-folder named by a hash of the image folder. A folder without write
permission bits (e.g. a read-only data share) is never written, even by root. A cached file older than its image
is decoded again.
"""
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from utils.data.sizes import long_side_to

AUTO_SHARE = 0.1  # --cache auto uses at most this share of the memory available when the loader is built


def available_memory():
    """Bytes of memory available to new allocations (Linux MemAvailable; elsewhere free pages), or None."""
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (ValueError, OSError, AttributeError):
        return None


def resized_bytes(shapes_hw, img_size):
    """Bytes of the images of original sizes ``shapes_hw`` [(h, w), ...] resized so their long side is
    ``img_size`` (3 uint8 channels), as the dataset's loader resizes them."""
    return sum(3 * h * w for h, w in (long_side_to(h0, w0, img_size) for h0, w0 in shapes_hw))


@dataclass(frozen=True)
class CacheDecision:
    use: bool
    nbytes: int
    budget: object  # bytes, or None when the free memory could not be read

    def line(self, prefix=''):
        size = f'{self.nbytes / 2 ** 20:.0f} MB'
        if self.use:
            return (f'{prefix}--cache auto: images kept in RAM ({size}, within '
                    f'{AUTO_SHARE:.0%} of free memory; --cache off reads them from disk each epoch)')
        why = 'free memory unknown' if self.budget is None else f'over {AUTO_SHARE:.0%} of free memory'
        return f'{prefix}--cache auto: images read from disk each epoch ({size} {why}; --cache ram keeps them)'


def auto_cache(shapes_hw, img_size, available=None):
    """Whether --cache auto keeps these images in RAM: their resized size within AUTO_SHARE of ``available``
    bytes (default: the memory available now)."""
    nbytes = resized_bytes(shapes_hw, img_size)
    available = available_memory() if available is None else available
    budget = None if available is None else int(available * AUTO_SHARE)
    return CacheDecision(budget is not None and nbytes <= budget, nbytes, budget)


def cache_root():
    return Path(os.environ.get('YOLOV5_FREEZE_CACHE') or Path.home() / '.cache' / 'yolov5-freeze' / 'images')


def folder_writable(folder):
    """Writable by this process *and* carrying a user-write bit (root ignores permission bits)."""
    try:
        mode = Path(folder).stat().st_mode
    except OSError:
        return False
    return bool(mode & stat.S_IWUSR) and os.access(folder, os.W_OK)


def npy_path(im_file):
    """Where ``im_file``'s decoded pixels are (or will be) cached."""
    im_file = Path(im_file).resolve()
    if folder_writable(im_file.parent):
        return im_file.with_name(f'{im_file.name}.npy')
    digest = hashlib.sha1(str(im_file.parent).encode()).hexdigest()[:16]
    return cache_root() / digest / f'{im_file.name}.npy'


def read_cached(im_file):
    """The image (BGR uint8, as cv2.imread) from its .npy, writing the .npy first when missing or stale; None
    when the image cannot be read."""
    path = npy_path(im_file)
    try:
        if path.is_file() and path.stat().st_mtime >= Path(im_file).stat().st_mtime:
            return np.load(path)
    except (OSError, ValueError):
        pass  # unreadable or truncated cache file: decode again
    im = cv2.imread(str(im_file))
    if im is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'{path.name}.{os.getpid()}.tmp')
    with open(tmp, 'wb') as f:
        np.save(f, im)
    tmp.replace(path)  # atomic: parallel loader workers never read a half-written file
    return im

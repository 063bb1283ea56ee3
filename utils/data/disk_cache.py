"""--cache disk: decoded images saved as .npy, so later epochs and runs skip JPEG/PNG decoding.

The .npy goes beside its image (``bus.jpg`` -> ``bus.jpg.npy``, so ``bus.png`` beside it gets its own) when the image folder is writable, otherwise into a
cache folder (``$YOLOV5_FREEZE_CACHE`` or ``~/.cache/yolov5-freeze/images``), under a sub-folder named by a hash
of the image folder. A folder without write permission bits (e.g. a read-only data share) is never written,
even by root. A cached file older than its image is decoded again.
"""
import hashlib
import os
import stat
from pathlib import Path

import cv2
import numpy as np


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

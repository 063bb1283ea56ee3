"""--cache auto (train.py's default): keep a split's resized images in RAM when they fit in a small share of the
memory that is free, so that later epochs skip JPEG decoding and resizing.

The cached image is exactly what reading it again would give (the same decode and resize, done once), so a run
with or without the cache trains and validates on the same pixels. Large sets (VOC at 640: about 15 GB) are read
from disk each epoch as before; ``--cache ram`` caches whatever the size, ``--cache off`` never.

    decision = auto_cache(records, img_size)      # CacheDecision(use=True, nbytes=..., budget=...)
    print(decision.line('train: '))
"""
import os
from dataclasses import dataclass

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

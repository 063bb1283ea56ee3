"""Network input sizes: the --imgsz check shared by train, val, detect and export, the size a loaded image is
resized to, and --multi-scale's size of each training batch.

--multi-scale: each training batch resized to a random size within +-50% of the image size, in stride steps.
The size of batch ``i`` in ``epoch`` depends only on (seed, epoch, i), so a resumed run replays the same sizes.
Labels are normalised (cx, cy, w, h), so resizing the batch leaves them unchanged.
"""
import math

import numpy as np
import torch.nn.functional as F

from utils.errors import InputError


def check_imgsz(imgsz, stride):
    """--imgsz as (h, w), each rounded up to a multiple of the model stride (with a note when changed)."""
    sizes = [imgsz] if isinstance(imgsz, int) else list(imgsz)
    if len(sizes) not in (1, 2) or any(not isinstance(s, int) or s <= 0 for s in sizes):
        raise InputError(f'--imgsz {imgsz}: expected one or two positive integers (size, or height width)')
    sizes = sizes * 2 if len(sizes) == 1 else sizes
    fixed = [-(-s // stride) * stride for s in sizes]
    if fixed != sizes:
        print(f'note: --imgsz {sizes} is not a multiple of the model stride {stride}, using {fixed}')
    return tuple(fixed)


def long_side_to(h, w, size):
    """(h, w) of an h x w image resized so its long side is ``size`` (each side at least 1), as the loader does."""
    r = size / max(h, w)
    return max(1, round(h * r)), max(1, round(w * r))


def multi_scale_sizes(imgsz, stride):
    """Every size a batch may take: stride multiples from imgsz/2 up to 1.5*imgsz (at least one stride)."""
    low = max(stride, math.ceil(imgsz * 0.5 / stride) * stride)
    high = max(low, int(imgsz * 1.5) // stride * stride)
    return list(range(low, high + 1, stride))


class MultiScale:
    """Picks and applies the size of each batch."""

    def __init__(self, imgsz, stride, seed=0):
        self.sizes, self.stride, self.seed = multi_scale_sizes(imgsz, stride), stride, seed

    def size(self, epoch, batch_i):
        """The long side (pixels) of batch ``batch_i`` of ``epoch``."""
        rng = np.random.default_rng((self.seed, epoch, batch_i))
        return int(self.sizes[rng.integers(len(self.sizes))])

    def __call__(self, imgs, epoch, batch_i):
        """``imgs`` (B, 3, H, W) float, resized so the long side is this batch's size and both sides stay stride
        multiples (a rectangular batch keeps its aspect ratio)."""
        size = self.size(epoch, batch_i)
        scale = size / max(imgs.shape[2:])
        if scale == 1:
            return imgs
        shape = [max(self.stride, math.ceil(x * scale / self.stride) * self.stride) for x in imgs.shape[2:]]
        return F.interpolate(imgs, size=shape, mode='bilinear', align_corners=False)

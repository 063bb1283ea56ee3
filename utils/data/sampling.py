"""--image-weights: draw training images (with replacement) in proportion to how rare their classes are.

A class's weight is 1 / (its box count); an image's weight is the sum of its boxes' class weights (an image
without boxes gets the smallest non-zero image weight, so it can still be drawn). Upstream YOLOv5 also
multiplies the class weights by (1 - mAP of the class)^2 from the latest validation; we weight by rarity alone,
so the draw of an epoch depends only on (seed, epoch) and a resumed run replays it exactly.
"""
import numpy as np
import torch
from torch.utils.data import Sampler


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

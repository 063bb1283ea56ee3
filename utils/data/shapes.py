"""Built-in synthetic detection set: coloured shapes on textured backgrounds, so training works offline.

Deterministic (seeded) and written in YOLO layout::

    <root>/images/{train,val}/*.jpg   <root>/labels/{train,val}/*.txt   <root>/.complete

``ensure_shapes(root)`` generates it when the ``.complete`` marker is missing or disagrees with the files.
"""
import json
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

NAMES = ['circle', 'square', 'triangle', 'star']
COLOURS = [(40, 40, 220), (220, 90, 30), (40, 190, 40), (20, 210, 230)]  # BGR: red, blue, green, yellow
SPLITS = {'train': 400, 'val': 64}
IMG_SIZE = 192
MIN_SIDE, MAX_SIDE = 36, 120  # shapes of 19-62% of a 192 px side: 24-80 px in the 128 px demo
MAX_COVER = 0.25  # boxes overlap by at most this share of the smaller one: no label hidden under a later shape
VERSION = 2  # 1: sides from 24 px, overlaps limited by IoU (a small shape could vanish under a large one)


def ensure_shapes(root, seed=0, splits=None, img_size=IMG_SIZE):
    """Generate the set into ``root`` unless a complete copy is there already; returns ``root`` as a Path."""
    root = Path(root)
    splits = dict(splits or SPLITS)
    marker = {'version': VERSION, 'seed': seed, 'splits': splits, 'img_size': img_size}
    if _is_complete(root, marker):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix='.shapes-', dir=root.parent))  # build aside, then swap in atomically
    try:
        for i, (split, n) in enumerate(splits.items()):
            _write_split(tmp, split, n, np.random.default_rng([seed, i]), img_size)
        (tmp / '.complete').write_text(json.dumps(marker))
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _is_complete(root, marker):
    try:
        if json.loads((root / '.complete').read_text()) != marker:
            return False
    except (OSError, ValueError):
        return False
    for split, n in marker['splits'].items():
        if len(list((root / 'images' / split).glob('*.jpg'))) != n or \
                len(list((root / 'labels' / split).glob('*.txt'))) != n:
            return False
    return True


def _write_split(root, split, n, rng, img_size):
    (root / 'images' / split).mkdir(parents=True)
    (root / 'labels' / split).mkdir(parents=True)
    for k in range(n):
        im, rows = make_image(rng, img_size)
        name = f'{split}_{k:04d}'
        cv2.imwrite(str(root / 'images' / split / f'{name}.jpg'), im, [cv2.IMWRITE_JPEG_QUALITY, 92])
        (root / 'labels' / split / f'{name}.txt').write_text(
            ''.join(f'{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n' for c, x, y, w, h in rows))


def make_image(rng, size=IMG_SIZE, max_objects=5, min_side=MIN_SIDE, max_side=MAX_SIDE):
    """One image (BGR uint8, size x size) and its label rows [(cls, cx, cy, w, h) normalised]."""
    im = textured_background(rng, size)
    placed, rows = [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):  # find a spot that overlaps earlier shapes only a little
            side = int(rng.integers(min_side, max_side + 1))
            x1, y1 = (int(v) for v in rng.integers(0, size - side, 2))
            box = (x1, y1, x1 + side, y1 + side)
            if all(_cover(box, b) < MAX_COVER for b in placed):
                break
        else:
            continue
        cls = int(rng.integers(len(NAMES)))
        colour = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in COLOURS[cls])
        x1, y1, x2, y2 = draw_shape(im, cls, box, colour)
        placed.append(box)
        rows.append((cls, (x1 + x2) / 2 / size, (y1 + y2) / 2 / size, (x2 - x1) / size, (y2 - y1) / size))
    return im, rows


def textured_background(rng, size):
    """Greyish tinted base, gradient, noise and a few thin lines: texture that never matches a shape's colour."""
    base = rng.integers(60, 190) + rng.integers(-25, 26, 3)
    ramp = np.linspace(-30, 30, size)[None, :, None] * rng.uniform(-1, 1, 3)
    im = base + ramp + rng.normal(0, 12, (size, size, 3))
    im = np.clip(im, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(2, 7))):
        p1, p2 = (tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2))
        grey = int(rng.integers(40, 220))
        cv2.line(im, p1, p2, (grey,) * 3, int(rng.integers(1, 4)))
    return im


def draw_shape(im, cls, box, colour):
    """Draw class ``cls`` filling ``box`` (x1, y1, x2, y2); returns the tight box of what was drawn."""
    x1, y1, x2, y2 = box
    cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2
    if NAMES[cls] == 'circle':
        cv2.circle(im, (int(round(cx)), int(round(cy))), int(r), colour, -1, cv2.LINE_AA)
        pts = np.array([[cx - r, cy - r], [cx + r, cy + r]])
    else:
        pts = _polygon(NAMES[cls], cx, cy, r)
        cv2.fillPoly(im, [np.round(pts).astype(np.int32)], colour, cv2.LINE_AA)
    return pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()


def _polygon(name, cx, cy, r):
    if name == 'square':
        k = 0.85
        return np.array([[cx - k * r, cy - k * r], [cx + k * r, cy - k * r], [cx + k * r, cy + k * r],
                         [cx - k * r, cy + k * r]])
    if name == 'triangle':
        return np.array([[cx, cy - r], [cx + r, cy + r * 0.8], [cx - r, cy + r * 0.8]])
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5  # star: 5 outer + 5 inner points
    radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
    return np.stack((cx + radii * np.cos(angles), cy + radii * np.sin(angles)), 1)


def _cover(a, b):
    """Intersection of boxes ``a`` and ``b`` over the smaller one's area (IoU would let a large shape hide a small
    one whole: 24x24 inside 120x120 is an IoU of 0.04)."""
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    return iw * ih / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))

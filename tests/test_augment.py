"""Augmentations: pixel/label consistency property (paint each box a unique colour, transform, compare)."""
import numpy as np
import pytest

from utils.data.augment import (Albumentations, augment_hsv, box_candidates, flip_lr, flip_ud, letterbox, mixup,
                           mosaic4, perspective_matrix, warp_image_and_boxes)
from utils.boxes import xywhn2xyxy, xyxy2xywhn


def colour(k):
    """Unique colour with one channel at 255: any blend with black, grey fill or another colour has none."""
    c = [20 + 13 * (k // 3), 200 - 11 * (k // 3), 0]
    c.insert(k % 3, 255)
    return np.array(c[:3], np.uint8)


def painted(h, w, rng, first=0, grid=3):
    """Black image with one solid box per grid cell (gaps between), labels (n, 5) [colour idx, x1, y1, x2, y2]."""
    im = np.zeros((h, w, 3), np.uint8)
    labels, k = [], first
    for gy in range(grid):
        for gx in range(grid):
            cx1, cy1, cw, ch = gx * w // grid, gy * h // grid, w // grid, h // grid
            bw, bh = (int(rng.integers(6, max(7, c - 6))) for c in (cw, ch))
            x1, y1 = cx1 + 3 + int(rng.integers(0, cw - bw - 5)), cy1 + 3 + int(rng.integers(0, ch - bh - 5))
            im[y1:y1 + bh, x1:x1 + bw] = colour(k)
            labels.append([k, x1, y1, x1 + bw, y1 + bh])
            k += 1
    return im, np.array(labels, np.float64)


def colour_pixels(im, k):
    ys, xs = np.nonzero((im == colour(k)).all(2))
    return xs, ys


def assert_consistent(im, labels, colours, min_area=None):
    """Every label encloses its colour's pixels; a colour present with area >= min_area[k] has a label."""
    for k in colours:
        xs, ys = colour_pixels(im, k)
        rows = labels[labels[:, 0] == k]
        if len(rows):  # pixel (x, y) covers [x, x+1]: its centre must lie in one of the colour's boxes (1 px tol)
            cx, cy = xs[:, None] + 0.5, ys[:, None] + 0.5
            inside = ((cx >= rows[:, 1] - 1) & (cx <= rows[:, 3] + 1) & (cy >= rows[:, 2] - 1) &
                      (cy <= rows[:, 4] + 1)).any(1)
            assert inside.all(), f'colour {k}: {int((~inside).sum())} px outside its label(s) {rows[:, 1:]}'
        elif min_area is not None and len(xs):
            big = len(xs) >= min_area[k] and np.ptp(xs) >= 4 and np.ptp(ys) >= 4
            assert not big, f'colour {k}: {len(xs)} px visible but its label was dropped'


@pytest.mark.parametrize('seed', range(6))
@pytest.mark.parametrize('auto,scale_fill', [(False, False), (True, False), (False, True)])
def test_letterbox_keeps_colours_inside_labels(seed, auto, scale_fill):
    rng = np.random.default_rng(seed)
    im, labels = painted(int(rng.integers(90, 300)), int(rng.integers(90, 300)), rng)
    out, (rw, rh), (dw, dh) = letterbox(im, 256, auto=auto, scale_fill=scale_fill, stride=32)
    moved = labels.copy()
    moved[:, [1, 3]] = labels[:, [1, 3]] * rw + dw
    moved[:, [2, 4]] = labels[:, [2, 4]] * rh + dh
    assert out.shape[0] % 32 == 0 and out.shape[1] % 32 == 0
    assert_consistent(out, moved, range(len(labels)), min_area=np.zeros(len(labels)))


@pytest.mark.parametrize('seed', range(8))
def test_perspective_keeps_colours_inside_labels_and_drops_only_vanished_boxes(seed):
    rng = np.random.default_rng(seed)
    im, labels = painted(240, 300, rng)
    M, s = perspective_matrix(rng, im.shape[:2], degrees=30, translate=0.3, scale=0.5, shear=10,
                              perspective=0.0008)
    out, kept = warp_image_and_boxes(im, labels, M, s, im.shape[:2])
    areas = (labels[:, 3] - labels[:, 1]) * (labels[:, 4] - labels[:, 2])
    assert_consistent(out, kept, range(len(labels)), min_area=0.12 * s * s * areas)
    assert set(kept[:, 0]) <= set(labels[:, 0])


@pytest.mark.parametrize('seed', range(8))
def test_mosaic_then_crop_keeps_colours_inside_labels(seed):
    rng, size = np.random.default_rng(100 + seed), 160
    tiles = [painted(int(rng.integers(80, size + 1)), size, rng, first=9 * i) for i in range(4)]
    canvas, labels = mosaic4([t[0] for t in tiles], [t[1] for t in tiles], size, rng)
    assert canvas.shape == (2 * size, 2 * size, 3)
    assert_consistent(canvas, labels, range(36))  # tiles are cut only at the canvas border
    areas = (labels[:, 3] - labels[:, 1]) * (labels[:, 4] - labels[:, 2])
    border = (-size // 2, -size // 2)
    M, s = perspective_matrix(rng, canvas.shape[:2], border, degrees=10, translate=0.1, scale=0.5, shear=2)
    out, kept = warp_image_and_boxes(canvas, labels, M, s, (size, size))
    assert out.shape == (size, size, 3)
    assert_consistent(out, kept, range(36), min_area=0.12 * s * s * areas)


def test_flips_move_labels_with_pixels():
    rng = np.random.default_rng(3)
    im, labels = painted(120, 200, rng)
    norm = np.concatenate((labels[:, :1], xyxy2xywhn(labels[:, 1:], w=200, h=120)), 1)
    for flip in (flip_lr, flip_ud):
        out, lb = flip(im, norm)
        px = np.concatenate((lb[:, :1], xywhn2xyxy(lb[:, 1:], w=200, h=120)), 1)
        assert_consistent(out, px, range(len(labels)), min_area=np.zeros(len(labels)))
    assert not np.array_equal(flip_lr(im, norm)[0], im)


def test_box_candidates_rules():
    before = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 300, 1]], float).T
    after = np.array([[0, 0, 10, 10], [0, 0, 1.5, 10], [0, 0, 3, 3], [0, 0, 300, 2.5]], float).T
    assert box_candidates(before, after).tolist() == [True, False, False, False]  # too thin, too small, ratio


def test_hsv_changes_colours_not_shape_and_is_seeded():
    im = np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    a = augment_hsv(im.copy(), np.random.default_rng(1), 0.5, 0.5, 0.5)
    b = augment_hsv(im.copy(), np.random.default_rng(1), 0.5, 0.5, 0.5)
    assert a.shape == im.shape and np.array_equal(a, b) and not np.array_equal(a, im)


def test_mixup_keeps_both_label_sets():
    rng = np.random.default_rng(0)
    a, b = np.full((8, 8, 3), 200, np.uint8), np.zeros((8, 8, 3), np.uint8)
    im, lb = mixup(a, np.ones((2, 5)), b, np.zeros((3, 5)), rng)
    assert len(lb) == 5 and 50 < im.mean() < 150


def test_albumentations_keeps_labels_and_is_seeded():
    rng = np.random.default_rng(0)
    im = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    labels = np.array([[1, 0.5, 0.5, 0.25, 0.5], [0, 0.2, 0.2, 0.1, 0.1]], np.float32)
    aug = Albumentations(p=1.0, seed=3)
    out, lb = aug(im.copy(), labels)
    assert out.shape == im.shape and not np.array_equal(out, im)
    assert np.allclose(lb, labels, atol=1e-5)
    out2, _ = Albumentations(p=1.0, seed=3)(im.copy(), labels)
    assert np.array_equal(out, out2)
    assert Albumentations(p=0.0)(im.copy(), np.zeros((0, 5)))[1].shape == (0, 5)


def test_full_training_pipeline_keeps_colours_inside_targets(tmp_path):
    """The same property through DetectionDataset: mosaic + perspective + flips, colour jitter off."""
    import cv2

    from utils.data.datasets import check_dataset, create_dataloader
    (tmp_path / 'images').mkdir()
    (tmp_path / 'labels').mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        h, w = int(rng.integers(100, 160)), 160
        im, lb = painted(h, w, rng, first=9 * i)
        cv2.imwrite(str(tmp_path / 'images' / f'{i}.png'), im)
        norm = xyxy2xywhn(lb[:, 1:], w=w, h=h)
        (tmp_path / 'labels' / f'{i}.txt').write_text(''.join(f'{int(c)} {x} {y} {bw} {bh}\n'
                                                              for c, (x, y, bw, bh) in zip(lb[:, 0], norm)))
    d = check_dataset({'path': str(tmp_path), 'train': 'images', 'val': 'images', 'nc': 36})
    hyp = {**__import__('utils.data.datasets', fromlist=['load_hyp']).load_hyp(), 'hsv_h': 0, 'hsv_s': 0, 'hsv_v': 0,
           'degrees': 15, 'shear': 5, 'perspective': 0.0005, 'translate': 0.2, 'flipud': 0.5, 'fliplr': 0.5}
    loader, ds = create_dataloader(d['train'], 160, 4, 32, hyp=hyp, augment=True, data=d, verbose=False, seed=1)
    ds.albumentations = None  # its blur/gray/CLAHE change colours; they are tested separately above
    seen = 0
    for _ in range(3):
        imgs, targets, _, _ = next(iter(loader))
        for b in range(len(imgs)):
            im = imgs[b].numpy().transpose(1, 2, 0)[..., ::-1]  # back to BGR, as painted
            t = targets[targets[:, 0] == b, 1:].numpy().astype(np.float64)
            px = np.concatenate((t[:, :1], xywhn2xyxy(t[:, 1:], w=160, h=160)), 1)
            assert_consistent(im, px, range(36))
            seen += len(t)
    assert seen > 20

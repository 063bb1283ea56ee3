"""utils/eval/plots.py: curve and confusion-matrix figures, labelled image grids."""
import numpy as np
import torch

from utils.eval.metrics import ConfusionMatrix, ap_per_class
from utils.eval.plots import class_color, plot_ap_curves, plot_confusion_matrix, plot_images


def test_plot_images_draws_labels_and_predictions(tmp_path):
    imgs = torch.zeros(3, 3, 64, 96, dtype=torch.uint8)  # black images, 2x2 grid
    labels = torch.tensor([[0, 1, 0.5, 0.5, 0.5, 0.5], [2, 0, 0.25, 0.25, 0.2, 0.2]])
    grid = plot_images(imgs, labels, paths=['a.jpg', 'b.jpg', 'c.jpg'], fname=tmp_path / 'batch.jpg',
                       names=['cat', 'dog'])
    assert grid.shape == (128, 192, 3) and (tmp_path / 'batch.jpg').is_file()
    tile0, tile1 = grid[:64, :96], grid[:64, 96:]
    assert (tile0 == class_color(1)).all(-1).any()  # box of class 1 drawn on image 0
    assert not (tile1 == class_color(1)).all(-1).any() and not (tile1 == class_color(0)).all(-1).any()
    assert (grid[64:, 96:] == 255).all()  # the unused fourth tile stays white
    # predictions: confidence column, low-confidence boxes skipped
    preds = np.array([[0, 0, 48, 32, 40, 30, 0.9], [1, 1, 48, 32, 40, 30, 0.1]])
    grid = plot_images(imgs[:2].float() / 255, preds, fname=tmp_path / 'pred.jpg', max_size=64)
    assert grid.shape[1] <= 64 * 2 and (tmp_path / 'pred.jpg').is_file()
    half = grid.shape[1] // 2
    assert (grid[:, :half] == class_color(0)).all(-1).any() and not (grid[:, half:] == class_color(1)).all(-1).any()
    assert plot_images(imgs, torch.zeros(0, 6), fname=tmp_path / 'empty.jpg').shape == (128, 192, 3)


def test_curve_and_confusion_figures(tmp_path):
    rng = np.random.default_rng(0)
    tp = rng.random((50, 10)) < 0.5
    res = ap_per_class(tp, rng.random(50), rng.integers(0, 3, 50), rng.integers(0, 3, 30))
    paths = plot_ap_curves(res, ['a', 'b', 'c'], tmp_path)
    assert [p.name for p in paths] == ['PR_curve.png', 'F1_curve.png', 'P_curve.png', 'R_curve.png']
    assert all(p.stat().st_size > 10_000 for p in paths)
    cm = ConfusionMatrix(nc=3)
    cm.process_batch(np.array([[0, 0, 10, 10, 0.9, 1]]), np.array([[1, 0, 0, 10, 10], [2, 20, 20, 30, 30]]))
    out = plot_confusion_matrix(cm.matrix, ['a', 'b', 'c'], tmp_path / 'confusion_matrix.png')
    assert out.stat().st_size > 10_000
    assert cm.matrix.sum() == 2  # plotting normalises a copy, not the counts

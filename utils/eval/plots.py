"""Figures: PR / F1 / P / R curves, the confusion matrix, and labelled image grids.

Matplotlib is used through ``Figure`` objects only (no pyplot state, no backend switching at import).
"""
import math
import os
from pathlib import Path

import cv2
import numpy as np

PALETTE = [(255, 56, 56), (255, 157, 151), (255, 112, 31), (255, 178, 29), (207, 210, 49), (72, 249, 10),
           (146, 204, 23), (61, 219, 134), (26, 147, 52), (0, 212, 187), (44, 153, 168), (0, 194, 255),
           (52, 69, 147), (100, 115, 255), (0, 24, 236), (132, 56, 255), (82, 0, 133), (203, 56, 255),
           (255, 149, 200), (255, 55, 199)]  # RGB, one per class modulo 20


def class_color(c):
    return PALETTE[int(c) % len(PALETTE)]


def _figure(size=(9, 6)):
    from matplotlib.figure import Figure  # lazy: matplotlib is only needed when plotting
    fig = Figure(figsize=size, tight_layout=True)
    return fig, fig.subplots()


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=200)
    return path


def plot_pr_curve(px, pr, ap50, names, path):
    """Precision vs recall at IoU 0.5 per class (legend when < 21 classes) and their mean."""
    fig, ax = _figure()
    for curve, ap, name in zip(pr, ap50, names):
        ax.plot(px, curve, linewidth=1, label=f'{name} {ap:.3f}' if len(names) < 21 else None, color='grey'
                if len(names) >= 21 else None)
    if len(pr):
        ax.plot(px, pr.mean(0), linewidth=3, color='blue', label=f'all classes {np.mean(ap50):.3f} mAP@0.5')
    _decorate(ax, 'Recall', 'Precision', 'Precision-Recall Curve')
    return _save(fig, path)


def plot_metric_curve(px, curves, names, path, ylabel='Metric'):
    """A metric (F1, precision, recall) against confidence per class, with the smoothed mean's best point."""
    from utils.eval.metrics import smooth
    fig, ax = _figure()
    for curve, name in zip(curves, names):
        ax.plot(px, curve, linewidth=1, label=name if len(names) < 21 else None, color='grey'
                if len(names) >= 21 else None)
    if len(curves):
        y = smooth(curves.mean(0), 0.05)
        ax.plot(px, y, linewidth=3, color='blue', label=f'all classes {y.max():.2f} at {px[y.argmax()]:.3f}')
    _decorate(ax, 'Confidence', ylabel, f'{ylabel}-Confidence Curve')
    return _save(fig, path)


def _decorate(ax, xlabel, ylabel, title):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(bbox_to_anchor=(1.04, 1), loc='upper left')


def plot_ap_curves(result, names, save_dir):
    """The four curve figures of an ``APResult``: PR_curve.png, F1_curve.png, P_curve.png, R_curve.png."""
    save_dir = Path(save_dir)
    class_names = [names[c] if c < len(names) else str(c) for c in result.classes]
    paths = [plot_pr_curve(result.px, result.pr_curve, result.ap50, class_names, save_dir / 'PR_curve.png')]
    for curve, label, file in ((result.f1_curve, 'F1', 'F1_curve.png'), (result.p_curve, 'Precision', 'P_curve.png'),
                               (result.r_curve, 'Recall', 'R_curve.png')):
        paths.append(plot_metric_curve(result.px, curve, class_names, save_dir / file, label))
    return paths


def plot_confusion_matrix(matrix, names, path, normalize=True):
    """Heat map of ``ConfusionMatrix.matrix`` (rows predicted, columns true), columns normalised to sum 1."""
    matrix = np.asarray(matrix, float)
    if normalize:
        matrix = matrix / np.maximum(matrix.sum(0, keepdims=True), 1e-9)
    matrix[matrix < 0.005] = np.nan  # leave near-empty cells blank
    nc = len(matrix) - 1
    labels = list(names)[:nc] + ['background'] if nc < 30 else None
    fig, ax = _figure((12, 9))
    im = ax.imshow(matrix, cmap='Blues', vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(im, ax=ax)
    if labels:
        ax.set_xticks(range(nc + 1), labels, rotation=90, fontsize=8)
        ax.set_yticks(range(nc + 1), labels, fontsize=8)
        if nc < 30:
            for (i, j), v in np.ndenumerate(matrix):
                if np.isfinite(v):
                    ax.text(j, i, f'{v:.2f}' if normalize else f'{int(v)}', ha='center', va='center', fontsize=6)
    ax.set_xlabel('True')
    ax.set_ylabel('Predicted')
    ax.set_title('Confusion Matrix')
    return _save(fig, path)


def _to_numpy(x):
    return x.detach().cpu().float().numpy() if hasattr(x, 'detach') else np.asarray(x)


def plot_images(imgs, targets, paths=None, fname='images.jpg', names=None, max_size=1920, max_subplots=16,
                conf_thres=0.25):
    """Draw a batch as a grid with its boxes and save it to ``fname``; returns the grid (H, W, 3) RGB uint8.

    imgs: (B, 3, H, W) RGB, uint8 or float in [0, 1]. targets: (N, 6) labels [img_idx, cls, cx, cy, w, h]
    or (N, 7) predictions with a trailing confidence (those below ``conf_thres`` are not drawn); boxes are
    normalised to the image or in its pixels.
    """
    imgs, targets = _to_numpy(imgs), _to_numpy(targets)
    targets = targets.reshape(-1, targets.shape[-1]) if targets.size else np.zeros((0, 6))
    if imgs.size and imgs.max() <= 1.0:
        imgs = imgs * 255
    bs, _, h, w = imgs.shape
    bs = min(bs, max_subplots)
    ns = math.ceil(bs ** 0.5)  # tiles per side
    scale = min(1.0, max_size / (ns * max(h, w)))
    th, tw = math.ceil(h * scale), math.ceil(w * scale)
    grid = np.full((ns * th, ns * tw, 3), 255, np.uint8)
    for i in range(bs):
        y0, x0 = (i // ns) * th, (i % ns) * tw
        tile = cv2.resize(np.ascontiguousarray(imgs[i].transpose(1, 2, 0).astype(np.uint8)), (tw, th))
        _draw_boxes(tile, targets[targets[:, 0] == i], (w, h), scale, names, conf_thres)
        if paths is not None and i < len(paths):
            cv2.putText(tile, Path(paths[i]).name[:40], (5, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (220, 220, 220), 1,
                        cv2.LINE_AA)
        cv2.rectangle(tile, (0, 0), (tw - 1, th - 1), (255, 255, 255), 2)
        grid[y0:y0 + th, x0:x0 + tw] = tile
    Path(fname).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(fname), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    return grid


def _draw_boxes(tile, rows, size, scale, names, conf_thres):
    """Draw one image's rows [img_idx, cls, cx, cy, w, h(, conf)] onto its (resized) tile, in place."""
    if not len(rows):
        return
    is_pred = rows.shape[1] == 7
    boxes = rows[:, 2:6].copy()
    if boxes.max() <= 1.01:  # normalised
        boxes *= [size[0], size[1], size[0], size[1]]
    boxes *= scale
    for (cx, cy, bw, bh), row in zip(boxes, rows):
        c = int(row[1])
        if is_pred and row[6] < conf_thres:
            continue
        p1, p2 = (int(cx - bw / 2), int(cy - bh / 2)), (int(cx + bw / 2), int(cy + bh / 2))
        color = class_color(c)
        cv2.rectangle(tile, p1, p2, color, 1 if is_pred else 2, cv2.LINE_AA)
        label = names[c] if names is not None and c < len(names) else str(c)
        if is_pred:
            label = f'{label} {row[6]:.2f}'
        cv2.putText(tile, label, (p1[0], max(p1[1] - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1, cv2.LINE_AA)


def plot_results(csv_path):
    """results.png beside ``results.csv``: train/val losses, P, R and mAPs per epoch, columns read by name."""
    from utils.eval.report import read_rows
    csv_path = Path(csv_path)
    rows = read_rows(csv_path)
    if not rows:
        return None
    return _save(results_figure(rows), csv_path.with_name('results.png'))


def results_figure(rows):
    """The figure of results.png from results.csv rows ({column: float}): one panel per plotted column, each
    drawing the epochs whose cell is filled (an epoch --val-every skipped has empty metric cells)."""
    from utils.eval.report import PLOTTED
    from matplotlib.figure import Figure
    fig = Figure(figsize=(12, 6), tight_layout=True)
    epochs = np.array([r.get('epoch', np.nan) for r in rows]) + 1
    start = [r for r in rows if r.get('epoch', 0) < 0]  # a pretrained start's zero-shot row (epoch -1)
    for ax, key in zip(fig.subplots(2, 5).ravel(), PLOTTED):
        values = np.array([r.get(key, np.nan) for r in rows], float)
        filled = np.isfinite(values)
        ax.plot(epochs[filled], values[filled], marker='.', linewidth=2)
        ax.set_title(key, fontsize=10)
        if start and np.isfinite(start[0].get(key, np.nan)):
            ax.axhline(start[0][key], color='grey', linestyle='--', linewidth=1, label='zero-shot (epoch 0)')
            ax.legend(fontsize=7)
    return fig


def plot_labels(labels, names, save_dir):
    """labels.jpg: instances per class, box centres and box sizes of a training set."""
    labels = [lb for lb in labels if len(lb)]
    lb = np.concatenate(labels, 0) if labels else np.zeros((0, 5))
    from matplotlib.figure import Figure
    fig = Figure(figsize=(12, 4), tight_layout=True)
    ax = fig.subplots(1, 3)
    ax[0].bar(range(len(names)), np.bincount(lb[:, 0].astype(int), minlength=len(names)))
    ax[0].set_xticks(range(len(names)), [str(n) for n in names], rotation=90 if len(names) > 10 else 0)
    ax[0].set_ylabel('instances')
    ax[1].scatter(lb[:, 1], lb[:, 2], s=2, alpha=0.3)
    ax[1].set(xlabel='x', ylabel='y', xlim=(0, 1), ylim=(1, 0))
    ax[2].scatter(lb[:, 3], lb[:, 4], s=2, alpha=0.3)
    ax[2].set(xlabel='width', ylabel='height', xlim=(0, 1), ylim=(0, 1))
    return _save(fig, Path(save_dir) / 'labels.jpg')


def plot_evolve(rows, params, path):
    """--evolve results: fitness per trial (pruned trials hollow, at the fitness they had reached), then each
    searched parameter against fitness (choices as categories)."""
    from matplotlib.figure import Figure  # lazy, as in _figure
    n = len(params) + 1
    cols = min(n, 5)
    nrows = math.ceil(n / cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * nrows), tight_layout=True)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    fit = np.array([r['fitness'] or 0.0 for r in rows], float)
    done = np.array([r['state'] == 'complete' for r in rows])
    trials = np.array([r['trial'] for r in rows])
    ax = axes[0]
    ax.scatter(trials[done], fit[done], c='tab:blue', s=18, label='complete')
    ax.scatter(trials[~done], fit[~done], facecolors='none', edgecolors='tab:red', s=18, label='pruned/failed')
    if done.any():
        ax.plot(trials[done], np.maximum.accumulate(fit[done]), c='tab:blue', lw=1, label='best so far')
    ax.set(xlabel='trial', ylabel='fitness', title='fitness per trial')
    ax.legend(fontsize=6)
    for ax, key in zip(axes[1:], params):
        values = [r[key] for r in rows]
        given = np.array([v != '' for v in values])
        if any(isinstance(v, str) and v != '' for v in values):  # categorical
            cats = sorted({str(v) for v, g in zip(values, given) if g})
            x = np.array([cats.index(str(v)) if g else -1 for v, g in zip(values, given)], float)
            ax.set_xticks(range(len(cats)), cats, fontsize=6)
        else:
            x = np.array([float(v) if g else np.nan for v, g in zip(values, given)])
        ax.scatter(x[given & done], fit[given & done], c='tab:blue', s=12)
        ax.scatter(x[given & ~done], fit[given & ~done], facecolors='none', edgecolors='tab:red', s=12)
        ax.set_title(key, fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in axes[n:]:
        ax.set_visible(False)
    path = Path(path)
    tmp = path.with_name(f'.{path.stem}.{os.getpid()}.png')  # processes sharing a study may write it together
    fig.savefig(tmp, dpi=100)
    tmp.replace(path)
    return path

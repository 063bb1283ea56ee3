"""What an evaluation reports: the class table, the VOC devkit line, the speed line, PR curves and the confusion
matrix (from an ``EvalResult`` of utils/eval/evaluator.py and class names; computes nothing new), and results.csv.

results.csv: one row per epoch, written and read by column name under one fixed header.

The header never depends on the optimizer: ``x/lr0``, ``x/lr1``, ``x/lr2`` are the learning rates of the three
YOLOv5 parameter kinds (weights with decay, BatchNorm weights, biases). A kind with no trainable parameters
(e.g. BatchNorm weights while every BN layer is frozen) leaves its cell empty; read back it is NaN.
``metrics/voc_mAP_0.5`` is the VOC devkit AP50 of data with ``eval: voc07|voc12`` (empty for other data).
An epoch that ``--val-every`` does not validate keeps its train losses and LRs and leaves the metric and val-loss
cells empty: readers skip empty cells (NaN from ``read_rows``).
"""
import csv
import math
from pathlib import Path

import numpy as np

HEADER = ('%22s' + '%11s' * 6) % ('Class', 'Images', 'Instances', 'P', 'R', 'mAP50', 'mAP50-95')
ROW = '%22s' + '%11i' * 2 + '%11.3g' * 4


def print_table(result, names, verbose=False):
    """The 'all' row, and with ``verbose`` one row per class with ground truth."""
    print(HEADER)
    print(ROW % ('all', result.seen, result.instances.sum(), result.p, result.r, result.map50, result.map))
    if result.instances.sum() == 0:
        print('WARNING no labels found in this split, cannot compute metrics without labels')
    if verbose and len(names) > 1:
        res = result.per_class
        for i, c in enumerate(res.classes):
            print(ROW % (names[c], result.images_per_class[c], res.n_targets[i], res.p[i], res.r[i], res.ap50[i],
                         res.ap_mean[i]))


def print_keep_split(result, kept, new):
    """A kept model's (--keep-classes) data classes apart: those its checkpoint knew (``kept`` ids) and the new ones
    (``new`` ids), each with its mAP50 and mAP50-95 over the classes with ground truth. Returns the four means."""
    res = result.per_class
    out = []
    for ids in (kept, new):
        rows = [i for i, c in enumerate(res.classes) if c in set(ids)]
        out += [float(res.ap50[rows].mean()), float(res.ap_mean[rows].mean())] if rows else [float('nan')] * 2
    parts = [f'{what} classes ({len(ids)}) ' + (f'mAP50 {a:.3f} mAP50-95 {b:.3f}' if a == a else 'no labels')
             for what, ids, a, b in (('checkpoint', kept, *out[:2]), ('new', new, *out[2:]))]
    print('kept model: ' + ' | '.join(parts))
    return out


def print_voc(result, names, rule, verbose=False):
    """The VOC devkit AP50 (per class with ``verbose``) of a result evaluated with ``voc_rule``."""
    ap = result.voc_ap
    if verbose:
        print(f"{'Class':>22s}{'VOC AP50':>11s}")
        for c in np.flatnonzero(np.isfinite(ap)):
            print(f'{names[c]:>22s}{ap[c]:11.4f}')
    print(f"VOC devkit AP50 ({'VOC2007 11-point' if rule == 'voc07' else 'VOC2010+ all-point'}, difficult "
          f'ignored): mAP {result.voc_map:.4f} over {int(np.isfinite(ap).sum())} classes')


def print_speed(result, imgsz, show_total=False):
    s = result.speed
    print(f'Speed: {s.preprocess:.1f}ms pre-process, {s.inference:.1f}ms inference, {s.nms:.1f}ms NMS per image '
          f'at imgsz {imgsz}' + (f' ({s.total:.1f}ms total)' if show_total else ''))


def save_plots(result, names, save_dir):
    """PR/F1/P/R curves and, when the result has one, the confusion matrix, into ``save_dir``."""
    from utils.eval.plots import plot_ap_curves, plot_confusion_matrix  # lazy: matplotlib only when plotting
    plot_ap_curves(result.per_class, names, save_dir)
    if result.confusion is not None:
        plot_confusion_matrix(result.confusion, names, Path(save_dir) / 'confusion_matrix.png')


# results.csv

COLUMNS = ('epoch', 'train/box_loss', 'train/obj_loss', 'train/cls_loss', 'metrics/precision', 'metrics/recall',
           'metrics/mAP_0.5', 'metrics/mAP_0.5:0.95', 'val/box_loss', 'val/obj_loss', 'val/cls_loss',
           'x/lr0', 'x/lr1', 'x/lr2', 'metrics/voc_mAP_0.5')
PLOTTED = COLUMNS[1:11]  # losses and metrics; results.png has one panel for each
LR_COLUMNS = {'decay': 'x/lr0', 'bn': 'x/lr1', 'bias': 'x/lr2'}  # param_group['name'] -> column


def epoch_row(epoch, train_losses, result, param_groups, validated=True):
    """The row of one epoch: train losses (box, obj, cls), an ``EvalResult`` (None: --noval, written as zeros)
    and the optimizer's param groups (the first group of each kind gives its LR). ``validated=False``: an epoch
    that --val-every skips; its metric and val-loss cells stay empty."""
    row = {'epoch': epoch}
    row.update(zip(('train/box_loss', 'train/obj_loss', 'train/cls_loss'), train_losses))
    if validated:
        metrics = (result.p, result.r, result.map50, result.map, *result.losses) if result else (0.0,) * 7
        row.update(zip(COLUMNS[4:11], metrics))
    if validated and getattr(result, 'voc_map', None) is not None:
        row['metrics/voc_mAP_0.5'] = float(result.voc_map)
    for g in param_groups:
        column = LR_COLUMNS.get(g.get('name'))
        if column and column not in row:
            row[column] = g['lr']
    return row


def append_row(path, row):
    """Append ``row`` (a dict keyed by ``COLUMNS``; missing cells stay empty), writing the header first."""
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f'{path}: unknown results.csv column(s) {", ".join(sorted(unknown))}')
    new = not path.exists() or path.stat().st_size == 0
    with path.open('a', newline='') as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        w.writerow({k: f'{v:.5g}' if isinstance(v, float) else v for k, v in row.items()})


def read_rows(path):
    """Every row as {column: float}; empty cells are NaN, columns this version does not know are kept."""
    with open(path, newline='') as f:
        return [{k.strip(): _number(v) for k, v in r.items() if k is not None} for r in csv.DictReader(f)]


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan

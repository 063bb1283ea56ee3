"""results.csv: one row per epoch, written and read by column name under one fixed header.

The header never depends on the optimizer: ``x/lr0``, ``x/lr1``, ``x/lr2`` are the learning rates of the three
YOLOv5 parameter kinds (weights with decay, BatchNorm weights, biases). A kind with no trainable parameters
(e.g. BatchNorm weights while every BN layer is frozen) leaves its cell empty; read back it is NaN.
``metrics/voc_mAP_0.5`` is the VOC devkit AP50 of data with ``eval: voc07|voc12`` (empty for other data).
An epoch that ``--val-every`` does not validate keeps its train losses and LRs and leaves the metric and val-loss
cells empty: readers skip empty cells (NaN from ``read_rows``).
"""
import csv
import math

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

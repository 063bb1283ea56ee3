"""What an evaluation prints and plots: the class table, the VOC devkit line, the speed line, PR curves and the
confusion matrix. Takes an ``EvalResult`` (utils/eval/evaluator.py) and class names; computes nothing new."""
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

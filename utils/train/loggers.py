"""TensorBoard logging of a training run (optional: needs the ``tensorboard`` package).

    tb = TensorBoardLogger.open(save_dir, log=print)   # one line either way: how to view it, or that it is off
    tb.log_baseline(result)                             # zero-shot metrics of the starting weights, if any
    tb.log_epoch(row)                                   # a results.csv row: losses, P, R, mAP50, mAP50-95, LRs
    tb.log_image('train/batch0', save_dir / 'train_batch0.jpg', step=0)
    tb.close()

Without ``tensorboard`` installed, ``open`` returns a logger whose methods do nothing.
"""
import math
from collections.abc import Mapping
from pathlib import Path

import cv2

BASELINE_METRICS = {'p': 'precision', 'r': 'recall', 'map50': 'mAP_0.5', 'map': 'mAP_0.5:0.95'}


def _summary_writer_class():
    """torch's SummaryWriter, or None when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class TensorBoardLogger:
    """Scalars per epoch and a few images in ``save_dir`` (one events file), read by ``tensorboard --logdir``."""

    def __init__(self, writer=None):
        self.writer = writer  # None: logging is off

    @classmethod
    def open(cls, save_dir, log=print):
        """A logger writing into ``save_dir``; says in one line how to view it, or that it is off."""
        writer_class = _summary_writer_class()
        if writer_class is None:
            log('TensorBoard: off (pip install tensorboard to log this run)')
            return cls(None)
        save_dir = Path(save_dir)
        log(f'TensorBoard: view with `tensorboard --logdir {save_dir.parent}`, then open http://localhost:6006/')
        return cls(writer_class(log_dir=str(save_dir)))

    @property
    def enabled(self):
        return self.writer is not None

    def log_epoch(self, row):
        """One results.csv row ({column: value}, with 'epoch'): every finite number as a scalar at that epoch."""
        if not self.enabled:
            return
        epoch = int(row['epoch'])
        for tag, value in row.items():
            if tag != 'epoch' and _is_number(value):
                self.writer.add_scalar(tag, value, epoch)
        self.writer.flush()

    def log_baseline(self, result, step=0):
        """Metrics of the starting weights before any training (an EvalResult or a mapping with p, r, map50, map)
        as ``baseline/*`` scalars, so a fine-tuned curve can be compared with where it began."""
        if not self.enabled or result is None:
            return
        for key, name in BASELINE_METRICS.items():
            value = result.get(key) if isinstance(result, Mapping) else getattr(result, key, None)
            if _is_number(value):
                self.writer.add_scalar(f'baseline/{name}', float(value), step)
        self.writer.flush()

    def log_image(self, tag, path, step=0):
        """An image file (e.g. train_batch0.jpg, PR_curve.png); a missing file is skipped. Returns whether it
        was written."""
        if not self.enabled or not Path(path).is_file():
            return False
        image = cv2.imread(str(path))
        if image is None:
            return False
        self.writer.add_image(tag, image[..., ::-1].copy(), step, dataformats='HWC')
        self.writer.flush()
        return True

    def close(self):
        """Flush and end the writer's background thread; logging is off afterwards (closing twice is harmless)."""
        if self.enabled:
            self.writer.close()
            self.writer = None

"""Everything that watches a training run is a callback: results.csv, results.png and train_batch0.jpg,
TensorBoard, MLflow, and ``--evolve``'s pruner. The epoch loop (utils/train/trainer.py) calls the hooks and never
names a logger. A callback is a class with any of these methods (the others are inherited and do nothing):

    on_run_start(run, state)                        # set up, before the zero-shot evaluation and the first epoch
    on_first_batch(run, state, imgs, targets)       # the run's first training batch (as the model sees it)
    on_epoch_end(run, state, row, result)           # an epoch's results.csv row; ``result``: EvalResult or None
    on_checkpoint_saved(run, state, path, best)     # last.pt written (``best``: best.pt is this checkpoint too)
    on_epoch_done(run, state, row, result)          # after the epoch's checkpoints: raising here ends the run
    on_run_end(run, state, result, error)           # always, last: the final EvalResult (or None), the exception

``run`` is the TrainConfig (utils/train/config.py), ``state`` the TrainState (utils/train/setup.py). ``row`` is
keyed by the results.csv columns (utils/eval/report.py); an epoch that --val-every does not validate has no
metric cells, and the zero-shot evaluation of a ``--weights`` start is the row of epoch -1 (``ZERO_SHOT_EPOCH``).
Callbacks run in the main process only, in the order given. A logger of your own is one file:

    class PrintMap(Callback):
        def on_epoch_end(self, run, state, row, result):
            print(row['epoch'], row.get('metrics/mAP_0.5'))

    train.run(data='data/shapes.yaml', epochs=3, callbacks=[PrintMap()])
"""
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path

import cv2

from utils.errors import InputError, Interrupted, one_line
from utils.eval.plots import plot_images, plot_results
from utils.eval.report import append_row

ZERO_SHOT_EPOCH = -1  # results.csv row of the evaluation before the first step (drawn at 0 in results.png)
VALIDATED = 'metrics/mAP_0.5'  # a row with this cell went through validation
RESULTS_PLOT_EVERY_S = 300  # results.png: drawn at the end (or a stop) and, in between, at most this often
BASELINE_METRICS = {'p': 'precision', 'r': 'recall', 'map50': 'mAP_0.5', 'map': 'mAP_0.5:0.95'}
HOOKS = ('on_run_start', 'on_first_batch', 'on_epoch_end', 'on_checkpoint_saved', 'on_epoch_done', 'on_run_end')


class Callback:
    """A watcher of a training run: override the hooks it needs (see the module docstring)."""

    def on_run_start(self, run, state):
        pass

    def on_first_batch(self, run, state, imgs, targets):
        pass

    def on_epoch_end(self, run, state, row, result):
        pass

    def on_checkpoint_saved(self, run, state, path, best):
        pass

    def on_epoch_done(self, run, state, row, result):
        pass

    def on_run_end(self, run, state, result, error):
        pass


class Callbacks:
    """The run's callbacks, called in order: ``callbacks.fire('on_epoch_end', run, state, row, result)``.
    ``on_run_end`` reaches every callback even when one of them raises (the first error is raised after)."""

    def __init__(self, callbacks=()):
        self.callbacks = [c for c in callbacks if c is not None]

    def fire(self, hook, *args):
        if hook not in HOOKS:
            raise AttributeError(f'unknown callback hook {hook!r} (hooks: {", ".join(HOOKS)})')
        if hook != 'on_run_end':
            for c in self.callbacks:
                getattr(c, hook, _nothing)(*args)
            return
        failed = None
        for c in self.callbacks:
            try:
                getattr(c, hook, _nothing)(*args)
            except Exception as e:  # the other callbacks still close their files, threads and runs
                failed = failed or e
        if failed is not None:
            raise failed


def _nothing(*args):
    pass


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def metric_of(result, key):
    """A metric of an EvalResult or of a mapping with p, r, map50, map."""
    return result.get(key) if isinstance(result, Mapping) else getattr(result, key, None)


class ResultsCsv(Callback):
    """results.csv in the run folder: one row per epoch, and the zero-shot row (utils/eval/report.py)."""

    def on_epoch_end(self, run, state, row, result):
        append_row(run.save_dir / 'results.csv', row)


class Plots(Callback):
    """train_batch0.jpg (the first batch with its labels) and results.png (at most every RESULTS_PLOT_EVERY_S
    seconds during the run, and always at its end, however it ends). Off with --noplots."""

    def __init__(self):
        self.plotted = time.time()

    def on_first_batch(self, run, state, imgs, targets):
        plot_images(imgs, targets, None, run.save_dir / 'train_batch0.jpg', names=state.names)

    def on_epoch_end(self, run, state, row, result):
        if row['epoch'] != ZERO_SHOT_EPOCH and time.time() - self.plotted >= RESULTS_PLOT_EVERY_S:
            self.plot(run)

    def on_run_end(self, run, state, result, error):
        self.plot(run)

    def plot(self, run):
        if (run.save_dir / 'results.csv').exists():
            plot_results(run.save_dir / 'results.csv')
        self.plotted = time.time()


def _summary_writer_class():
    """torch's SummaryWriter, or None when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


class TensorBoardLogger(Callback):
    """Scalars per epoch and a few images in the run folder (one events file), read by ``tensorboard --logdir``.
    Without the ``tensorboard`` package it says so in one line and does nothing.

        tb = TensorBoardLogger.open(save_dir, log=print)   # one line either way: how to view it, or that it is off
        tb.log_baseline(result)                             # zero-shot metrics of the starting weights, if any
        tb.log_epoch(row)                                   # a results.csv row: losses, P, R, mAP50, mAP50-95, LRs
        tb.log_image('train/batch0', save_dir / 'train_batch0.jpg', step=0)
        tb.close()
    """

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

    def on_run_start(self, run, state):
        if self.writer is None:
            self.writer = TensorBoardLogger.open(run.save_dir, log=run.log).writer

    def on_first_batch(self, run, state, imgs, targets):
        self.log_image('train/batch0', run.save_dir / 'train_batch0.jpg', state.epoch)  # drawn by Plots, if on

    def on_epoch_end(self, run, state, row, result):
        if row['epoch'] == ZERO_SHOT_EPOCH:
            self.log_baseline(result)  # baseline/* beside the per-epoch curves
        else:
            self.log_epoch(row)

    def on_run_end(self, run, state, result, error):
        if result is not None:
            self.log_image('val/PR_curve', run.save_dir / 'PR_curve.png', state.epoch)
        self.close()

    def log_epoch(self, row):
        """One results.csv row ({column: value}, with 'epoch'): every finite number as a scalar at that epoch."""
        if not self.enabled:
            return
        epoch = int(row['epoch'])
        for tag, value in row.items():
            if tag != 'epoch' and is_number(value):
                self.writer.add_scalar(tag, value, epoch)
        self.writer.flush()

    def log_baseline(self, result, step=0):
        """Metrics of the starting weights before any training (an EvalResult or a mapping with p, r, map50, map)
        as ``baseline/*`` scalars, so a fine-tuned curve can be compared with where it began."""
        if not self.enabled or result is None:
            return
        for key, name in BASELINE_METRICS.items():
            value = metric_of(result, key)
            if is_number(value):
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


class MLflowLogger(Callback):
    """An MLflow run per training run: the options and hyper-parameters as params, every results.csv column as a
    metric per epoch (the zero-shot row as ``baseline/*``), best.pt as an artifact under ``weights/``. MLflow
    itself picks the store from ``MLFLOW_TRACKING_URI`` (a server, ``sqlite:///mlflow.db``, a folder, ...)."""

    def __init__(self, mlflow):
        self.mlflow, self.active = mlflow, None

    @classmethod
    def from_environment(cls, flag=False, log=print):
        """A logger when ``--mlflow`` is given or MLflow's own ``MLFLOW_TRACKING_URI`` is set, else None; one line
        naming the package when mlflow is not installed."""
        if not (flag or os.environ.get('MLFLOW_TRACKING_URI')):
            return None
        try:
            import mlflow
        except ImportError:
            why = '--mlflow' if flag else 'MLFLOW_TRACKING_URI is set'
            log(f'MLflow: off ({why}, but mlflow is not installed: pip install mlflow-skinny)')
            return None
        return cls(mlflow)

    def on_run_start(self, run, state):
        try:
            self.active = self.mlflow.start_run(run_name=run.save_dir.name)
        except self.mlflow.exceptions.MlflowException as e:  # the store named by the user cannot be used
            raise InputError(f'MLflow store {self.mlflow.get_tracking_uri()}: {one_line(e)[:300]}') from None
        params = {**{k: v for k, v in run.options.items() if k != 'hyp' or not isinstance(v, dict)},
                  **{f'hyp.{k}': v for k, v in state.hyp.items()}}
        self.mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        run.log(f'MLflow: run {self.active.info.run_id} in {self.mlflow.get_tracking_uri()}')

    def on_epoch_end(self, run, state, row, result):
        if row['epoch'] == ZERO_SHOT_EPOCH:
            metrics = {f'baseline/{name}': metric_of(result, key) for key, name in BASELINE_METRICS.items()}
            step = 0
        else:
            metrics, step = {k: v for k, v in row.items() if k != 'epoch'}, int(row['epoch'])
        self.mlflow.log_metrics({k: float(v) for k, v in metrics.items() if is_number(v)}, step=step)

    def on_run_end(self, run, state, result, error):
        if self.active is None:
            return
        best = run.weights_dir / 'best.pt'
        if error is None and best.is_file():
            self.mlflow.log_artifact(str(best), artifact_path='weights')
        stopped = isinstance(error, (KeyboardInterrupt, Interrupted))
        self.mlflow.end_run('FINISHED' if error is None else 'KILLED' if stopped else 'FAILED')
        self.active = None


class EpochFitness(Callback):
    """``fn(epoch, fitness)`` after each validated epoch, once its checkpoints are saved: the hook of
    ``train.main(opt, on_epoch_end=fn)`` (``fn`` may raise to end the run, as a pruned --evolve trial does)."""

    def __init__(self, fn):
        self.fn = fn

    def on_epoch_done(self, run, state, row, result):
        if VALIDATED in row:
            self.fn(row['epoch'], result.fitness if result is not None else 0.0)


def default_callbacks(run):
    """What watches every run (main process): results.csv, the plots (unless --noplots), TensorBoard, and MLflow
    when asked for (--mlflow or MLFLOW_TRACKING_URI)."""
    if not run.main:
        return []
    return [ResultsCsv(), None if run.noplots else Plots(), TensorBoardLogger(),
            MLflowLogger.from_environment(run.mlflow, log=run.log)]

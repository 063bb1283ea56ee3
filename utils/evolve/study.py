"""``train.py --evolve N``: N training trials searched by Optuna, bad ones pruned by their per-epoch fitness.

The study lives in an Optuna storage (default: SQLite ``study.db`` in the run folder; ``--evolve-storage`` may
name a shared database so several processes or machines add trials to one study). Each trial is a real,
in-process training run in ``<run>/trials/NNN``; the trainer calls back after every validated epoch (all of them
with --val-every 1) with the fitness (0.1 mAP50 + 0.9 mAP50-95), which the trial reports to the pruner and which
stops it early when the pruner says so.
Results (evolve.csv, hyp_evolved.yaml, the best command, evolve.png) are rewritten after every trial.

This module never imports a script: ``train.py`` hands in ``train_trial(opt, callbacks)``; the pruner is a training
callback (``TrialPruning``, utils/train/callbacks.py).
"""
import argparse
import gc
import os
import time
import warnings
from pathlib import Path

import torch
import yaml

from utils.data.config import load_hyp
from utils.errors import InputError, Interrupted
from utils.evolve.report import write_outputs
from utils.evolve.space import base_values, baseline_params, build_space, describe, suggest
from utils.runs import increment_path
from utils.train.callbacks import VALIDATED, Callback

EVOLVE_PROJECT = 'runs/evolve'
OPTIONS_FILE = 'evolve_opt.yaml'
HEARTBEAT_S = 60  # a trial whose process stopped beating this long x 3 is failed (and retried) by the others


def import_optuna():
    """optuna, or a one-line error naming the package to install."""
    try:
        import optuna
    except ImportError:
        raise InputError('--evolve needs the optuna package: pip install optuna') from None
    return optuna


def make_pruner(optuna, spec, epochs):
    """'median' (default), 'hyperband', 'none', or 'threshold=X' (stop trials whose fitness is below X)."""
    spec = str(spec or 'median').strip().lower()
    if spec == 'median':  # below the median of earlier trials at the same epoch, after a third of the epochs
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=max(1, epochs // 3))
    if spec == 'hyperband':
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    if spec == 'none':
        return optuna.pruners.NopPruner()
    if spec.startswith('threshold='):
        try:
            return optuna.pruners.ThresholdPruner(lower=float(spec.split('=', 1)[1]))
        except ValueError:
            pass
    raise InputError(f"--evolve-pruner {spec}: expected median, hyperband, none or threshold=X (a fitness)")


class Objective:
    """One Optuna trial = one training run with the sampled recipe, reporting fitness after every epoch."""

    def __init__(self, optuna, base_opt, hyp, space, save_dir, train_trial):
        self.optuna, self.base, self.hyp, self.space = optuna, base_opt, hyp, space
        self.save_dir, self.train_trial = save_dir, train_trial

    def __call__(self, trial):
        values = suggest(self.space, trial)
        opt = trial_options(self.base, self.hyp, values, self.save_dir / 'trials', trial.number)
        trial.set_user_attr('epochs', opt.epochs)
        pruning = TrialPruning(self.optuna, trial, opt.epochs)
        t0 = time.time()
        try:
            self.train_trial(opt, [pruning])
        finally:
            trial.set_user_attr('epochs_run', pruning.epochs_run)
            trial.set_user_attr('seconds', round(time.time() - t0, 2))
            trial.set_user_attr('best_fitness', pruning.best)
            release_memory()
        return pruning.best


class TrialPruning(Callback):
    """A trial's training callback: after each validated epoch (once its checkpoints are saved) the fitness goes
    to the Optuna trial, and the run ends (``TrialPruned``) when the pruner says so, before its last epoch."""

    def __init__(self, optuna, trial, epochs):
        self.optuna, self.trial, self.epochs = optuna, trial, epochs
        self.epochs_run, self.best = 0, 0.0

    def on_epoch_done(self, run, state, row, result):
        if VALIDATED in row:
            self.report(row['epoch'], result.fitness if result is not None else 0.0)

    def report(self, epoch, fit):
        self.epochs_run = epoch + 1
        self.best = max(self.best, float(fit))
        self.trial.report(float(fit), epoch)
        if epoch < self.epochs - 1 and self.trial.should_prune():
            raise self.optuna.TrialPruned(f'pruned after epoch {epoch + 1}/{self.epochs}: fitness {fit:.4f}')


def release_memory():
    """Nothing of one trial may weigh on the next: collect its model, loaders and optimizer now."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def trial_options(base, hyp, values, project, number):
    """The training options of one trial: the base run's, with the sampled hyp and freezing values."""
    opt = argparse.Namespace(**vars(base))
    opt.hyp = {**hyp, **{k: v for k, v in values.items() if k in hyp}}
    opt.freeze = values['freeze'].split()
    opt.freeze_bn_stats, opt.unfreeze_epoch = values['freeze_bn_stats'], int(values['unfreeze_epoch'])
    opt.project, opt.name, opt.exist_ok = str(project), f'{number:03d}', True
    opt.evolve, opt.resume, opt.noval, opt.noplots = None, False, False, True
    return opt


def storage_url(opt, save_dir):
    return opt.evolve_storage or f'sqlite:///{(save_dir / "study.db").resolve()}'


def open_storage(optuna, url, attempts=5):
    """The RDB storage with heartbeats (a trial whose process died is failed and rerun by the others). Processes
    starting together may race to create the tables: retry a few times before calling the URL bad."""
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeats are marked experimental
                warnings.simplefilter('ignore')
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=HEARTBEAT_S, grace_period=3 * HEARTBEAT_S,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback())
        except Exception as e:  # bad URL, unreachable database, missing driver, a table-creation race
            if attempt == attempts - 1:
                raise InputError(f'--evolve-storage {url}: cannot open ({str(e).splitlines()[0]})') from None
            time.sleep(1 + attempt)


def open_study(optuna, opt, save_dir, space, n_trials):
    """Create the study (trial 0 = the base recipe) or load the existing one of this name from the storage."""
    url = storage_url(opt, save_dir)
    storage = open_storage(optuna, url)
    pruner = make_pruner(optuna, opt.evolve_pruner, opt.epochs)
    try:
        study = optuna.create_study(storage=storage, study_name=opt.name, direction='maximize', pruner=pruner)
        study.enqueue_trial(baseline_params(space, base_values(study_hyp(opt), opt)), user_attrs={'baseline': True})
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=opt.name, pruner=pruner)
        created = False
    # seeded by the trials so far, so a resumed or extended study does not replay its first samples; a shared
    # study's processes sample independently
    seed = None if opt.evolve_storage else opt.seed + len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.TPESampler(n_startup_trials=max(3, min(10, n_trials // 3)), seed=seed)
    return study, storage, created


def study_hyp(opt):
    return load_hyp(opt.hyp)


def finished(optuna, study):
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return [t for t in study.get_trials(deepcopy=False) if t.state in states]


def retry_interrupted(optuna, study, storage, local):
    """Queue a rerun (same recipe) of every failed or interrupted trial not yet rerun. A local study's RUNNING
    trials are from a process that died (one run folder, one process); a shared study waits for its heartbeat."""
    TrialState = optuna.trial.TrialState
    study_id = storage.get_study_id_from_name(study.study_name)
    trials = study.get_trials(deepcopy=False)
    if local:
        for t in trials:
            if t.state == TrialState.RUNNING:
                storage.set_trial_state_values(storage.get_trial_id_from_study_id_trial_number(study_id, t.number),
                                               TrialState.FAIL)
        trials = study.get_trials(deepcopy=False)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            optuna.storages.fail_stale_trials(study)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # retried_trial_number is marked experimental
        rerun = {t.user_attrs.get('retry_of', optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t))
                 for t in trials}
    failed = [t for t in trials if t.state == TrialState.FAIL and t.number not in rerun]
    for t in failed:
        study.enqueue_trial(t.params, user_attrs={'retry_of': t.number, 'baseline': t.user_attrs.get('baseline',
                                                                                                    False)})
    return [t.number for t in failed]


def evolve_dir(opt):
    """The run folder: a new runs/evolve/exp{N}, or the interrupted one for --resume."""
    if opt.resume:
        return find_evolve_dir(opt.project, opt.resume)
    project = EVOLVE_PROJECT if opt.project == 'runs/train' else opt.project
    return increment_path(Path(project) / opt.name, exist_ok=opt.exist_ok, mkdir=True)


def is_evolve_dir(resume):
    """Whether --resume names an --evolve run folder (or a file in one)."""
    if not resume or resume is True:
        return False
    path = Path(resume)
    return ((path if path.is_dir() else path.parent) / OPTIONS_FILE).is_file()


def find_evolve_dir(project, resume):
    if resume is not True:
        path = Path(resume)
        folder = path if path.is_dir() else path.parent
        if not (folder / OPTIONS_FILE).is_file():
            raise FileNotFoundError(f'--resume {resume}: no {OPTIONS_FILE} there (not an --evolve run folder)')
        return folder
    project = Path(EVOLVE_PROJECT if project == 'runs/train' else project)
    found = sorted(project.glob(f'*/{OPTIONS_FILE}'), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f'--resume: no interrupted --evolve run under {project}')
    return found[-1].parent


def load_options(opt, save_dir):
    """--resume: the study's saved options, keeping this call's device and workers."""
    saved = argparse.Namespace(**yaml.safe_load((save_dir / OPTIONS_FILE).read_text()))
    saved.device, saved.workers = opt.device, opt.workers
    return saved


def run_evolve(opt, train_trial, defaults, pruner=None):
    """Run the study for ``opt`` (train.py's options with ``opt.evolve`` = N). ``defaults``: the option defaults
    (to write the best command with only the flags that differ); ``pruner`` overrides --evolve-pruner."""
    optuna = import_optuna()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # one line per trial is ours; failures end in one line
    try:
        return _run_study(optuna, opt, train_trial, defaults, pruner)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _run_study(optuna, opt, train_trial, defaults, pruner):
    if int(os.environ.get('WORLD_SIZE', 1)) > 1:
        raise InputError('--evolve runs one process per trial; share a study between processes with '
                         '--evolve-storage instead of torch.distributed.run')
    resuming = bool(opt.resume)
    if resuming:
        save_dir = evolve_dir(opt)
        opt = load_options(opt, save_dir)
    hyp = study_hyp(opt)
    space = build_space(hyp, opt, opt.evolve_space)  # bad flags end here, before a run folder is made
    if not resuming:
        save_dir = evolve_dir(opt)
        (save_dir / OPTIONS_FILE).write_text(yaml.safe_dump(_plain(vars(opt)), sort_keys=False))
    print(f'evolve: {save_dir}\n{describe(space)}')
    study, storage, created = open_study(optuna, opt, save_dir, space, opt.evolve)
    if pruner is not None:
        study.pruner = pruner
    n_done = len(finished(optuna, study))
    if resuming:
        retried = retry_interrupted(optuna, study, storage, local=not opt.evolve_storage)
        n_run = max(0, int(study.user_attrs.get('target', opt.evolve)) - n_done)
        print(f'evolve: resuming {study.study_name}: {n_done} trials finished, rerunning {retried or "none"}, '
              f'{n_run} to go')
    else:
        n_run = opt.evolve
        study.set_user_attr('target', n_done + n_run)
        print(f"evolve: {'new study' if created else f'adding {n_run} trials to'} {study.study_name} "
              f'({storage_url(opt, save_dir)})')
    objective = Objective(optuna, opt, hyp, space, save_dir, train_trial)
    outputs = lambda s, t: write_outputs(s, save_dir, space, hyp, opt, defaults)  # noqa: E731
    try:
        study.optimize(objective, n_trials=n_run, callbacks=[outputs, log_trial], gc_after_trial=True)
    except BaseException as e:
        write_outputs(study, save_dir, space, hyp, opt, defaults)  # the interrupted/failed trial is listed too
        if isinstance(e, (KeyboardInterrupt, Interrupted)):
            hint = f'continue with: python train.py --evolve --resume {save_dir}'
            print(f'evolve: interrupted; {hint}')
            if isinstance(e, Interrupted):  # a signal (StopOnSignal): the study, not the trial, resumes
                raise Interrupted(f'{str(e).split(":")[0]}: evolve interrupted during a trial; {hint}',
                                  e.signum) from None
        raise
    return write_outputs(study, save_dir, space, hyp, opt, defaults, final=True)


def log_trial(study, trial):
    a = trial.user_attrs
    print(f"evolve: trial {trial.number} {trial.state.name.lower()}: fitness {a.get('best_fitness', 0):.4f}, "
          f"{a.get('epochs_run', 0)}/{a.get('epochs', 0)} epochs, {a.get('seconds', 0):.0f} s")


def _plain(d):
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}

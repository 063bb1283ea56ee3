"""One training run: the epoch loop, checkpoints, verification (set-up: utils/train/setup.py).

``train.py`` parses the command line and calls ``train(run)``; each epoch is logged to results.csv by column name
(utils/eval/results_csv.py), measured by ``utils.eval.evaluator.evaluate`` when --val-every validates it
(utils/train/val_schedule.py).
"""
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import torch

from utils.weights.checkpoint import copy_checkpoint, load_model, save_checkpoint, strip_optimizer, training_checkpoint
from utils.data.workers import reseed_loader
from utils.train.engine import StepState, seed_everything, train_one_epoch, warmup_iterations
from utils.errors import Interrupted
from utils.eval.outputs import BatchPlotter
from utils.eval.report import HEADER, print_speed, print_table, print_voc, save_plots
from utils.eval.evaluator import EvalConfig, evaluate, official_json
from utils.train.interrupt import StopOnSignal
from utils.train.loggers import TensorBoardLogger
from utils.data.multiscale import MultiScale
from utils.train.phases import PhaseTimer
from utils.eval.plots import plot_images, plot_results
from utils.eval.results_csv import append_row, epoch_row
from utils.runs import cudnn_autotune, increment_path
from utils.train.setup import release_layers, setup, wrap_ddp, write_options
from utils.train.val_schedule import is_validated, schedule_note, val_every_of, val_interval


RESULTS_PLOT_EVERY_S = 300  # results.png: drawn at the end (or a stop) and, in between, at most this often


class Run:
    """What a training run is given: options, device, process rank and count, output paths.
    What it builds (data, model, freeze plan, optimizer, ...) is a ``trainer_setup.Session``."""

    def __init__(self, opt, device, rank, world_size, phases=None):
        self.opt, self.device, self.rank, self.world_size = opt, device, rank, world_size
        self.phases = phases or PhaseTimer()  # where the wall time goes (utils/train/phases.py)
        self.main = rank in (-1, 0)
        self.amp = device.type == 'cuda'
        self.log = print if self.main else (lambda *a, **k: None)
        self.save_dir = self.weights_dir = None  # prepare_run_dir
        self.tb = TensorBoardLogger()  # off until train() opens it in the main process
        self.on_epoch_end = None  # optional callback(epoch, fitness) after each validated epoch (--evolve)
        self.val_interval = val_interval(val_every_of(opt), opt.epochs)  # --val-every K, resolved
        self.results_plotted = time.time()  # when results.png was last drawn (see RESULTS_PLOT_EVERY_S)


def make_checkpoint(run, session, epoch):
    ck = training_checkpoint(session.learner, epoch, session.progress.best_fitness, vars(run.opt),
                             session.config.hyp, session.plan.state_dict())
    return {**ck, 'best_epoch': session.progress.best_epoch}


def eval_config(run, session, plots, **options):
    """The evaluation settings of this run's val split (crowd regions of an official JSON, VOC rule, classes)."""
    single_cls, data = run.opt.single_cls, session.config.data
    return EvalConfig.for_data(data, single_cls, official_json(data, 'val', single_cls), confusion=plots, **options)


def report_validation(run, session, result, config, verbose, plots):
    names = session.config.names
    print_table(result, names, verbose)
    if config.voc_rule:
        print_voc(result, names, config.voc_rule, verbose)
    if plots:
        save_plots(result, names, run.save_dir)


def validate_epoch(run, session, final):
    """The EMA model on the val split (an ``EvalResult``), or None with --noval before the last epoch."""
    if run.opt.noval and not final:
        return None
    plots = final and not run.opt.noplots
    learner = session.learner
    config = eval_config(run, session, plots, half=run.amp)
    observers = [BatchPlotter(run.save_dir, session.config.names)] if plots else ()
    result = evaluate(learner.ema.ema, session.loaders.val, config, compute_loss=learner.compute_loss,
                      observers=observers)
    report_validation(run, session, result, config, verbose=final, plots=plots)
    return result


ZERO_SHOT_EPOCH = -1  # results.csv row of the evaluation before the first step (drawn at 0 in results.png)


def zero_shot(run, session):
    """A pretrained start, evaluated once before the first step: where the fine-tune begins (the transferred
    model, its class rows mapped from the checkpoint). Logged and written to results.csv as epoch -1."""
    learner = session.learner
    config = eval_config(run, session, plots=False)
    result = evaluate(learner.ema.ema, session.loaders.val, config, compute_loss=learner.compute_loss)
    print_table(result, session.config.names, verbose=False)
    run.log(f'Zero-shot (before the first step): mAP50 {result.map50:.3f}, mAP50-95 {result.map:.3f}; written to '
            f'results.csv as epoch {ZERO_SHOT_EPOCH}')
    append_row(run.save_dir / 'results.csv', epoch_row(ZERO_SHOT_EPOCH, (), result, []))
    run.tb.log_baseline(result)  # TensorBoard: baseline/* beside the per-epoch curves
    return result


def end_epoch(run, session, epoch, losses, final):
    """Validate (unless --val-every skips this epoch), log results.csv, save last/best. Returns True when early
    stopping says stop."""
    if not validation_due(run, epoch):
        with run.phases.phase('checkpoint and plots', epoch):
            return log_and_save(run, session, epoch, losses, None, final, validated=False)
    with run.phases.phase('val', epoch):
        result = validate_epoch(run, session, final)
    with run.phases.phase('checkpoint and plots', epoch):
        stop = log_and_save(run, session, epoch, losses, result, final)
    if run.on_epoch_end is not None:  # may raise to end the run (a pruned --evolve trial)
        run.on_epoch_end(epoch, result.fitness if result is not None else 0.0)
    return stop


def validation_due(run, epoch):
    """Whether ``epoch`` goes through validation: by --val-every's schedule (the last epoch always); with --noval
    every epoch does, as before the flag (validate_epoch then skips all but the last, logging zeros)."""
    return run.opt.noval or is_validated(epoch, run.val_interval, run.opt.epochs)


def log_and_save(run, session, epoch, losses, result, final, validated=True):
    """results.csv, TensorBoard, results.png, best fitness, last/best.pt. Returns True when early stopping says
    stop. An epoch that is not ``validated`` (--val-every) logs its train losses only and is never best or a stop."""
    row = epoch_row(epoch, losses, result, session.learner.optimizer.param_groups, validated=validated)
    append_row(run.save_dir / 'results.csv', row)
    run.tb.log_epoch(row)
    improved, stop = track_best(run, session.progress, epoch, result) if validated else (False, False)
    if not run.opt.noplots and (final or stop or time.time() - run.results_plotted >= RESULTS_PLOT_EVERY_S):
        plot_results(run.save_dir / 'results.csv')
        run.results_plotted = time.time()
    save_weights(run, session, epoch, improved, force=final or stop)
    return stop


def track_best(run, progress, epoch, result):
    """A validated epoch's fitness against the best so far (updated in ``progress``). Returns (improved, whether
    early stopping says stop: no improvement for --patience epochs)."""
    fit = result.fitness if result is not None else 0.0
    improved = fit >= progress.best_fitness
    if improved:
        progress.best_fitness, progress.best_epoch = fit, epoch
    return improved, epoch - progress.best_epoch >= run.opt.patience


def save_weights(run, session, epoch, improved, force):
    """last.pt (every epoch unless --nosave, and always when ``force``), best.pt when ``improved``, and
    epoch{N}.pt at epochs 0, P, 2P, ... with --save-period P (as upstream; resumable, kept with their optimizer)."""
    opt = run.opt
    period = getattr(opt, 'save_period', -1)
    periodic = not opt.nosave and period > 0 and epoch % period == 0
    if opt.nosave and not force:
        return
    last = save_checkpoint(make_checkpoint(run, session, epoch), run.weights_dir / 'last.pt')
    if improved:
        copy_checkpoint(last, run.weights_dir / 'best.pt')  # the same checkpoint: linked, not written twice
    if periodic:
        copy_checkpoint(last, run.weights_dir / f'epoch{epoch}.pt')


def verify_frozen(run, session, files=()):
    """Every frozen tensor, in the model, its EMA and the EMA saved in ``files``, must equal its starting value
    bit for bit (the plan's SHA-256 fingerprints, taken before the first step). Main process only."""
    learner = session.learner
    model = getattr(learner.model, 'module', learner.model)
    return session.plan.verify(model, learner.ema.ema, files, log=run.log)


def finish(run, session):
    """Strip the optimizer state from last/best and verify the frozen tensors, saved ones included."""
    last, best = run.weights_dir / 'last.pt', run.weights_dir / 'best.pt'
    files = [f for f in (last, best) if f.exists()]
    same = len(files) == 2 and os.path.samefile(last, best)  # best.pt linked to last.pt's checkpoint
    for f in files[:1] if same else files:
        strip_optimizer(f)
    if same:
        copy_checkpoint(last, best)  # the stripped checkpoint, linked again instead of stripped twice
    verify_frozen(run, session, files)


def begin_epoch(run, session, epoch, nb):
    """Reseed, release frozen layers at --unfreeze-epoch (after checking them), close mosaic. Returns the session,
    with a new learner (optimizer, DDP wrapper) after a release."""
    opt, loaders = run.opt, session.loaders
    seed_everything(opt.seed + epoch)  # a resumed run replays the same epoch
    reseed_loader(loaders.train, (opt.seed + epoch) * 1000 + max(run.rank, 0))
    if epoch == opt.unfreeze_epoch:
        if run.main:
            verify_frozen(run, session)  # the frozen phase ends here: check it before the layers are released
        learner = release_layers(run, session, epoch, nb)
        # DDP only syncs parameters that were trainable when it was wrapped
        session = replace(session, learner=replace(learner, model=wrap_ddp(run, learner.model)))
    if opt.close_mosaic and epoch >= opt.epochs - opt.close_mosaic and loaders.dataset.mosaic:
        loaders.dataset.mosaic = False
        run.log(f'epoch {epoch + 1}: mosaic off for the last {opt.close_mosaic} epochs')
    if hasattr(loaders.train.sampler, 'set_epoch'):
        loaders.train.sampler.set_epoch(epoch)
    return session


def train(run, ckpt=None):
    """Set up, run the epochs (resuming from ``ckpt`` when given), verify, validate best.pt; returns its results.
    A first SIGINT/SIGTERM during the epochs stops after the current batch with a last.pt that resumes exactly
    there (``Interrupted``); a second one exits at once (utils/train/interrupt.py)."""
    opt = run.opt
    session = setup(run, ckpt)
    nb, hyp, start = len(session.loaders.train), session.config.hyp, session.progress.start_epoch
    cfg = {'epochs': opt.epochs, 'hyp': hyp, 'batch_size': opt.batch_size, 'cos_lr': opt.cos_lr,
           'amp': run.amp, 'world_size': run.world_size,
           'warmup_iters': warmup_iterations(hyp, nb, opt.epochs)}
    if opt.multi_scale:
        cfg['multi_scale'] = multi_scale_for(session, opt.seed)
    if run.main:
        run.tb = TensorBoardLogger.open(run.save_dir, log=run.log)
        note = None if opt.noval else schedule_note(val_every_of(opt), opt.epochs)
        if note:
            run.log(note)
    try:  # the writer's thread must end even when the run does not (Ctrl-C, a pruned --evolve trial, an error)
        return run_to_the_end(run, session, cfg, start, ckpt)
    finally:
        run.tb.close()


def run_to_the_end(run, session, cfg, start, ckpt):
    """train() once set up: zero-shot val, the epochs, strip and verify, the final validation."""
    opt, nb = run.opt, len(session.loaders.train)
    if run.main and not opt.noplots:
        cfg['on_first_batch'] = lambda imgs, targets: plot_batch(run, session, imgs, targets)
    state = resume_step_state(session, ckpt, nb)
    cfg['skip_batches'] = session.progress.resume_at['batch'] if session.progress.resume_at else 0
    if run.main and opt.weights and ckpt is None and not opt.noval:
        with run.phases.phase('zero-shot val'):
            zero_shot(run, session)
    result = None
    t0 = time.time()
    with StopOnSignal(log=run.log) as stop:
        cfg['should_stop'] = lambda: stop_agreed(run, stop)
        session, epoch = run_epochs(run, session, cfg, state, stop)
        if run.main:
            run.log(f'{epoch - start + 1} epochs completed in {(time.time() - t0) / 3600:.3f} hours')
            with run.phases.phase('strip and verify'):
                finish(run, session)
        if stop.requested():  # the signal came after the last safe point: the weights are final already
            raise Interrupted(f'{signal.Signals(stop.signum).name}: the run had finished its epochs, final '
                              f'validation skipped; weights in {run.weights_dir}', stop.signum)
    if run.main:
        with run.phases.phase('final val'):
            result = final_validation(run, session)
        run.tb.log_image('val/PR_curve', run.save_dir / 'PR_curve.png', epoch)
    return result


def run_epochs(run, session, cfg, state, stop):
    """The epoch loop; returns the session and the last epoch run. Raises ``Interrupted`` after saving when
    ``stop`` was requested (between epochs, or mid-epoch after a batch)."""
    opt, nb, start = run.opt, len(session.loaders.train), session.progress.start_epoch
    varying = opt.rect or getattr(opt, 'multi_scale', False) or getattr(opt, 'deterministic', False)
    autotune = run.device.type == 'cuda' and not varying  # cuDNN autotuning pays off at fixed shapes only
    epoch = start - 1
    for epoch in range(start, opt.epochs):
        if stop_agreed(run, stop):  # between epochs (or before a resumed epoch's remaining batches)
            save_interrupted(run, session, stop, epoch, cfg['skip_batches'], state)
        with run.phases.phase('train', epoch), cudnn_autotune(autotune):
            session = begin_epoch(run, session, epoch, nb)
            losses, _ = train_one_epoch(session.learner, session.loaders.train, run.device, epoch, cfg, state,
                                        show=run.main)
        cfg.pop('on_first_batch', None)
        cfg['skip_batches'] = 0
        if state.stopped_after is not None:
            save_interrupted(run, session, stop, epoch, state.stopped_after, state)
        final = epoch == opt.epochs - 1
        stop_early = end_epoch(run, session, epoch, losses, final) if run.main else False
        if run.world_size > 1:  # every process must leave the loop together
            flag = [stop_early]
            torch.distributed.broadcast_object_list(flag, 0)
            stop_early = flag[0]
        if stop_early and not final:
            run.log(f'Early stopping: no improvement in {opt.patience} epochs '
                    f'(best epoch {session.progress.best_epoch + 1})')
            break
    return session, epoch


def stop_agreed(run, stop):
    """Whether to stop now: this process's signal, or under DDP any process's (all must stop at the same step)."""
    if run.world_size == 1:
        return stop.requested()
    flag = torch.tensor([float(stop.requested())], device=run.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def resume_step_state(session, ckpt, nb):
    """The step counters to start from: at ``start_epoch``, or for a run stopped mid-epoch where it stopped, with
    the gradients of its unfinished accumulation put back (so the resumed run continues exactly)."""
    at, start = session.progress.resume_at, session.progress.start_epoch
    if not at:
        return StepState(ni=start * nb, last_step=start * nb - 1)
    model = getattr(session.learner.model, 'module', session.learner.model)
    pending = ckpt.get('pending_grads') or {}
    for name, p in model.named_parameters():
        if name in pending:
            p.grad = pending[name].to(p.device)
    return StepState(ni=at['ni'], last_step=at['last_step'], mloss=at['mloss'])


def save_interrupted(run, session, stop, epoch, batch, state):
    """Save last.pt at ``batch`` batches into ``epoch`` (a resume replays the rest exactly) and raise Interrupted.
    Gradients of an unfinished accumulation are saved too."""
    nb, last = len(session.loaders.train), run.weights_dir / 'last.pt' if run.main else None
    if run.main:
        ck = make_checkpoint(run, session, epoch - 1)  # 'epoch' is the last complete one
        if batch:
            ck['resume_at'] = {'epoch': epoch, 'batch': batch, 'ni': state.ni, 'last_step': state.last_step,
                               'mloss': list(state.mloss)}
            model = getattr(session.learner.model, 'module', session.learner.model)
            ck['pending_grads'] = {n: p.grad.detach().clone() for n, p in model.named_parameters()
                                   if p.grad is not None}
        save_checkpoint(ck, last)
        if not run.opt.noplots and (run.save_dir / 'results.csv').exists():
            plot_results(run.save_dir / 'results.csv')
        run.tb.close()
    name = signal.Signals(stop.signum or signal.SIGINT).name
    where = f'epoch {epoch + 1}/{run.opt.epochs} after batch {batch}/{nb}' if batch else f'before epoch {epoch + 1}'
    raise Interrupted(f'{name}: stopped {where}; saved {last}; resume with: python train.py --resume {last}',
                      stop.signum or signal.SIGINT)


def multi_scale_for(session, seed):
    """--multi-scale: batch sizes around the checked image size, in steps of the model's largest stride."""
    model = getattr(session.learner.model, 'module', session.learner.model)
    return MultiScale(session.loaders.imgsz, max(int(model.stride.max()), 32), seed)


def final_validation(run, session):
    """best.pt (fused, as val.py loads it) on the val split, reported in full; its ``EvalResult`` or None."""
    best = run.weights_dir / 'best.pt'
    if not best.exists():
        return None
    plots = not run.opt.noplots
    config = eval_config(run, session, plots, progress=HEADER)
    model = load_model(best, run.device, fuse=True)
    observers = [BatchPlotter(run.save_dir, session.config.names)] if plots else ()
    result = evaluate(model, session.loaders.val, config, observers=observers)
    report_validation(run, session, result, config, verbose=True, plots=plots)
    print_speed(result, session.loaders.imgsz)
    run.log(f'Results saved to {run.save_dir}: mAP50 {result.map50:.3f}, mAP50-95 {result.map:.3f}')
    return result


def plot_batch(run, session, imgs, targets):
    plot_images(imgs, targets, None, run.save_dir / 'train_batch0.jpg', names=session.config.names)
    run.tb.log_image('train/batch0', run.save_dir / 'train_batch0.jpg', session.progress.start_epoch)


def prepare_run_dir(run):
    """runs/train/exp{N}/weights (the resumed run's own folder on --resume) and opt.yaml; main process only."""
    opt = run.opt
    if not run.main:
        run.save_dir = None
        return
    run.save_dir = Path(opt.resume).parent.parent if opt.resume else increment_path(Path(opt.project) / opt.name,
                                                                                   exist_ok=opt.exist_ok, mkdir=True)
    run.weights_dir = run.save_dir / 'weights'
    run.weights_dir.mkdir(parents=True, exist_ok=True)
    write_options(run.save_dir, opt)

"""One training run: the epoch loop (``fit``), its checkpoints and the frozen check (set-up: utils/train/setup.py).

``train.py`` parses the command line, builds the run's ``TrainConfig`` (utils/train/config.py) and calls
``train(run, ckpt, callbacks)``. ``setup`` builds the ``TrainState``; ``fit`` runs the epochs on it, each one
``train_one_epoch`` (utils/train/engine.py), then validation when --val-every says so, then last.pt/best.pt.
Whatever watches the run (results.csv, plots, TensorBoard, MLflow, the --evolve pruner) is a callback
(utils/train/callbacks.py): the loop fires its hooks and names no logger.
"""
import os
import signal
import time
from pathlib import Path

import torch

from utils.data.sizes import MultiScale
from utils.data.datasets import reseed_loader
from utils.errors import Interrupted
from utils.eval.evaluator import EvalConfig, evaluate, official_json
from utils.eval.outputs import BatchPlotter
from utils.eval.report import HEADER, epoch_row, print_speed, print_table, print_voc, save_plots
from utils.freeze.transfer import data_class_postprocess
from utils.runs import cudnn_autotune, increment_path
from utils.train.callbacks import ZERO_SHOT_EPOCH, Callbacks
from utils.train.config import is_validated, schedule_note
from utils.train.engine import StopOnSignal, seed_everything, train_one_epoch
from utils.train.setup import release_layers, setup, wrap_ddp, write_options
from utils.weights.checkpoint import copy_checkpoint, load_model, save_checkpoint, strip_optimizer, training_checkpoint


def train(run, ckpt=None, callbacks=()):
    """Set up, run the epochs (resuming from ``ckpt`` when given), verify, validate best.pt; returns its results.
    ``callbacks`` watch the run (main process only). A first SIGINT/SIGTERM during the epochs stops after the
    current batch with a last.pt that resumes exactly there (``Interrupted``); a second one exits at once."""
    run, state = setup(run, ckpt)
    callbacks = Callbacks(callbacks if run.main else ())
    result, error = None, None
    try:  # on_run_end is called however the run ends (Ctrl-C, a pruned --evolve trial, an error)
        callbacks.fire('on_run_start', run, state)
        result = run_to_the_end(run, state, callbacks, resumed=ckpt is not None)
        return result
    except BaseException as e:
        error = e
        raise
    finally:
        callbacks.fire('on_run_end', run, state, result, error)


def run_to_the_end(run, state, callbacks, resumed):
    """train() once set up: zero-shot val, the epochs, strip and verify, the final validation."""
    note = None if run.noval else schedule_note(run.val_every, run.epochs)
    if note:
        run.log(note)
    if run.main and run.weights and not resumed and not run.noval:
        with run.phases.phase('zero-shot val'):
            zero_shot(run, state, callbacks)
    t0, start = time.time(), state.epoch
    with StopOnSignal(log=run.log) as stop:
        fit(run, state, callbacks, stop)
        if run.main:
            run.log(f'{state.epoch - start + 1} epochs completed in {(time.time() - t0) / 3600:.3f} hours')
            with run.phases.phase('strip and verify'):
                finish(run, state)
        if stop.requested():  # the signal came after the last safe point: the weights are final already
            raise Interrupted(f'{signal.Signals(stop.signum).name}: the run had finished its epochs, final '
                              f'validation skipped; weights in {run.weights_dir}', stop.signum)
    if not run.main:
        return None
    with run.phases.phase('final val'):
        return final_validation(run, state)


def fit(run, state, callbacks, stop):
    """The epoch loop, from ``state.epoch`` to the last epoch or an early stop; ``state.epoch`` ends as the last
    epoch run. Raises ``Interrupted`` after saving when ``stop`` was requested (between epochs, or mid-epoch)."""
    autotune = run.device.type == 'cuda' and not (run.rect or run.multi_scale or run.deterministic)
    scales = multi_scale_for(run, state) if run.multi_scale else None
    first_batch = (lambda imgs, targets: callbacks.fire('on_first_batch', run, state, imgs, targets))
    for epoch in range(state.epoch, run.epochs):
        state.epoch = epoch
        if stop_agreed(run, stop):  # between epochs (or before a resumed epoch's remaining batches)
            save_interrupted(run, state, stop)
        with run.phases.phase('train', epoch), cudnn_autotune(autotune):  # cuDNN autotuning: fixed shapes only
            begin_epoch(run, state)
            losses = train_one_epoch(run, state, state.loaders.train, should_stop=lambda: stop_agreed(run, stop),
                                     on_first_batch=first_batch, multi_scale=scales)
        first_batch, state.skip_batches = None, 0
        if state.stopped_after is not None:
            save_interrupted(run, state, stop)
        final = epoch == run.epochs - 1
        stop_early = end_epoch(run, state, callbacks, losses, final) if run.main else False
        if run.world_size > 1:  # every process must leave the loop together
            flag = [stop_early]
            torch.distributed.broadcast_object_list(flag, 0)
            stop_early = flag[0]
        if stop_early and not final:
            run.log(f'Early stopping: no improvement in {run.patience} epochs (best epoch {state.best_epoch + 1})')
            break


def begin_epoch(run, state):
    """Reseed, release frozen layers at --unfreeze-epoch (after checking them), close mosaic."""
    epoch, loaders = state.epoch, state.loaders
    seed_everything(run.seed + epoch)  # a resumed run replays the same epoch
    reseed_loader(loaders.train, (run.seed + epoch) * 1000 + max(run.rank, 0))
    if epoch == run.unfreeze_epoch:
        if run.main:
            verify_frozen(run, state)  # the frozen phase ends here: check it before the layers are released
        release_layers(run, state, epoch)
        state.model = wrap_ddp(run, state.model)  # DDP only syncs parameters that were trainable when wrapped
    if run.close_mosaic and epoch >= run.epochs - run.close_mosaic and loaders.dataset.mosaic:
        loaders.dataset.mosaic = False
        run.log(f'epoch {epoch + 1}: mosaic off for the last {run.close_mosaic} epochs')
    if hasattr(loaders.train.sampler, 'set_epoch'):
        loaders.train.sampler.set_epoch(epoch)


def end_epoch(run, state, callbacks, losses, final):
    """Validate (when --val-every says so), hand the results.csv row to the callbacks, save last/best. Returns
    True when early stopping says stop. An epoch that is not validated logs its train losses only and is never
    best or a stop."""
    epoch, validated = state.epoch, run.noval or is_validated(state.epoch, run.val_interval, run.epochs)
    result = None
    if validated:
        with run.phases.phase('val', epoch):
            result = validate_epoch(run, state, final)
    with run.phases.phase('checkpoint and plots', epoch):
        row = epoch_row(epoch, losses, result, state.optimizer.param_groups, validated=validated)
        callbacks.fire('on_epoch_end', run, state, row, result)
        improved, stop = track_best(run, state, result) if validated else (False, False)
        save_weights(run, state, callbacks, improved, force=final or stop)
    callbacks.fire('on_epoch_done', run, state, row, result)  # may raise to end the run (a pruned trial)
    return stop


def track_best(run, state, result):
    """A validated epoch's fitness against the best so far (kept in ``state``). Returns (improved, whether early
    stopping says stop: no improvement for --patience epochs)."""
    fit = result.fitness if result is not None else 0.0
    improved = fit >= state.best_fitness
    if improved:
        state.best_fitness, state.best_epoch = fit, state.epoch
    return improved, state.epoch - state.best_epoch >= run.patience


def make_checkpoint(run, state, epoch):
    ck = training_checkpoint(state, epoch, state.best_fitness, run.options, state.hyp, state.plan.state_dict())
    return {**ck, 'best_epoch': state.best_epoch}


def save_weights(run, state, callbacks, improved, force):
    """last.pt (every epoch unless --nosave, and always when ``force``), best.pt when ``improved``, and
    epoch{N}.pt at epochs 0, P, 2P, ... with --save-period P (as upstream; resumable, kept with their optimizer)."""
    epoch = state.epoch
    periodic = not run.nosave and run.save_period > 0 and epoch % run.save_period == 0
    if run.nosave and not force:
        return
    last = save_checkpoint(make_checkpoint(run, state, epoch), run.weights_dir / 'last.pt')
    if improved:
        copy_checkpoint(last, run.weights_dir / 'best.pt')  # the same checkpoint: linked, not written twice
    if periodic:
        copy_checkpoint(last, run.weights_dir / f'epoch{epoch}.pt')
    callbacks.fire('on_checkpoint_saved', run, state, last, improved)


def save_interrupted(run, state, stop):
    """Save last.pt at ``state.stopped_after`` batches into ``state.epoch`` (a resume replays the rest exactly)
    and raise Interrupted. Gradients of an unfinished accumulation are saved too."""
    epoch, batch, nb = state.epoch, state.stopped_after or state.skip_batches, len(state.loaders.train)
    last = run.weights_dir / 'last.pt' if run.main else None
    if run.main:
        ck = make_checkpoint(run, state, epoch - 1)  # 'epoch - 1' is the last complete one
        if batch:
            ck['resume_at'] = {'epoch': epoch, 'batch': batch, 'ni': state.ni, 'last_step': state.last_step,
                               'mloss': list(state.mloss)}
            ck['pending_grads'] = {n: p.grad.detach().clone() for n, p in state.bare_model.named_parameters()
                                   if p.grad is not None}
        save_checkpoint(ck, last)
    name = signal.Signals(stop.signum or signal.SIGINT).name
    where = f'epoch {epoch + 1}/{run.epochs} after batch {batch}/{nb}' if batch else f'before epoch {epoch + 1}'
    raise Interrupted(f'{name}: stopped {where}; saved {last}; resume with: python train.py --resume {last}',
                      stop.signum or signal.SIGINT)


def stop_agreed(run, stop):
    """Whether to stop now: this process's signal, or under DDP any process's (all must stop at the same step)."""
    if run.world_size == 1:
        return stop.requested()
    flag = torch.tensor([float(stop.requested())], device=run.device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def multi_scale_for(run, state):
    """--multi-scale: batch sizes around the checked image size, in steps of the model's largest stride."""
    return MultiScale(state.loaders.imgsz, max(int(state.bare_model.stride.max()), 32), run.seed)


# ---------------------------------------------------------------- validation
def eval_config(run, state, plots, **options):
    """The evaluation settings of this run's val split (crowd regions of an official JSON, VOC rule, classes)."""
    data = state.data
    return EvalConfig.for_data(data, run.single_cls, official_json(data, 'val', run.single_cls), confusion=plots,
                               **options)


def report_validation(run, state, result, config, verbose, plots):
    print_table(result, state.names, verbose)
    if config.voc_rule:
        print_voc(result, state.names, config.voc_rule, verbose)
    if plots:
        save_plots(result, state.names, run.save_dir)


def validate_epoch(run, state, final):
    """The EMA model on the val split (an ``EvalResult``), or None with --noval before the last epoch."""
    if run.noval and not final:
        return None
    plots = final and not run.noplots
    config = eval_config(run, state, plots, half=run.amp)
    observers = [BatchPlotter(run.save_dir, state.names)] if plots else ()
    result = evaluate(state.ema.ema, state.loaders.val, config, compute_loss=state.compute_loss, observers=observers)
    report_validation(run, state, result, config, verbose=final, plots=plots)
    return result


def zero_shot(run, state, callbacks):
    """A pretrained start, evaluated once before the first step: where the fine-tune begins (the transferred
    model, its class rows mapped from the checkpoint). Logged, and handed to the callbacks as the row of epoch -1
    (results.csv, TensorBoard's baseline/*)."""
    config = eval_config(run, state, plots=False)
    result = evaluate(state.ema.ema, state.loaders.val, config, compute_loss=state.compute_loss)
    print_table(result, state.names, verbose=False)
    run.log(f'Zero-shot (before the first step): mAP50 {result.map50:.3f}, mAP50-95 {result.map:.3f}; written to '
            f'results.csv as epoch {ZERO_SHOT_EPOCH}')
    callbacks.fire('on_epoch_end', run, state, epoch_row(ZERO_SHOT_EPOCH, (), result, []), result)
    return result


def final_validation(run, state):
    """best.pt (fused, as val.py loads it) on the val split, reported in full; its ``EvalResult`` or None."""
    best = run.weights_dir / 'best.pt'
    if not best.exists():
        return None
    plots = not run.noplots
    config = eval_config(run, state, plots, progress=HEADER)
    model = load_model(best, run.device, fuse=True)
    observers = [BatchPlotter(run.save_dir, state.names)] if plots else ()
    data = state.data  # a kept model (--keep-classes) has more classes than the data: mapped back
    to_data = data_class_postprocess(model.names, state.names, None if run.single_cls else data['class_map'],
                                     config.iou_thres, config.max_det, data.get('yaml_file'))
    result = evaluate(model, state.loaders.val, config, observers=observers, postprocess=to_data)
    report_validation(run, state, result, config, verbose=True, plots=plots)
    print_speed(result, state.loaders.imgsz)
    run.log(f'Results saved to {run.save_dir}: mAP50 {result.map50:.3f}, mAP50-95 {result.map:.3f}')
    return result


# ---------------------------------------------------------------- the frozen check and the run folder
def verify_frozen(run, state, files=()):
    """Every frozen tensor, in the model, its EMA and the EMA saved in ``files``, must equal its starting value
    bit for bit (the plan's SHA-256 fingerprints, taken before the first step). Main process only."""
    return state.plan.verify(state.bare_model, state.ema.ema, files, log=run.log)


def finish(run, state):
    """Strip the optimizer state from last/best and verify the frozen tensors, saved ones included."""
    last, best = run.weights_dir / 'last.pt', run.weights_dir / 'best.pt'
    files = [f for f in (last, best) if f.exists()]
    same = len(files) == 2 and os.path.samefile(last, best)  # best.pt linked to last.pt's checkpoint
    for f in files[:1] if same else files:
        strip_optimizer(f)
    if same:
        copy_checkpoint(last, best)  # the stripped checkpoint, linked again instead of stripped twice
    verify_frozen(run, state, files)


def prepare_run_dir(opt, main=True):
    """runs/train/exp{N}/weights (the resumed run's own folder on --resume) with opt.yaml; the folder, or None
    outside the main process."""
    if not main:
        return None
    save_dir = Path(opt.resume).parent.parent if opt.resume else increment_path(Path(opt.project) / opt.name,
                                                                               exist_ok=opt.exist_ok, mkdir=True)
    (save_dir / 'weights').mkdir(parents=True, exist_ok=True)
    write_options(save_dir, vars(opt))
    return save_dir

"""A training run's options: the one frozen ``TrainConfig``, which epochs are validated, and where the command
differs from upstream YOLOv5.

    run = TrainConfig.from_options(opt, device, rank, world_size, save_dir)   # built once, never changed
    run.epochs, run.batch_size, run.freeze, run.main, run.log(...)            # typed fields, not a dict

``--val-every K``: per-epoch validation is the largest cost outside training in a short CPU fine-tune. ``auto``
(the default) validates every epoch of a run of at most 10 epochs and every ``min(5, epochs // 10)`` epochs of a
longer one; ``--val-every 1`` validates every epoch. The last epoch is always validated (so is the zero-shot
evaluation of a ``--weights`` start). Early stopping and the choice of best.pt look at validated epochs only.

    k = val_interval('auto', epochs=20)                 # 2
    [e for e in range(20) if is_validated(e, k, 20)]    # 1, 3, ..., 19 (0-based: epochs 2, 4, ..., 20)

``upstream_differences``: where train.py's result would differ from upstream YOLOv5 v7.0 given the same command,
said in one line at the start of a run. Options that match upstream (epochs 100, 640 px, batch 16, SGD, patience
100, ...) say nothing; each note names the flag or hyp key that gives upstream's behaviour.
"""
import argparse
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

from utils.data.config import load_hyp
from utils.errors import InputError
from utils.runs import PhaseTimer

AUTO = 'auto'
DEMO_EPOCHS, STANDARD_EPOCHS = 24, 100  # train.py's presets: no --data (the shapes demo), and with --data
AUTO_EVERY_EPOCH_UP_TO = 10  # auto: runs of at most this many epochs validate every epoch
AUTO_LONGEST_INTERVAL = 5
SAVED_BEFORE_THE_FLAG = 1  # what a run saved without val_every (older than the flag) did: every epoch
FEATURE_CACHE_VIEWS = 4  # --cache-views default: augmented views per image of --cache features (provisional)


def parse_val_every(value):
    """``'auto'`` or a positive int from a flag value (text or int); ValueError saying what is expected."""
    text = '' if isinstance(value, bool) else str(value).strip().lower()
    if text == AUTO:
        return AUTO
    if text.isdecimal() and int(text) >= 1:
        return int(text)
    raise InputError(f"expected a positive integer or 'auto', got {value!r}")


def val_every_flag(text):
    """--val-every's argparse type (train.py, benchmarks/transfer.py): a bad value is argparse's one-line error
    naming the flag."""
    try:
        return parse_val_every(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def val_interval(val_every, epochs):
    """K, the interval in epochs between validations, for a ``--val-every`` value and a run of ``epochs``."""
    val_every = parse_val_every(val_every)
    if val_every != AUTO:
        return val_every
    if epochs <= AUTO_EVERY_EPOCH_UP_TO:
        return 1
    return min(AUTO_LONGEST_INTERVAL, epochs // 10)


def is_validated(epoch, interval, epochs):
    """Whether the 0-based ``epoch`` is validated: epochs K, 2K, ... counted from 1, and the last one."""
    return (epoch + 1) % interval == 0 or epoch == epochs - 1


def val_every_of(opt):
    """The run's --val-every (options saved before the flag existed: every epoch, as those runs did)."""
    return getattr(opt, 'val_every', SAVED_BEFORE_THE_FLAG)


def schedule_note(val_every, epochs):
    """The line a run prints at its start when it skips validations; None when every epoch is validated."""
    k = val_interval(val_every, epochs)
    if k == 1:
        return None
    given = f'--val-every auto for a {epochs}-epoch run' if parse_val_every(val_every) == AUTO else f'--val-every {k}'
    last = '' if epochs % k == 0 else ' and the last'
    return f'val: every {k} epochs{last} ({given}; --val-every 1 validates every epoch)'


def _quiet(*args, **kwargs):
    """The log of a process other than the main one: DDP workers print nothing."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run is given, typed and fixed for the whole run: train.py's options (the fields named after
    its flags), the process (device, rank, world size) and the output folder. ``options`` is the full option
    record as saved in opt.yaml and in every checkpoint (a resume reads it back). ``phases`` is the timer the
    run reports its wall time to (utils/runs.py)."""
    data: str
    epochs: int
    batch_size: int
    imgsz: int
    hyp: object = None  # a YAML path, a name in data/hyps/, or a dict (train.run(hyp={...}))
    weights: str = ''
    cfg: object = ''  # model YAML path or dict ('': the checkpoint's)
    resume: object = False
    freeze: tuple = ('0',)
    freeze_bn_stats: str = 'true'
    unfreeze_epoch: int = -1
    keep_classes: bool = False  # utils/freeze/keep.py
    optimizer: str = 'SGD'
    cos_lr: bool = False
    label_smoothing: float = 0.0
    patience: int = 100
    close_mosaic: int = 0
    seed: int = 0
    deterministic: bool = False
    single_cls: bool = False
    rect: bool = False
    multi_scale: bool = False
    image_weights: bool = False
    cache: object = 'auto'
    cache_views: int = FEATURE_CACHE_VIEWS
    workers: int = 2
    sync_bn: bool = False
    nosave: bool = False
    noval: bool = False
    noplots: bool = False
    noautoanchor: bool = False
    save_period: int = -1
    val_every: object = SAVED_BEFORE_THE_FLAG
    mlflow: bool = False
    device: torch.device = torch.device('cpu')
    rank: int = -1
    world_size: int = 1
    save_dir: Path = None  # runs/train/exp{N}; None outside the main process
    options: dict = field(default_factory=dict, repr=False)
    phases: PhaseTimer = field(default_factory=PhaseTimer, repr=False, compare=False)

    @classmethod
    def from_options(cls, opt, device, rank=-1, world_size=1, save_dir=None, phases=None):
        """The configuration of train.py's options ``opt`` (a Namespace, defaults filled) for this process."""
        given = vars(opt)
        known = {f.name: given[f.name] for f in fields(cls) if f.name in given and f.name not in ('device', 'phases')}
        known['freeze'] = tuple(str(f) for f in known.get('freeze', ('0',)))
        return cls(**known, device=device, rank=rank, world_size=world_size, save_dir=save_dir,
                   options={k: (str(v) if isinstance(v, Path) else v) for k, v in given.items()},
                   phases=phases or PhaseTimer())

    def with_batch_size(self, batch_size):
        """The same configuration with --batch-size chosen by AutoBatch (its options record says so too)."""
        return replace(self, batch_size=batch_size, options={**self.options, 'batch_size': batch_size})

    @property
    def main(self):
        """Whether this is the process that validates, logs and saves (rank -1 or 0)."""
        return self.rank in (-1, 0)

    @property
    def amp(self):
        return self.device.type == 'cuda'

    @property
    def log(self):
        return print if self.main else _quiet

    @property
    def weights_dir(self):
        return self.save_dir / 'weights' if self.save_dir is not None else None

    @property
    def val_interval(self):
        """--val-every K, resolved for this run's length."""
        return val_interval(self.val_every, self.epochs)


def upstream_differences(opt):
    """Notes for the options as given (before defaults are filled: None means 'not given')."""
    notes = []
    if opt.data is None:
        notes.append('no --data: the built-in shapes demo (upstream: coco128.yaml from yolov5s.pt)')
    elif opt.weights is None and not opt.resume:
        notes.append("no --weights: training from scratch (upstream starts from yolov5s.pt: add --weights "
                     "yolov5s.pt; --weights '' says scratch and silences this)")
    if opt.weights and opt.hyp is None and not opt.resume:
        notes.append('a pretrained start uses the fine-tune recipe data/hyps/hyp.transfer.yaml: its own LRs and '
                     'augmentation, the backbone at 0.1x the LR, an EMA of decay 0.98 from the first step (upstream: '
                     'hyp.scratch-low.yaml, EMA 0.9999 ramped over 2000 updates: --hyp hyp.scratch-low.yaml)')
    if opt.weights and not opt.resume and opt.freeze_bn_stats is None:
        notes.append("a pretrained start keeps every BatchNorm layer's statistics as loaded (upstream updates "
                     "them: --freeze-bn-stats false)")
    elif [str(f) for f in opt.freeze] != ['0'] and opt.freeze_bn_stats is None:
        notes.append("frozen layers keep their BatchNorm statistics (upstream lets them drift: "
                     "--freeze-bn-stats false)")
    if not opt.resume and not _hyp_sets(opt.hyp, 'warmup_share'):
        notes.append('the warm-up takes at most 10% of the run (upstream: warmup_epochs in full, at least 100 '
                     'iterations: hyp warmup_share: 1)')
    epochs = opt.epochs if opt.epochs is not None else (DEMO_EPOCHS if opt.data is None else STANDARD_EPOCHS)
    if not opt.noval and not opt.resume and parse_val_every(val_every_of(opt)) == AUTO and \
            val_interval(AUTO, epochs) > 1:
        notes.append(f'--val-every auto validates every {val_interval(AUTO, epochs)} epochs of this {epochs}-epoch '
                     f'run and the last (upstream: every epoch: --val-every 1)')
    if opt.image_weights:
        notes.append('--image-weights weighs classes by rarity only (upstream also by (1 - class mAP)^2)')
    return notes


def _hyp_sets(hyp, key):
    """Whether the --hyp given (a file, a name in data/hyps/ or a dict) sets ``key``; a bad file says so later."""
    if hyp is None or hyp == '':
        return False
    try:
        return key in (hyp if isinstance(hyp, dict) else load_hyp(hyp))
    except (InputError, OSError):
        return False


def format_differences(notes):
    """One line, or None when nothing differs."""
    return f"Differs from upstream YOLOv5: {'; '.join(notes)}" if notes else None

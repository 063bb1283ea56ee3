"""``train.py --val-every K``: which epochs of a run are validated.

Per-epoch validation is the largest cost outside training in a short CPU fine-tune. ``auto`` (the default)
validates every epoch of a run of at most 10 epochs and every ``min(5, epochs // 10)`` epochs of a longer one;
``--val-every 1`` validates every epoch. The last epoch is always validated (so is the zero-shot evaluation of a
``--weights`` start, in the trainer). Early stopping and the choice of best.pt look at validated epochs only.

    k = val_interval('auto', epochs=20)          # 2
    [e for e in range(20) if is_validated(e, k, 20)]   # 1, 3, ..., 19 (0-based: epochs 2, 4, ..., 20)
"""
import argparse
from utils.errors import InputError

AUTO = 'auto'
AUTO_EVERY_EPOCH_UP_TO = 10  # auto: runs of at most this many epochs validate every epoch
AUTO_LONGEST_INTERVAL = 5
SAVED_BEFORE_THE_FLAG = 1  # what a run saved without val_every (older than the flag) did: every epoch


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

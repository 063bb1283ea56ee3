"""Saving and loading this project's checkpoints.

A checkpoint is a plain dict of tensors and Python values, loadable with ``torch.load(weights_only=True)``:

    {'format': 'yolov5-freeze/1', 'yaml': model YAML dict, 'names': [...], 'nc': int,
     'model': state_dict,           # the trained model (fp32)
     'ema': state_dict or None,     # its exponential moving average, preferred for inference
     'ema_updates': int, 'epoch': int, 'best_fitness': float,
     'optimizer': state_dict or None, 'scaler': state_dict or None,
     'opt': dict, 'hyp': dict, 'date': str,
     # the freeze plan (utils/freeze/plan.py FreezePlan.state_dict):
     'frozen': [prefixes], 'frozen_sha256': {name: digest}, 'frozen_bn': [BatchNorm names],
     'freeze_bn_stats': bool, 'frozen_released': bool,
     # only in a last.pt saved by an interruption mid-epoch (utils/train/trainer.py): where to go on
     'resume_at': {'epoch': int, 'batch': batches of it done, 'ni': global iteration, 'last_step': int,
                   'mloss': [box, obj, cls] mean so far}, 'pending_grads': {name: gradient not yet applied}}

Random state is not stored: train.py reseeds every epoch from (--seed, epoch), so a resume replays it exactly.
Final checkpoints (``strip_optimizer``) keep only the EMA: 'model', 'optimizer' and 'scaler' are None.

Files are written atomically (``last.pt.<random>.partial``, fsync, rename), so a crash, a kill or a full disk
never leaves half a checkpoint: the previous one stays.

Official YOLOv5 ``.pt`` files (a pickled model) are read through ``utils/weights/official.py``'s allow-list unpickler;
``read_weights``/``load_model`` accept both kinds; ``utils/freeze/transfer.py`` starts a new model from either:

    model = load_model('yolov5n.pt')                         # official or ours, fp32, eval mode
    w = read_weights('yolov5m.pt')                           # {'yaml', 'state_dict', 'names', 'source'}
"""
import os
import secrets
import shutil
import tempfile
from copy import deepcopy
from datetime import datetime
from pathlib import Path

import torch

from utils.weights.official import describe_object
from utils.errors import InputError, WriteFailed, one_line

FORMAT = 'yolov5-freeze/1'
PARTIAL_SUFFIX = '.partial'  # a checkpoint being written; renamed over the target when complete


def save_checkpoint(ckpt, path):
    """Write ``ckpt`` to ``path`` atomically: a temporary file in the same folder, flushed to disk, then renamed
    over ``path``. A failed write (disk full, read-only folder) or a kill mid-write leaves the previous ``path``
    as it was; the failure raises ``WriteFailed`` naming the path and the cause."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + '.', suffix=PARTIAL_SUFFIX, dir=path.parent)
        with os.fdopen(fd, 'wb') as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            kept = f'the previous {path.name} is unchanged' if path.exists() else 'no file was written'
            raise WriteFailed(f'{path}: checkpoint not saved ({one_line(e)}); {kept}') from None
        raise
    return path


def copy_checkpoint(src, path):
    """``path`` made a copy of the complete checkpoint ``src`` (best.pt from last.pt), atomically as
    ``save_checkpoint``: a hard link (nothing is serialized or written again; safe because every checkpoint write
    renames a new file over its target, so a later write of ``src`` leaves ``path`` as it was), or where links are
    not possible a byte copy, flushed and renamed into place."""
    src, path = Path(src), Path(path)
    tmp = path.with_name(f'{path.name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}')
    try:
        try:
            os.link(src, tmp)
        except OSError:
            with open(src, 'rb') as f, open(tmp, 'wb') as g:
                shutil.copyfileobj(f, g)
                g.flush()
                os.fsync(g.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            kept = f'the previous {path.name} is unchanged' if path.exists() else 'no file was written'
            raise WriteFailed(f'{path}: checkpoint not saved ({one_line(e)}); {kept}') from None
        raise
    return path


def discard_partial_writes(folder):
    """Delete temporary files left in ``folder`` by a checkpoint write that was killed; returns their names."""
    found = sorted(Path(folder).glob(f'*.pt.*{PARTIAL_SUFFIX}'))
    for f in found:
        f.unlink(missing_ok=True)
    return [f.name for f in found]


def _load_plain(path, map_location='cpu'):
    """(object, None) from a weights_only load, or (None, error) when the file is not plain tensors and values."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True), None
    except Exception as e:  # noqa: BLE001 -- every failure is described by the caller
        return None, e


def load_checkpoint(path, map_location='cpu'):
    """Read one of our checkpoints safely (weights_only). Raises a one-line error for missing/foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: checkpoint not found')
    ckpt, error = _load_plain(path, map_location)
    if error is not None:
        from utils.weights.official import describe_pickle
        raise InputError(f'{path}: not a yolov5-freeze checkpoint: {describe_pickle(path)}')
    return _require_ours(path, ckpt, 'a yolov5-freeze')


def _require_ours(path, ckpt, label):
    """``ckpt`` if it carries our format tag, else a one-line ValueError saying what it is."""
    if isinstance(ckpt, dict) and ckpt.get('format') == FORMAT:
        return ckpt
    tag = ckpt.get('format') if isinstance(ckpt, dict) else None
    what = (f'format {tag!r} (this version reads {FORMAT!r})' if isinstance(tag, str) and tag.startswith(
        'yolov5-freeze') else describe_object(ckpt))
    raise InputError(f'{path}: not {label} checkpoint: {what}')


def training_checkpoint(learner, epoch, best_fitness, opt, hyp, freeze_state=None):
    """The dict train.py saves each epoch (see the module docstring): everything a resume needs. ``learner``
    holds model, ema, optimizer and scaler (``utils.train.setup.TrainState``); ``freeze_state`` is
    ``FreezePlan.state_dict()``."""
    m = getattr(learner.model, 'module', learner.model)  # DDP wrapper -> model
    return {
        'format': FORMAT, 'yaml': m.yaml, 'names': list(m.names), 'nc': m.yaml['nc'],
        'model': deepcopy(m.state_dict()), 'ema': deepcopy(learner.ema.ema.state_dict()),
        'ema_updates': learner.ema.updates, 'epoch': epoch, 'best_fitness': float(best_fitness),
        'optimizer': learner.optimizer.state_dict(), 'scaler': learner.scaler.state_dict(),
        'opt': {k: (str(v) if isinstance(v, Path) else v) for k, v in dict(opt).items()},
        'hyp': dict(hyp), 'frozen': [], 'frozen_sha256': {}, **(freeze_state or {}),
        'date': datetime.now().isoformat(timespec='seconds'),
    }


def strip_optimizer(path):
    """Make ``path`` a final checkpoint: drop the training-only state (model copy, optimizer, scaler), keep the EMA."""
    ckpt = load_checkpoint(path)
    ckpt.update(model=None, optimizer=None, scaler=None)
    return save_checkpoint(ckpt, path)


def find_last_checkpoint(project):
    """The most recently written ``last.pt`` under ``project`` (for a bare ``--resume``)."""
    found = sorted(Path(project).glob('**/last.pt'), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f'--resume: no last.pt under {project}')
    return found[-1]


def read_weights(path):
    """Weights to build or start a model from, from our checkpoints or official YOLOv5 files.

    Returns {'yaml': model dict, 'state_dict': {name: fp32 tensor}, 'names': [...], 'source': 'ours'|'official'}.
    Ours give the EMA when present. Official files are unpickled with an allow-list (``utils/weights/official.py``).
    Anything else (empty, truncated, a plain state_dict, another tool's model) is a one-line ValueError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: weights file not found')
    ckpt, error = _load_plain(path)
    if error is not None:  # not plain tensors: an official pickle, another tool's, or a damaged file
        from utils.weights.official import read_official
        w = read_official(path)
        return {'yaml': w['yaml'], 'state_dict': w['state_dict'], 'names': w['names'], 'source': 'official'}
    ckpt = _require_ours(path, ckpt, 'a YOLOv5')
    state = ckpt['ema'] if ckpt.get('ema') is not None else ckpt['model']
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    nc = int(ckpt['yaml']['nc'])
    names = list(ckpt.get('names') or [str(i) for i in range(nc)])
    return {'yaml': ckpt['yaml'], 'state_dict': state, 'names': names, 'source': 'ours'}


def model_from_weights(weights, path=''):
    """Build our ``Model`` from ``read_weights`` output and load its tensors exactly (fp32, eval mode)."""
    from models.yolo import build_model  # a kept model (--keep-classes) rebuilds its frozen heads too
    try:
        model = build_model(weights['yaml'])
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise InputError(f'{path}: cannot rebuild the model from its YAML ({e})') from None
    try:
        model.load_state_dict(weights['state_dict'])
    except RuntimeError as e:
        raise InputError(f'{path}: weights do not fit the model rebuilt from its YAML '
                         f'({str(e).strip().splitlines()[-1].strip()[:200]})') from None
    model.names = list(weights['names'])
    return model.eval()


def load_model(path, device='cpu', fuse=False):
    """Load a model for inference from one of our checkpoints or an official YOLOv5 ``.pt`` (fp32, eval).

    ``fuse``: ready to run fast (val.py, detect.py, the trainer's final validation): BatchNorm folded into the
    convolutions, no parameter needing a gradient, and the fast path on (models/fastpath.py), which on CPU runs all
    layers but Detect in channels_last order (oneDNN's faster convolutions; equal to NCHW up to float rounding)."""
    model = model_from_weights(read_weights(path), path)
    if fuse:
        with torch.no_grad():  # keep the folded weights leaf tensors
            model.fuse()
        model.requires_grad_(False).set_frozen_fast_path()
    return model.to(device).eval()

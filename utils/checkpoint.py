"""Saving and loading this project's checkpoints.

A checkpoint is a plain dict of tensors and Python values, loadable with ``torch.load(weights_only=True)``:

    {'format': 'yolov5-freeze/1', 'yaml': model YAML dict, 'names': [...], 'nc': int,
     'model': state_dict,           # the trained model (fp32)
     'ema': state_dict or None,     # its exponential moving average, preferred for inference
     'ema_updates': int, 'epoch': int, 'best_fitness': float,
     'optimizer': state_dict or None, 'scaler': state_dict or None,
     'opt': dict, 'hyp': dict, 'rng': dict or None, 'frozen': [prefixes], 'date': str}

Files are written atomically (temporary file + rename), so a crash never leaves half a checkpoint.
"""
import os
import tempfile
from pathlib import Path

import torch

FORMAT = 'yolov5-freeze/1'


def save_checkpoint(ckpt, path):
    """Write ``ckpt`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + '.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(ckpt, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path, map_location='cpu'):
    """Read one of our checkpoints safely (weights_only). Raises a one-line error for missing/foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'{path}: checkpoint not found')
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle errors are long; keep the first line
        raise ValueError(f'{path}: not a yolov5-freeze checkpoint ({str(e).strip().splitlines()[0][:200]})') from None
    if not isinstance(ckpt, dict) or ckpt.get('format') != FORMAT:
        raise ValueError(f"{path}: not a yolov5-freeze checkpoint (no '{FORMAT}' format tag)")
    return ckpt


def model_from_checkpoint(ckpt, prefer_ema=True):
    """Rebuild the ``Model`` stored in a checkpoint dict (fp32, eval mode, names set)."""
    from models.yolo import Model  # lazy: keeps this module importable without building models
    model = Model(ckpt['yaml'])
    state = ckpt.get('ema') if prefer_ema and ckpt.get('ema') is not None else ckpt['model']
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    model.names = list(ckpt.get('names') or model.names)
    return model.eval()


def load_model(path, device='cpu', fuse=False):
    """Load a model for inference from one of our checkpoints (official YOLOv5 files: see issue #7)."""
    model = model_from_checkpoint(load_checkpoint(path))
    if fuse:
        model.fuse()
    return model.to(device).eval()

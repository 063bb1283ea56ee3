"""Saying in a few words what a ``.pt`` file is when it is not a checkpoint we can load.

Used only on error paths, so that ``--weights``, ``--resume``, val and detect answer a zero-byte, truncated or
foreign file with one line naming the file and what it is (a plain state_dict, a torchvision model, an
Ultralytics YOLOv8 file, ...) instead of a loader's traceback. Nothing here unpickles anything.
"""
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

STATE_DICT_KEYS = ('state_dict', 'model_state_dict', 'model', 'ema', 'net', 'weights')


def first_line(error):
    """The first line of an exception's text (loaders write paragraphs), at most 160 characters."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return (lines[0] if lines else type(error).__name__)[:160]


def _is_state_dict(obj):
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def describe_object(obj):
    """What a plain (weights_only-loadable) object that is not one of our checkpoints is."""
    if _is_state_dict(obj):
        return (f'a plain state_dict ({len(obj)} tensors, first {next(iter(obj))!r}) with no model YAML to '
                f'rebuild the model from')
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            if _is_state_dict(obj.get(key)):
                return (f"another tool's checkpoint: a state_dict of {len(obj[key])} tensors under {key!r}, "
                        f'no model YAML to rebuild the model from')
        keys = ', '.join(repr(k) for k in list(obj)[:5]) + (', ...' if len(obj) > 5 else '')
        return f'a dict without model weights (keys {keys})' if obj else 'an empty dict'
    return f'a saved {type(obj).__name__}, not a checkpoint'


def describe_unreadable(path, error):
    """Why ``path`` could not be loaded at all: empty, truncated, damaged or not a PyTorch file."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return 'an empty file (0 bytes)'
    with open(path, 'rb') as f:
        head = f.read(64)
    if head.startswith(b'PK\x03\x04'):  # torch.save's zip archive
        if not zipfile.is_zipfile(path):
            return f'truncated: the zip archive torch.save writes ends early ({size:,} bytes, no directory)'
        return f'a damaged PyTorch zip archive ({first_line(error)})'
    if head[:1] == b'\x80':  # a pickle: the legacy (pre-1.6) torch format
        text = str(error).lower()
        if isinstance(error, EOFError) or 'eof' in text or 'truncated' in text:
            return f'truncated: a legacy PyTorch pickle that ends early ({size:,} bytes)'
        return f'a damaged legacy PyTorch pickle ({first_line(error)})'
    if all(32 <= b < 127 or b in b'\t\r\n' for b in head):
        return f'not a PyTorch file (it starts with text {head[:24].decode()!r})'
    return f'not a PyTorch file ({first_line(error)})'


def describe_refused(name, inside_official=False):
    """What a pickle naming the refused global ``name`` is; ``inside_official``: found within a YOLOv5 model."""
    if not inside_official and name.startswith('ultralytics.'):
        return (f'an Ultralytics (YOLOv8-style) checkpoint, its pickle names {name}: refused, only official '
                f'YOLOv5 v1.0-v7.0 files and our own are read')
    if not inside_official and name.startswith('torchvision.'):
        return f'a pickled torchvision model ({name}), not a YOLOv5 detector: refused'
    return (f'refused to load, the pickle names {name}, which is not a known YOLOv5 or torch class '
            f'(the file may contain code)')

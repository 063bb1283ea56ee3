"""Run folders (runs/train/exp, exp2, ...), device selection and CUDA modes shared by the scripts."""
import contextlib
import glob
import os
import re
import stat
from pathlib import Path

import torch
from utils.errors import InputError


def increment_path(path, exist_ok=False, mkdir=False):
    """``runs/train/exp`` -> itself if free (or ``exist_ok``), else the next free ``exp2``, ``exp3``, ...

    With ``mkdir`` the folder is claimed atomically: each candidate is created with ``mkdir`` that fails if it
    exists, so processes started at the same moment with the same --project/--name get distinct folders."""
    path = Path(path)
    if exist_ok:
        if mkdir:
            path.mkdir(parents=True, exist_ok=True)
        return path
    while True:
        candidate = _next_free(path)
        if not mkdir:
            return candidate
        candidate.parent.mkdir(parents=True, exist_ok=True)
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:  # another process claimed it between our look and our mkdir: look again
            continue


def _next_free(path):
    if not os.path.lexists(path):
        return path
    stem, suffix = (path.with_suffix(''), path.suffix) if path.is_file() else (path, '')
    taken = [int(m.group(1)) for p in path.parent.glob(f'{glob.escape(stem.name)}*')
             if (m := re.fullmatch(re.escape(stem.name) + r'(\d+)' + re.escape(suffix), p.name))]
    return Path(f'{stem}{max(taken + [1]) + 1}{suffix}')


class UniqueStems:
    """Output file stems unique within one run: a second 'img' from another folder becomes 'img_2'."""

    def __init__(self):
        self.by_key = {}

    def __call__(self, key, stem):
        key = str(key)
        if key not in self.by_key:
            taken, unique, k = set(self.by_key.values()), stem, 2
            while unique in taken:
                unique, k = f'{stem}_{k}', k + 1
            self.by_key[key] = unique
        return self.by_key[key]


def is_writable_dir(folder):
    """A folder we may write into: it exists, and is writable by its mode bits too (root ignores permissions,
    so read-only shared data would otherwise be written into)."""
    folder = Path(folder)
    return folder.is_dir() and os.access(folder, os.W_OK) and bool(folder.stat().st_mode & stat.S_IWUSR)


def select_device(device=''):
    """'' (CUDA 0 if available, else CPU), 'cpu', '0', '0,1' or 'cuda:0' -> torch.device. Clear error if absent."""
    spec = str(device).strip().lower().replace('cuda:', '')
    if spec in ('', 'cuda'):
        return torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')
    if spec == 'cpu':
        return torch.device('cpu')
    if not re.fullmatch(r'\d+(,\d+)*', spec):
        raise InputError(f"--device '{device}': expected 'cpu', a CUDA index like '0', or a list like '0,1'")
    if not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available here (use --device cpu)")
    first = int(spec.split(',')[0])
    if first >= torch.cuda.device_count():
        raise InputError(f'--device {device}: only {torch.cuda.device_count()} CUDA device(s) present')
    return torch.device(f'cuda:{first}')


def init_distributed(device=''):
    """(device, rank, world_size) from torch.distributed.run's environment; (device, -1, 1) without DDP."""
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    rank = int(os.environ.get('RANK', -1))
    local_rank = int(os.environ.get('LOCAL_RANK', -1))
    device = select_device(device)
    if world_size > 1:
        if device.type == 'cuda':
            device = torch.device('cuda', local_rank)
            torch.cuda.set_device(device)
        torch.distributed.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    return device, rank, world_size


def configure_determinism(deterministic):
    """``--deterministic``: deterministic algorithms wherever PyTorch has them (cuBLAS workspace, cuDNN without
    autotuning). ``warn_only``: an op with no deterministic kernel is named in a warning rather than stopping the run.
    Call before the first CUDA computation. Without the flag nothing changes."""
    if not deterministic:
        return
    os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')  # read when cuBLAS starts
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True


@contextlib.contextmanager
def cudnn_autotune(enabled):
    """cuDNN benchmark mode inside the block: it times the kernels for each new input shape once and keeps the
    fastest, which pays off only when shapes repeat (training at a fixed size, not rect val). Restored after."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before

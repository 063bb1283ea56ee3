"""Run folders (runs/train/exp, exp2, ...), device selection, CUDA modes and the C allocator's setting shared by the
scripts, and where a run's wall time goes (``PhaseTimer``, below)."""
import contextlib
import ctypes
import glob
import os
import re
import stat
import time
from contextlib import contextmanager
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


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)


def keep_freed_memory():
    """Tell glibc's malloc to keep freed memory in this process (trim above 1 GiB, mmap only above 32 MiB), as
    jemalloc and tcmalloc do. By default it hands a forward's freed tensors back to the OS and page-faults them in
    again on the next forward, by heuristics that depend on what ran before: 10-30 MB per image for yolov5n at 640
    px, where keeping it ran 1.21x faster (benchmarks/allocator.py). For processes that run many forwards and
    steps (train.py, detect.py, val.py); a user's own ``MALLOC_*`` settings win. True where set (glibc), False
    elsewhere."""
    if any(k.startswith('MALLOC_') for k in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc: macOS, Windows
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, 1 << 30)) and bool(mallopt(M_MMAP_THRESHOLD, 32 << 20))


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


# ---------------------------------------------------------------- phases of a run
# Where a run's wall time goes: a small timer of named phases, passed through the trainer.
#
#     phases = PhaseTimer.since_process_start()    # 'imports' = process start until now (None off Linux)
#     with phases.phase('scans and caches'):
#         ...
#     with phases.phase('train', epoch=3):         # per-epoch phases are summed, and kept per epoch
#         ...
#     print(phases.summary())                      # one line: wall time, then each phase's total
#     print(phases.table())                        # the full breakdown, one row per epoch
#
# Phases never overlap (a phase opened inside another is not allowed), so their sum is at most the wall time;
# the rest of the wall time is reported as 'other'.


def seconds_since_process_start(clock=time.clock_gettime):
    """Seconds since this process started (Linux /proc), or None where that cannot be read."""
    try:
        fields = open('/proc/self/stat').read().rsplit(')', 1)[1].split()
        started = int(fields[19]) / os.sysconf('SC_CLK_TCK')  # field 22: start time, clock ticks after boot
        return max(clock(time.CLOCK_BOOTTIME) - started, 0.0)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


class PhaseTimer:
    """Totals of named phases (in first-seen order) and, for phases given an ``epoch``, their per-epoch values."""

    def __init__(self, clock=time.perf_counter, already=0.0):
        self.clock = clock
        self.start = clock() - already  # wall time counts from the process start when ``already`` is given
        self.totals = {}
        self.per_epoch = {}  # name -> {epoch: seconds}
        self._open = None

    @classmethod
    def since_process_start(cls):
        """A timer whose wall time starts with the process; the time before now is the 'imports' phase."""
        before = seconds_since_process_start()
        timer = cls(already=before or 0.0)
        if before is not None:
            timer.add('imports', before)
        return timer

    def add(self, name, seconds, epoch=None):
        self.totals[name] = self.totals.get(name, 0.0) + seconds
        if epoch is not None:
            by_epoch = self.per_epoch.setdefault(name, {})
            by_epoch[epoch] = by_epoch.get(epoch, 0.0) + seconds

    @contextmanager
    def phase(self, name, epoch=None):
        if self._open is not None:
            raise RuntimeError(f"phase '{name}' opened inside phase '{self._open}'")
        self._open, t = name, self.clock()
        try:
            yield
        finally:
            self._open = None
            self.add(name, self.clock() - t, epoch)

    def wall(self):
        return self.clock() - self.start

    def other(self, wall=None):
        """Wall time in no phase (set-up between phases, logging, teardown so far)."""
        return max((self.wall() if wall is None else wall) - sum(self.totals.values()), 0.0)

    def summary(self):
        """One line: 'Time: 58.1 s = imports 2.1 + ... + other 0.4'; per-epoch phases say over how many epochs."""
        wall = self.wall()
        parts = []
        for name, s in self.totals.items():
            n = len(self.per_epoch.get(name, ()))
            parts.append(f'{name} {s:.1f}' + (f' ({n} ep)' if n > 1 else ''))
        parts.append(f'other {self.other(wall):.1f}')
        return f'Time: {wall:.1f} s = ' + ' + '.join(parts)

    def as_dict(self):
        wall = self.wall()
        return {'wall_s': wall, 'totals_s': dict(self.totals), 'other_s': self.other(wall),
                'per_epoch_s': {k: {str(e): s for e, s in v.items()} for k, v in self.per_epoch.items()}}

    def table(self):
        """The full breakdown: each phase's total and share of the wall time, then per-epoch phases epoch by epoch."""
        wall = self.wall()
        lines = [f"{'phase':<22}{'seconds':>9}{'share':>8}"]
        for name, s in [*self.totals.items(), ('other', self.other(wall)), ('wall time', wall)]:
            lines.append(f'{name:<22}{s:>9.2f}{100 * s / max(wall, 1e-9):>7.1f}%')
        if self.per_epoch:
            names = list(self.per_epoch)
            epochs = sorted({e for v in self.per_epoch.values() for e in v})
            lines.append(f"{'epoch':<8}" + ''.join(f'{n:>18}' for n in names))
            for e in epochs:
                lines.append(f'{e:<8}' + ''.join(f'{self.per_epoch[n].get(e, 0.0):>18.2f}' for n in names))
        return '\n'.join(lines)

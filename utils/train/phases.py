"""Where a run's wall time goes: a small timer of named phases, passed through the trainer.

    phases = PhaseTimer.since_process_start()    # 'imports' = process start until now (None off Linux)
    with phases.phase('scans and caches'):
        ...
    with phases.phase('train', epoch=3):         # per-epoch phases are summed, and kept per epoch
        ...
    print(phases.summary())                      # one line: wall time, then each phase's total
    print(phases.table())                        # the full breakdown, one row per epoch

Phases never overlap (a phase opened inside another is not allowed), so their sum is at most the wall time;
the rest of the wall time is reported as 'other'.
"""
import os
import time
from contextlib import contextmanager


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

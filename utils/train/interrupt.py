"""Ctrl-C and SIGTERM during training: the first signal asks the run to stop at the next safe point, a second
one ends the process at once.

    with StopOnSignal(log=print) as stop:
        for batch in batches:
            step(batch)
            if stop.requested():     # the trainer saves a resumable last.pt, then raises Interrupted
                break

A "safe point" is the end of the current batch: the trainer saves the model, optimizer, EMA, the position in the
epoch and the gradients of an unfinished accumulation, so a resume continues exactly where the run stopped. At
once means ``os._exit``: nothing else runs, and the ``last.pt`` on disk (always written atomically) is the
previous complete one.
"""
import os
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopOnSignal:
    """Context manager that installs the two-stage SIGINT/SIGTERM handler in the main thread and restores the
    previous handlers on exit. ``requested()`` is True once a first signal arrived; ``signum`` says which."""

    def __init__(self, log=print):
        self.log, self.signum, self._previous = log, None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        return False

    def requested(self):
        return self.signum is not None

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signum is not None:  # the second signal: leave now, without running anything else
            os.write(2, f'\n{name} again: exiting now; the last complete last.pt stays valid\n'.encode())
            os._exit(128 + signum)
        self.signum = signum
        self.log(f'\n{name}: stopping after the current batch and saving a resumable last.pt '
                 f'(send {name} again to exit at once)')

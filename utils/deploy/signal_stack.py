"""Keep the calling thread's alternate signal stack across a native call that swaps it (Linux).

OpenVINO's CPU plugin, on CPUs with AMX, gives the thread that compiles a model a larger alternate signal stack of
its own, and when the model is freed it puts back the stack it found, if its own is still the current one. Free
two models in the order they were made and the thread is left on the first model's stack, already unmapped: the next
signal with a Python handler (CPython handles on the alternate stack; the DataLoader's SIGCHLD, a subprocess
ending) is written into unmapped or reused memory, and the process segfaults far from OpenVINO.

    with keep_signal_stack():
        compiled = core.compile_model(...)   # afterwards the thread is on its own stack again

Every model then finds, and restores, the caller's stack. Elsewhere than Linux this is a no-op.
"""
import ctypes
import sys
from contextlib import contextmanager


class _Stack(ctypes.Structure):  # Linux's stack_t (x86-64 and aarch64)
    _fields_ = [('ss_sp', ctypes.c_void_p), ('ss_flags', ctypes.c_int), ('ss_size', ctypes.c_size_t)]


def _sigaltstack():
    if not sys.platform.startswith('linux'):
        return None
    return getattr(ctypes.CDLL(None, use_errno=True), 'sigaltstack', None)


def _current(call):
    """This thread's stack_t, or None where sigaltstack is missing or fails."""
    stack = _Stack()
    return stack if call is not None and call(None, ctypes.byref(stack)) == 0 else None


def read_signal_stack():
    """(address, flags, size) of this thread's alternate signal stack; None where it cannot be read."""
    stack = _current(_sigaltstack())
    return None if stack is None else (stack.ss_sp or 0, stack.ss_flags, stack.ss_size)


@contextmanager
def keep_signal_stack():
    """Restore this thread's alternate signal stack (or its absence) when the block ends, even if it raises."""
    call = _sigaltstack()
    saved = _current(call)
    if saved is None:
        yield
        return
    saved.ss_flags &= ~1  # SS_ONSTACK is reported, never set
    try:
        yield
    finally:
        call(ctypes.byref(saved), None)

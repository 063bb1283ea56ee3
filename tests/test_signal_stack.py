"""utils/deploy/signal_stack.py: a native call that swaps the thread's alternate signal stack is undone (Linux)."""
import ctypes
import sys
import threading

import pytest

from utils.deploy.signal_stack import _Stack, _sigaltstack, keep_signal_stack, read_signal_stack

pytestmark = pytest.mark.skipif(_sigaltstack() is None, reason='sigaltstack is a Linux call here')
SS_DISABLE = 2


def swap_in(buffer):
    """What OpenVINO's plugin does on AMX CPUs: put the thread on a stack of its own."""
    new = _Stack(ctypes.cast(buffer, ctypes.c_void_p).value, 0, len(buffer))
    assert _sigaltstack()(ctypes.byref(new), None) == 0, ctypes.get_errno()


def test_the_callers_stack_comes_back_even_when_the_block_raises():
    before, buffer = read_signal_stack(), ctypes.create_string_buffer(256 * 1024)
    with keep_signal_stack():
        swap_in(buffer)
        assert read_signal_stack()[0] == ctypes.addressof(buffer)
    assert read_signal_stack() == before
    with pytest.raises(RuntimeError), keep_signal_stack():
        swap_in(buffer)
        raise RuntimeError
    assert read_signal_stack() == before


def test_a_thread_without_one_is_left_without_one():
    seen, buffer = {}, ctypes.create_string_buffer(256 * 1024)

    def run():
        seen['before'] = read_signal_stack()
        with keep_signal_stack():
            swap_in(buffer)
        seen['after'] = read_signal_stack()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen['before'][1] & SS_DISABLE and seen['after'] == seen['before']


def test_not_linux_is_a_no_op(monkeypatch):
    monkeypatch.setattr(sys, 'platform', 'darwin')
    assert read_signal_stack() is None
    with keep_signal_stack():
        pass

"""Stop requests: SIGTERM and SIGUSR1 raise ``Stopped`` in the main thread, as Ctrl-C raises
``KeyboardInterrupt``, so a stage stopped by ``kill``, ``scancel`` or its own Slurm time limit
unwinds like an interrupted one: temporary files are deleted, the arrays it submitted are
cancelled (``run.executors.slurm``) and what finished is kept for the rerun.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Stopped(KeyboardInterrupt):
    """The process was asked to stop by a signal (``signum``); handled like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class _StopOnce:
    """The handler: the first stop signal raises ``Stopped``; later ones are ignored, so a
    signal sent twice (by Slurm to the job and by DeepSeg.sh to its stage) cannot break off
    the clean-up the first one started."""

    def __init__(self) -> None:
        self.stopping = False

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        if self.stopping:
            return
        self.stopping = True
        raise Stopped(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGUSR1 raise ``Stopped``, and SIGINT raises
    ``KeyboardInterrupt`` even where the shell started this process with SIGINT ignored (a
    background command of a script, as DeepSeg.sh runs each stage). Main thread only: signal
    handlers can be set there alone; elsewhere the block changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = _StopOnce()
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def exit_status(exc: KeyboardInterrupt) -> int:
    """The shell's status for a process ended by this interruption: 128 + the signal."""
    return 128 + (exc.signum if isinstance(exc, Stopped) else signal.SIGINT)


def exit_with_parent(parent: int, every_s: float = 1.0) -> None:
    """In a pool's helper process: end it within ``every_s`` once ``parent`` (the process
    that started it) is gone. A parent killed with SIGKILL cannot tell its pool, whose
    processes would wait for work for ever, or go on with units that a rerun hands out again.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(1)  # as the parent was: at once, no clean-up (reruns sweep what is left)

    threading.Thread(target=watch, name="deepseg-parent-watch", daemon=True).start()

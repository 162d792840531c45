"""Stop requests by signal: SIGTERM (job schedulers, spot instances) and SIGINT (Ctrl-C).

While training runs, the first signal only sets a flag; the loop finishes the iteration in progress,
saves ``latest`` at that iteration boundary and raises :class:`TrainingStopped`, which the tool turns
into exit status 128 + signal (143 for SIGTERM, 130 for SIGINT). A second signal abandons the
iteration in progress at once: it raises a KeyboardInterrupt (so no ``except Exception`` on the way
can swallow it; nothing more is saved), which leaves the block as :class:`TrainingAbandoned`, a
TrainingStopped whose exit status is that of the second signal (a second SIGTERM is still 143).
Paddle installs its own handlers when it is imported (they abort with a stack dump), so these
handlers are installed after ``import paddle``, only around the loop, and the previous ones are put
back afterwards.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Dict, Optional

__all__ = ["TrainingStopped", "TrainingAbandoned", "StopOnSignal"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingStopped(Exception):
    """Training stopped cleanly at an iteration boundary because a signal asked for it.

    Attributes:
        signum: the signal number.
        exit_code: 128 + signum, what a shell reports for a process ended by that signal.
    """

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + int(signum)


class TrainingAbandoned(TrainingStopped):
    """A second signal abandoned the iteration in progress; ``latest`` is the last boundary checkpoint."""


class _SecondSignal(KeyboardInterrupt):
    """Raised by the handler on a second signal; carries its number out of the block."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


class StopOnSignal:
    """Context manager: SIGTERM/SIGINT set :attr:`signum` instead of ending the process.

    A second signal raises inside the block; it leaves the block as :class:`TrainingAbandoned`.
    Outside the main thread (where Python cannot install handlers) it does nothing and
    :attr:`installed` is False.
    """

    def __init__(self):
        self.signum: Optional[int] = None
        self.installed = False
        self._previous: Dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.signum is None:
            self.signum = signum
            return
        # A second signal abandons the iteration in progress (nothing is saved; `latest` stays the
        # last checkpoint written at a boundary).
        raise _SecondSignal(signum)

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
            self.installed = True
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        self._previous.clear()
        self.installed = False
        if isinstance(exc, _SecondSignal):
            name = signal.Signals(exc.signum).name
            raise TrainingAbandoned(exc.signum, f"second signal {name} ({self.name} first): stopped at once; "
                                                "resume from latest, the last checkpoint written at an "
                                                "iteration boundary") from None

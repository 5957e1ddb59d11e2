"""Hold shutdown signals back from the server during the drain, then give them back.

A server learns of SIGTERM in one of two ways, and the hold covers both with public APIs only:

* a ``signal.signal`` handler (uvicorn, gunicorn's uvicorn worker): the hold installs its own
  handler in its place and keeps what ``signal.getsignal`` returned;
* a ``loop.add_signal_handler`` callback (hypercorn, granian): asyncio and uvloop hear of the
  signal from the byte CPython writes to the descriptor registered with
  ``signal.set_wakeup_fd``, and no public API reads the loop's callback back. So the hold
  registers a descriptor of its own instead: the loop's callback stays registered, untouched,
  and only stops hearing of the held signals. The bytes of any other signal are passed on to
  the loop's descriptor at once, so its other handlers keep working.

Giving a signal back restores both layers and raises the signal again: the server's handler
sees it exactly as if it had just arrived, through whichever layer it uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Callable
from types import FrameType
from typing import Any

PythonHandler = Callable[[int, FrameType | None], Any]


class SignalHold:
    """The signals being held for one serving period (create, :meth:`install`, then give back).

    Arguments:
        signals: the signal numbers to hold.
        handler: the ``signal.signal`` handler that hears of a held signal.
    """

    def __init__(self, signals: tuple[int, ...], handler: PythonHandler) -> None:
        self.signals = signals
        self.handler = handler
        self._previous: dict[int, Any] = {}
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_fd = -1  # the event loop's wakeup descriptor, -1 when none was registered

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hold :attr:`signals` from now on (main thread only, from the running ``loop``)."""
        self._loop = loop
        for sig in self.signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self.handler)
        loop.add_reader(self._reader.fileno(), self._on_wakeup)
        self.claim()

    def claim(self) -> None:
        """Be the wakeup descriptor again if an event loop registered its own since.

        uvloop registers a fresh descriptor every time the loop starts running, and granian
        starts it once for lifespan start-up and again to serve.
        """
        ours = self._writer.fileno()
        current = signal.set_wakeup_fd(ours, warn_on_full_buffer=False)
        if current != ours:
            self._loop_fd = current

    def _on_wakeup(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            data = self._reader.recv(4096)
            others = bytes(sig for sig in data if sig and sig not in self.signals)
            if others:
                # Only to a descriptor that is still the loop's (claim() re-reads it).
                self.claim()
                self._pass_on(others)

    def _pass_on(self, data: bytes) -> None:
        if self._loop_fd != -1:
            # The loop's wakeup descriptor is non-blocking: a full pipe drops the bytes,
            # exactly as CPython does when it writes there itself.
            with contextlib.suppress(OSError):
                os.write(self._loop_fd, data)

    def give_back(self, signum: int | None = None) -> None:
        """Restore the server's handlers; with ``signum``, deliver that signal to them now."""
        wakeup_was_ours = self._restore_wakeup_fd()
        restored = self._restore_handlers()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._reader.fileno())
        self._reader.close()
        self._writer.close()
        if signum is None or signum not in restored:
            return
        if wakeup_was_ours:
            # Neither layer has heard of it yet: raising it again reaches both, once.
            signal.raise_signal(signum)
            return
        # An event loop took the wakeup descriptor back before the signal arrived, so it
        # already heard of the signal; only the Python-level handler is still owed it.
        previous = restored[signum]
        if callable(previous):
            previous(signum, None)
        elif previous == signal.SIG_DFL:
            signal.raise_signal(signum)

    def _restore_wakeup_fd(self) -> bool:
        ours = self._writer.fileno()
        # Through -1, so that a descriptor the loop may have closed since is never set again.
        current = signal.set_wakeup_fd(-1)
        if current == ours:
            if self._loop_fd != -1:
                signal.set_wakeup_fd(self._loop_fd)
            return True
        if current != -1:
            signal.set_wakeup_fd(current)
        return False

    def _restore_handlers(self) -> dict[int, Any]:
        restored: dict[int, Any] = {}
        for sig, previous in self._previous.items():
            # None: a handler installed outside Python, which signal.signal cannot put back.
            if previous is not None and signal.getsignal(sig) == self.handler:
                signal.signal(sig, previous)
                restored[sig] = previous
        self._previous.clear()
        return restored


__all__ = ["SignalHold"]

"""The observers every layer shares: one wrapper of send (the response) and one of receive.

:func:`on_response_start` is the one way a prodkit layer touches a response: its start hook
runs on the response's ``http.response.start`` message as it passes the layer, on the observer
the layer was handed as ``send`` (or on a new one), so no layer wraps ``send`` once more.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prodkit._core.types import Message, RawHeaders, Receive, Send

#: A start hook: called with the ``http.response.start`` message; it may change the headers.
StartHook = Callable[[Message], None]


class ResponseObserver:
    """Wrap an ASGI ``send`` to record what the response was, as it goes out.

    One instance per request. It forwards every message unchanged (after the start hooks had a
    chance to change the headers) and records:

    * ``status`` and ``headers`` of ``http.response.start`` as sent, after the start hooks ran
      (``started`` becomes true);
    * ``body_bytes``: body bytes the server accepted, counted after each ``send`` returns,
      so a client that disconnected mid-stream is not credited with bytes it never got;
    * ``complete``: the last body chunk (``more_body`` false) was sent, and ``finished_at``
      the :func:`time.perf_counter` reading when its ``send`` returned (durations of streamed
      responses end there, not at the headers nor after background tasks);
    * with ``capture_limit`` set, the body itself while it stays within that many bytes
      (``overflowed`` says it did not, and the partial body is dropped).

    One observer can serve several middlewares: a middleware handed an observer that has not
    started as its ``send`` sees exactly the messages it would see through an observer of its
    own, so prodkit's middlewares observe through it (:meth:`shared`) and add their start hooks
    to it (:meth:`add_start_hook`) instead of wrapping ``send`` once more per layer.

    Arguments:
        send: the downstream ``send`` callable.
        on_start: called with the ``http.response.start`` message before it is forwarded;
            it may change the message's headers (see :func:`prodkit.asgi.message_headers`).
        capture_limit: keep the body in memory up to this many bytes; ``None`` keeps nothing.
    """

    __slots__ = (
        "_chunks",
        "_hooks",
        "_send",
        "body_bytes",
        "capture_limit",
        "complete",
        "finished_at",
        "headers",
        "overflowed",
        "started",
        "status",
    )

    def __init__(
        self,
        send: Send,
        *,
        on_start: StartHook | None = None,
        capture_limit: int | None = None,
    ) -> None:
        self._send = send
        self._hooks: list[StartHook] | None = None if on_start is None else [on_start]
        self._chunks: list[bytes] | None = None if capture_limit is None else []
        self.capture_limit = capture_limit
        self.status: int | None = None
        self.headers: RawHeaders = []
        self.started = False
        self.complete = False
        self.finished_at: float | None = None
        self.overflowed = False
        self.body_bytes = 0

    @classmethod
    def shared(cls, send: Send) -> ResponseObserver:
        """``send`` itself when it is an observer that has not started, else a new observer.

        Whatever the app sends through the result reaches ``send`` unchanged, so a middleware
        that passes it on as the app's ``send`` records what an observer of its own would.
        """
        if type(send) is cls and not send.started:
            return send
        return cls(send)

    def add_start_hook(self, hook: StartHook) -> None:
        """Call ``hook`` with the ``http.response.start`` message before it is forwarded.

        For a middleware that was handed this observer as its ``send``: hooks added later run
        first (they belong to layers nearer the app), and all of them run before the
        ``on_start`` given at construction, just as nested ``send`` wrappers would.
        """
        if self._hooks is None:
            self._hooks = [hook]
        else:
            self._hooks.insert(0, hook)

    def take_start(self, message: Message) -> None:
        """Run the start hooks on ``message`` and record its status and headers.

        What :meth:`__call__` does with a start message before forwarding it; a subclass that
        forwards it later, or sends another in its place, calls it when the message arrives
        (the hooks belong to the layers it came through, as their ``send`` wrappers would).
        """
        hooks = self._hooks
        if hooks is not None:
            for hook in hooks:
                hook(message)
        self.status = int(message["status"])
        headers = message.get("headers")
        self.headers = headers if type(headers) is list else list(headers or ())

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            # take_start(), inlined: this runs for every response.
            hooks = self._hooks
            if hooks is not None:
                for hook in hooks:
                    hook(message)
            self.status = int(message["status"])
            headers = message.get("headers")
            self.headers = headers if type(headers) is list else list(headers or ())
            self.started = True
            await self._send(message)
        elif kind == "http.response.body":
            body: bytes = message.get("body", b"")
            more = message.get("more_body", False)
            chunks = self._chunks
            if chunks is not None and not self.overflowed:
                if self.body_bytes + len(body) > self.capture_limit:  # type: ignore[operator]
                    self.overflowed = True
                    chunks.clear()
                elif body:
                    chunks.append(body)
            await self._send(message)
            self.body_bytes += len(body)
            if not more:
                self.complete = True
                self.finished_at = time.perf_counter()
        else:
            await self._send(message)

    @property
    def body(self) -> bytes:
        """The captured body (empty unless ``capture_limit`` was set and not exceeded)."""
        return b"".join(self._chunks or ())


def on_response_start(send: Send, hook: StartHook) -> ResponseObserver:
    """Have ``hook`` change the response's start message as it leaves through ``send``.

    The one way prodkit's layers add or change response headers. When ``send`` is an observer
    whose response has not started (the request id layer hands one down, the errors layer is
    one), the hook joins it: no wrapper per layer. Otherwise a new observer wraps ``send``.
    Either way, pass the result to the app as its ``send``: the hook runs on the start message
    the app sends through it, after the hooks of layers nearer the app and before those of
    layers further out, exactly as nested ``send`` wrappers would; a response that a layer
    further out sends itself never meets the hook.

    Arguments:
        send: the ``send`` the layer was called with.
        hook: called with the ``http.response.start`` message; it may change its headers
            (:func:`prodkit.asgi.message_headers`).
    """
    if isinstance(send, ResponseObserver) and not send.started:
        # add_start_hook(), inlined: every layer that touches a response comes here.
        hooks = send._hooks
        if hooks is None:
            send._hooks = [hook]
        else:
            hooks.insert(0, hook)
        return send
    return ResponseObserver(send, on_start=hook)


class ReceiveWatcher:
    """Wrap an ASGI ``receive`` to note the body bytes received and whether the client left.

    One instance per request; pass it to the app in place of ``receive``. ``body_bytes`` counts
    ``http.request`` body bytes as the app reads them; ``disconnected`` turns true on
    ``http.disconnect``.
    """

    __slots__ = ("_receive", "body_bytes", "disconnected")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.body_bytes = 0
        self.disconnected = False

    @classmethod
    def shared(cls, receive: Receive) -> ReceiveWatcher:
        """``receive`` itself when it is a watcher, else a new watcher around it.

        A watcher handed down unchanged notes exactly what the app reads, so the middlewares
        between it and the app need no watcher of their own.
        """
        return receive if type(receive) is cls else cls(receive)

    async def __call__(self) -> Message:
        message = await self._receive()
        kind = message["type"]
        if kind == "http.request":
            self.body_bytes += len(message.get("body", b""))
        elif kind == "http.disconnect":
            self.disconnected = True
        return message


__all__ = ["ReceiveWatcher", "ResponseObserver", "StartHook", "on_response_start"]

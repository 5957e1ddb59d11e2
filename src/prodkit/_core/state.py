"""One request's facts, worked out once and shared by every prodkit layer: :class:`RequestState`.

The outermost prodkit layer puts one :class:`RequestState` on the scope under
:data:`REQUEST_STATE_KEY`; the layers inside read it instead of working the same facts out
again (the start time, the request's header fields, the route template, the client address,
what the response came to). A layer used alone makes it itself (:func:`request_state`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from prodkit._core.observer import ReceiveWatcher, ResponseObserver
from prodkit._core.types import Scope

#: The one scope key prodkit's layers share a request's facts under: a :class:`RequestState`.
REQUEST_STATE_KEY = "prodkit.request"

#: Status recorded when the client went away before any response started (nginx's convention).
CLIENT_CLOSED_REQUEST = 499


class RequestHeaders(dict[bytes, bytes]):
    """A request's header fields, read once: the first value of each name, by name.

    A dictionary (``headers.get(b"origin")``, ``b"range" in headers``) made from one list of
    raw ASGI headers (lower-case names) in one pass; :meth:`get_all` has every value of a
    name. :meth:`reads` tells whether a scope still carries that very list, unchanged in
    length.

    Make it with :meth:`read`.
    """

    __slots__ = ("_size", "_source")

    _source: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...]
    _size: int

    @classmethod
    def read(cls, raw: Iterable[tuple[bytes, bytes]]) -> RequestHeaders:
        """The fields of ``raw``, the scope's ``headers``, in one pass."""
        items = raw if type(raw) is list or type(raw) is tuple else list(raw)
        fields = cls(items)  # dict's own constructor: no Python code per field
        size = len(items)
        if len(fields) != size:
            # A name appears twice: the first field line is the one to keep.
            fields = cls(reversed(items))
        fields._source = items
        fields._size = size
        return fields

    def reads(self, raw: object) -> bool:
        """Whether these are the fields of ``raw`` (the same list, of the same length)."""
        return raw is self._source and len(raw) == self._size

    def get_all(self, name: bytes) -> list[bytes]:
        """Every value of header ``name``, in order (field lines are not merged)."""
        if len(self) == self._size:  # no name appears twice: no list to walk
            value = self.get(name)
            return [] if value is None else [value]
        return [value for key, value in self._source if key == name]


class RequestState:
    """What prodkit's layers know about one request, worked out once (``scope["prodkit.request"]``).

    One per request, made by the outermost prodkit layer (or by any layer that finds none:
    :func:`request_state`). Middleware authors read it with :func:`request_state` instead of
    adding keys of their own to the scope.

    Attributes:
        start: the :func:`time.perf_counter` reading when the outermost layer saw the request;
            durations count from here.
        root_path: the scope's ``root_path`` at that moment (routers extend it as they mount).
        request_id: the request's id, once :class:`~prodkit.RequestIdMiddleware` chose it.
        route: the route template the access log and the metrics labelled the request with,
            once the first of them resolved it.
        error: the exception behind the response: one that :class:`~prodkit.ErrorMiddleware`
            answered, or one that was raised through a recording layer.
        idempotency_status: ``"created"`` while the handler runs under an idempotency claim.
        idempotency_claim: the :class:`~prodkit.idempotency.IdempotencyClaim` the handler
            runs under (read it with :func:`prodkit.idempotency.current_claim`).
        status: the response's status, once the first recording layer finished (an
            unanswered request that the client left is 499, one that failed 500).
        end: the :func:`time.perf_counter` reading when the response's last body chunk was
            sent (or when the request ended without one).
        response_bytes: body bytes the server accepted.
        request_bytes: request body bytes the app read.
    """

    __slots__ = (
        "_client",
        "_finished_by",
        "_headers",
        "_route_key",
        "end",
        "error",
        "idempotency_claim",
        "idempotency_status",
        "request_bytes",
        "request_id",
        "response_bytes",
        "root_path",
        "route",
        "start",
        "status",
    )

    def __init__(self, scope: Scope) -> None:
        self.start = time.perf_counter()
        self.root_path: str = scope.get("root_path", "")
        self.request_id: str | None = None
        self.route: str | None = None
        self._route_key: tuple[Any, int] | None = None
        self.error: BaseException | None = None
        self.idempotency_status: str | None = None
        self.idempotency_claim: Any = None
        self.status: int | None = None
        self.end: float | None = None
        self.response_bytes = 0
        self.request_bytes = 0
        self._headers: RequestHeaders | None = None
        self._client: tuple[Any, Any, Any, Any] | None = None
        # The id of the observer the outcome was taken from, not the observer: the observer
        # holds the server's ``send`` (bound to the object that holds this scope), and a
        # reference back would make every request a reference cycle for the garbage collector.
        self._finished_by: int | None = None

    def headers(self, scope: Scope) -> RequestHeaders:
        """The request's header fields, read once while the scope's header list stays the same.

        A layer in between that replaced or extended ``scope["headers"]`` (an authenticating
        middleware setting ``X-User-Id``, say) is seen: the fields are read again from it.
        """
        raw = scope.get("headers") or ()
        found = self._headers
        if found is None or found._source is not raw or len(raw) != found._size:
            found = self._headers = RequestHeaders.read(raw)
        return found

    def remembered_client(self, key: object, scope: Scope) -> tuple[bool, Any]:
        """``(True, address)`` when the client address was resolved under ``key`` for this
        scope's peer and headers; ``(False, None)`` otherwise (see :meth:`remember_client`)."""
        memo = self._client
        if (
            memo is not None
            and (memo[0] is key or memo[0] == key)
            and memo[1] is scope.get("client")
            and memo[2] is self.headers(scope)
        ):
            return True, memo[3]
        return False, None

    def remember_client(self, key: object, scope: Scope, address: Any) -> None:
        """Keep ``address``, resolved under ``key`` (the resolver's settings), for this scope."""
        self._client = (key, scope.get("client"), self.headers(scope), address)

    def finish(
        self,
        observer: ResponseObserver,
        watcher: ReceiveWatcher | None,
        error: BaseException | None,
    ) -> None:
        """Record what the response came to, as ``observer`` saw it; once per observer.

        The first recording layer to finish (the innermost) works the outcome out; an outer
        one that recorded through the same observer finds it done.
        """
        if self._finished_by == id(observer):  # both callers hold it: the id is its own
            return
        self._finished_by = id(observer)
        if error is not None:
            self.error = error
        error = self.error
        status = observer.status
        if status is None:
            disconnected = watcher is not None and watcher.disconnected
            if disconnected or isinstance(error, asyncio.CancelledError):
                status = CLIENT_CLOSED_REQUEST
            else:
                status = 500
        self.status = status
        self.end = observer.finished_at or time.perf_counter()
        self.response_bytes = observer.body_bytes
        self.request_bytes = 0 if watcher is None else watcher.body_bytes


def request_state(scope: Scope) -> RequestState:
    """The request's :class:`RequestState`: the one on the scope, or a new one put there."""
    state = scope.get(REQUEST_STATE_KEY)
    if state is None:
        state = scope[REQUEST_STATE_KEY] = RequestState(scope)
    return state


__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "REQUEST_STATE_KEY",
    "RequestHeaders",
    "RequestState",
    "request_state",
]

"""Building blocks for writing your own ASGI middleware the way prodkit's are written.

Application code rarely needs this module; it is for middleware authors. It holds the ASGI type
aliases, raw-header helpers, the request's state, the shared response observer (one wrapper of
``send`` that every layer records through) and :func:`on_response_start`, request-body helpers,
route templates, client-address resolution, caller functions, problem+json rendering, the
circuit breaker, and the one function that makes the Redis client every prodkit Redis store
can share. Everything here is as stable as :mod:`prodkit` itself. See
``docs/stack.md`` for a worked example.

**The request's state.** prodkit's layers share what they know about a request through one
object on one scope key: a :class:`RequestState` under :data:`REQUEST_STATE_KEY`
(``"prodkit.request"``), made by the outermost prodkit layer. It holds the start time, the
request's header fields read once (:meth:`RequestState.headers`), the request id, the route
template, the client address and, once the response is done, its ``status``, ``error`` and
sizes. Read it with :func:`request_state` (which makes it when your middleware runs without
an outer prodkit layer) rather than adding keys of your own to the scope. It replaces the
scope keys earlier versions used between layers; ``"prodkit.request_id"`` and
``"prodkit.idempotency_status"`` are still set, deprecated.

**Touching a response.** To add or change response headers, give the app
``on_response_start(send, hook)`` as its ``send``: ``hook(message)`` changes the
``http.response.start`` message as it passes your layer, on the observer an outer layer
handed down (no wrapper of ``send`` per layer).
"""

from __future__ import annotations

from prodkit._core.addresses import ClientAddressResolver, normalize_ip, parse_ip
from prodkit._core.body import read_body, replay_receive
from prodkit._core.breaker import BreakerState, CircuitBreaker
from prodkit._core.callers import Caller, caller_from_authorization, caller_from_header
from prodkit._core.drivers import REDIS_URL_FORMS, redis_client
from prodkit._core.headers import (
    append_vary,
    get_all_headers,
    get_header,
    get_list_header,
    message_headers,
    remove_header,
    scope_header,
    set_default_header,
    set_header,
)
from prodkit._core.observer import (
    ReceiveWatcher,
    ResponseObserver,
    StartHook,
    on_response_start,
)
from prodkit._core.problems import (
    PROBLEM_CONTENT_TYPE,
    encode_problem,
    problem_dict,
    problem_type,
    send_problem,
)
from prodkit._core.routing import (
    UNMATCHED_ROUTE,
    RouteResolver,
    RouteTable,
    normalise_template,
    route_path,
    route_template,
    route_template_before,
)
from prodkit._core.state import (
    REQUEST_STATE_KEY,
    RequestHeaders,
    RequestState,
    request_state,
)
from prodkit._core.types import ASGIApp, Message, RawHeaders, Receive, Scope, Send

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "REDIS_URL_FORMS",
    "REQUEST_STATE_KEY",
    "UNMATCHED_ROUTE",
    "ASGIApp",
    "BreakerState",
    "Caller",
    "CircuitBreaker",
    "ClientAddressResolver",
    "Message",
    "RawHeaders",
    "Receive",
    "ReceiveWatcher",
    "RequestHeaders",
    "RequestState",
    "ResponseObserver",
    "RouteResolver",
    "RouteTable",
    "Scope",
    "Send",
    "StartHook",
    "append_vary",
    "caller_from_authorization",
    "caller_from_header",
    "encode_problem",
    "get_all_headers",
    "get_header",
    "get_list_header",
    "message_headers",
    "normalise_template",
    "normalize_ip",
    "on_response_start",
    "parse_ip",
    "problem_dict",
    "problem_type",
    "read_body",
    "redis_client",
    "remove_header",
    "replay_receive",
    "request_state",
    "route_path",
    "route_template",
    "route_template_before",
    "scope_header",
    "send_problem",
    "set_default_header",
    "set_header",
]

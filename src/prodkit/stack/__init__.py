"""The recommended stack, as data: an ordered list of layers, built into an app.

A :class:`Stack` is a list of :class:`Layer` objects, outermost first, that a service can read,
reorder, extend or trim before :meth:`Stack.build` wraps its app in them, plus the parts that
live across requests (stores, one shared Redis client, the shutdown coordinator), built once and
closed by one :meth:`Stack.aclose`. :meth:`Stack.recommended` returns prodkit's recommended list;
:func:`recommended_stack` builds it around an app in one call.

The recommended order, outermost first, and why (``docs/stack.md`` says more):

- ``request_id`` — so every later log line, header and error carries it;
- ``access_log``, ``metrics``, ``metrics_endpoint`` — outside everything that can reject, so a
  429, 503 or 409 is logged and counted exactly once;
- ``security_headers``, ``cors`` — outside errors and limits, so a browser can read a 429 or 503;
- ``errors`` — every failure below becomes a problem;
- ``health`` (``/livez``, ``/readyz``, ``/healthz``) and ``shutdown`` — probes answer before
  shedding and rate limiting, so they are never throttled;
- ``request_timeout`` — a request body must arrive within ``body_timeout_seconds`` (else 408),
  and is read before the limits below count the request, so slow clients cannot take every slot;
- ``concurrency_limit``, ``rate_limit``;
- ``idempotency`` — outside the cache;
- ``cache`` — safe methods only (when ``cache_routes`` are given);
- the app.

The built stack sits in a :class:`~prodkit.lifecycle.LifespanMiddleware` that runs the start-up
hooks (the PostgreSQL schema, say) and calls :meth:`Stack.aclose` at lifespan shutdown.
"""

from __future__ import annotations

from prodkit.stack._layer import Layer
from prodkit.stack._recommended import DEFAULT_MAX_CONCURRENCY, DEFAULT_RATE_LIMIT
from prodkit.stack._stack import Stack, idempotency_store_for, recommended_stack

__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_RATE_LIMIT",
    "Layer",
    "Stack",
    "idempotency_store_for",
    "recommended_stack",
]

"""prodkit's private core: what every concern shares and nothing else.

ASGI types, header helpers, the shared response observer, problem+json, route templates, client
addresses, callers, the request context, metric get-or-create, and the circuit breaker. The core
imports no concern; every concern imports only the core (import-linter keeps it so). Middleware
authors outside prodkit use :mod:`prodkit.asgi`, which re-exports the stable part.
"""

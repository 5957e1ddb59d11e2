"""CORS (the Fetch standard's CORS protocol) that refuses unsafe configurations up front.

Differences from Starlette's ``CORSMiddleware``, on purpose:

* ``"*"`` together with credentials is a :class:`~prodkit.ConfigurationError`, not a silent
  "reflect every origin" (which lets any site read authenticated responses);
* subdomains are allowed only by an explicit pattern, ``https://*.example.com``, matched on
  DNS-label boundaries: never ``https://evil-example.com`` nor ``https://a.example.com.evil.io``;
* the ``null`` origin (sandboxed iframes, ``file:`` pages, some redirects) is refused unless
  listed literally;
* ``Vary: Origin`` is sent on every response whose headers depend on the ``Origin``, including
  responses to requests without one, so a shared cache never serves one origin's answer to
  another;
* a refused preflight is a 403 problem without CORS headers (the browser then blocks the
  request), and prodkit's own headers are exposed by default.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypedDict, Unpack
from urllib.parse import urlsplit

from prodkit._core import options as valid
from prodkit._core.exceptions import ConfigurationError
from prodkit._core.headers import TOKEN, append_vary, get_list_header, message_headers
from prodkit._core.observer import on_response_start
from prodkit._core.options import build_options
from prodkit._core.problems import send_problem
from prodkit._core.state import request_state
from prodkit._core.types import ASGIApp, Message, Receive, Scope, Send

CORS_PREFLIGHT_REJECTED = "CORS_PREFLIGHT_REJECTED"

#: Response headers a browser script may read by default: the ones prodkit sets.
DEFAULT_EXPOSE_HEADERS = (
    "X-Request-ID",
    "Idempotency-Status",
    "Retry-After",
    "RateLimit",
    "RateLimit-Policy",
    "X-Cache",
    "Age",
    "ETag",
    "Location",
)
DEFAULT_ALLOW_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
DEFAULT_ALLOW_HEADERS = (
    "Accept",
    "Accept-Language",
    "Content-Language",
    "Content-Type",
    "Authorization",
    "Idempotency-Key",
    "X-Request-ID",
    "traceparent",
)

_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*\Z")
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}\Z|\[[0-9a-f:.]+\]\Z")
_WILDCARD = re.compile(r"([a-z][a-z0-9+.-]*)://\*\.([^/:]+)(:[0-9]{1,5})?\Z")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_MAX_ORIGIN = 2048


def _normalise_origin(entry: str) -> str:
    """Canonical ``scheme://host[:port]`` of a configured origin, or a ConfigurationError."""
    parts = urlsplit(entry)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"allow_origins: {entry!r} has an invalid port") from exc
    host = (parts.hostname or "").lower()
    if (
        not _SCHEME.match(scheme)
        or not host
        or parts.path
        or parts.query
        or parts.fragment
        or parts.username is not None
        or ("[" not in parts.netloc and not _HOST.match(host))
    ):
        raise ConfigurationError(
            f"allow_origins: {entry!r} is not an origin; write scheme://host[:port] with no "
            "path or trailing slash, e.g. 'https://app.example.com', or "
            "'https://*.example.com' for its subdomains"
        )
    if ":" in host:
        host = f"[{host}]"
    if port is None or _DEFAULT_PORTS.get(scheme) == port:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


class OriginMatcher:
    """Decide whether a request's ``Origin`` is allowed.

    Arguments:
        origins: exact origins (``https://app.example.com``), subdomain patterns
            (``https://*.example.com``: any subdomain at any depth, same scheme and port, not
            the bare domain), ``"null"`` (only if you mean it) and ``"*"`` (any origin).
            A comma-separated string (``CORS_ORIGINS``) is split.
    """

    __slots__ = ("allow_all", "allow_null", "exact", "pattern")

    def __init__(self, origins: Iterable[str] | str) -> None:
        if isinstance(origins, str):
            origins = origins.split(",")
        self.allow_all = False
        self.allow_null = False
        exact: set[str] = set()
        patterns: list[str] = []
        for raw in origins:
            entry = raw.strip()
            if not entry:
                continue
            if entry == "*":
                self.allow_all = True
            elif entry == "null":
                self.allow_null = True
            elif "*" in entry:
                patterns.append(self._pattern(entry))
            else:
                exact.add(_normalise_origin(entry))
        self.exact = frozenset(exact)
        self.pattern = re.compile("|".join(patterns)) if patterns else None

    @staticmethod
    def _pattern(entry: str) -> str:
        found = _WILDCARD.match(entry.lower())
        domain = found.group(2) if found else ""
        if found is None or not _HOST.match(domain) or "." not in domain:
            raise ConfigurationError(
                f"allow_origins: {entry!r}: the only wildcard form is a subdomain pattern such "
                "as 'https://*.example.com' (scheme, '*.', then a domain with at least one dot)"
            )
        scheme, port = found.group(1), found.group(3) or ""
        if port and _DEFAULT_PORTS.get(scheme) == int(port[1:]):
            port = ""
        return f"(?:{re.escape(scheme)}://(?:{_LABEL}\\.)+{re.escape(domain)}{re.escape(port)})"

    def matches(self, origin: str) -> bool:
        """Whether ``origin`` (the header's exact text) is allowed."""
        if self.allow_all:
            return True
        if origin in self.exact:
            return True
        if origin == "null":
            return self.allow_null
        if self.pattern is None or len(origin) > _MAX_ORIGIN:
            return False
        return self.pattern.fullmatch(origin) is not None


def _tokens(name: str, values: Iterable[str] | str, *, upper: bool) -> tuple[str, ...]:
    """HTTP tokens (or ``"*"``), stripped and without repeats; methods upper-cased."""
    tokens = [
        value if value == "*" else valid.http_token(name, value)
        for value in valid.string_list(name, values)
    ]
    return tuple(dict.fromkeys(token.upper() if upper else token for token in tokens))


@dataclass(frozen=True, kw_only=True, slots=True)
class CORSOptions:
    """The options of :class:`CORSMiddleware`, checked when made.

    The lists take a list or a comma-separated string (``CORS_ORIGINS``); they are kept as
    tuples, stripped, without repeats, methods upper-cased.

    Attributes:
        allow_origins: see :class:`OriginMatcher` (a list or a ``CORS_ORIGINS`` string).
        allow_methods: methods a preflight may ask for (default
            :data:`DEFAULT_ALLOW_METHODS`; ``"*"``: any).
        allow_headers: request headers a preflight may ask for (default
            :data:`DEFAULT_ALLOW_HEADERS`; ``"*"``: any); CORS-safelisted ones are always
            allowed by browsers.
        allow_credentials: send ``Access-Control-Allow-Credentials: true`` (cookies, HTTP auth;
            default ``False``). Cannot be combined with ``"*"`` in ``allow_origins`` or
            ``expose_headers``.
        expose_headers: response headers scripts may read (default
            :data:`DEFAULT_EXPOSE_HEADERS`: the ones prodkit sets).
        max_age: seconds a browser may cache a preflight answer (default ``600``; browsers cap
            it: 2 h in Chrome).

    Raises:
        ConfigurationError: on an unsafe or malformed option, saying what to write instead.
    """

    allow_origins: Iterable[str] | str
    allow_methods: Iterable[str] | str = DEFAULT_ALLOW_METHODS
    allow_headers: Iterable[str] | str = DEFAULT_ALLOW_HEADERS
    allow_credentials: bool = False
    expose_headers: Iterable[str] | str = DEFAULT_EXPOSE_HEADERS
    max_age: int = 600

    def __post_init__(self) -> None:
        origins = valid.string_list("allow_origins", self.allow_origins)
        if not origins:
            raise ConfigurationError(
                "allow_origins is empty; list the origins to allow (CORS_ORIGINS) or leave "
                "CORSMiddleware out"
            )
        matcher = OriginMatcher(origins)  # refuses what is not an origin or a pattern
        if self.allow_credentials and matcher.allow_all:
            raise ConfigurationError(
                "allow_origins '*' with allow_credentials=True would let every site read "
                "authenticated responses; list the origins (or 'https://*.example.com') instead"
            )
        expose = _tokens("expose_headers", self.expose_headers, upper=False)
        if self.allow_credentials and "*" in expose:
            raise ConfigurationError(
                "expose_headers '*' is taken literally by browsers when credentials are "
                "allowed; list the headers instead"
            )
        valid.non_negative_int("max_age", self.max_age, example=600)
        object.__setattr__(self, "allow_origins", origins)
        object.__setattr__(
            self, "allow_methods", _tokens("allow_methods", self.allow_methods, upper=True)
        )
        object.__setattr__(
            self, "allow_headers", _tokens("allow_headers", self.allow_headers, upper=False)
        )
        object.__setattr__(self, "expose_headers", expose)


class CORSKeywords(TypedDict, total=False):
    """:class:`CORSOptions`'s fields as keywords of :class:`CORSMiddleware`.

    ``allow_origins`` is required unless ``options`` is given: leaving both out is a
    ``TypeError`` when the middleware is made.
    """

    allow_origins: Iterable[str] | str
    allow_methods: Iterable[str] | str
    allow_headers: Iterable[str] | str
    allow_credentials: bool
    expose_headers: Iterable[str] | str
    max_age: int


class CORSMiddleware:
    """Answer CORS preflights and add CORS response headers for allowed origins.

    It belongs outside the error, load-shedding and rate-limit middlewares, so that a browser
    can read their 500, 503 and 429 responses (and their ``Retry-After``).

    Example::

        import asyncio

        import httpx
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        from prodkit import CORSMiddleware

        async def funds(request):
            return JSONResponse([])

        app = CORSMiddleware(
            Starlette(routes=[Route("/funds", funds)]),
            allow_origins=["https://app.example.com", "https://*.example.org"],
        )

        async def main():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                sub = await client.get("/funds", headers={"Origin": "https://eu.example.org"})
                fake = await client.get("/funds", headers={"Origin": "https://example.org.evil.io"})
                asks = {"Origin": "https://evil.io", "Access-Control-Request-Method": "DELETE"}
                preflight = await client.options("/funds", headers=asks)
            assert sub.headers["Access-Control-Allow-Origin"] == "https://eu.example.org"
            assert "Access-Control-Allow-Origin" not in fake.headers  # the browser hides it
            assert preflight.status_code == 403  # refused before the app is reached
            assert preflight.json()["code"] == "CORS_PREFLIGHT_REJECTED"

        asyncio.run(main())

    Arguments:
        app: the ASGI app to wrap.
        options: the options as one object (default: made from ``keywords``).
        **keywords: :class:`CORSOptions`'s fields by name, instead of ``options``:
            ``CORSMiddleware(app, allow_origins=["https://app.example.com"])``.

    Raises:
        ConfigurationError: on an unsafe or malformed option, saying what to write instead.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        options: CORSOptions | None = None,
        **keywords: Unpack[CORSKeywords],
    ) -> None:
        self.app = app
        self.options = options = build_options(CORSOptions, options, keywords)
        self.origins = OriginMatcher(options.allow_origins)
        self.allow_credentials = credentials = options.allow_credentials
        methods, headers = tuple(options.allow_methods), tuple(options.allow_headers)
        self._any_method = "*" in methods
        self._methods = frozenset(methods)
        self._any_header = "*" in headers
        self._headers = frozenset(h.lower() for h in headers)
        # "*" without credentials does not depend on the Origin; anything else does.
        self._star = self.origins.allow_all and not credentials
        self._simple: list[tuple[bytes, bytes]] = []
        if credentials:
            self._simple.append((b"access-control-allow-credentials", b"true"))
        if options.expose_headers:
            expose = ", ".join(options.expose_headers).encode()
            self._simple.append((b"access-control-expose-headers", expose))
        self._methods_value = ", ".join(m for m in methods if m != "*").encode()
        self._max_age = str(options.max_age).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = request_state(scope).headers(scope)
        origin = headers.get(b"origin")
        if origin is not None and len(headers.get_all(b"origin")) > 1:
            origin = b"\x00"  # several Origin fields: never an allowed origin
        methods = headers.get_all(b"access-control-request-method")
        request_method = methods[-1] if methods else None
        if origin is not None and request_method is not None and scope["method"] == "OPTIONS":
            await self._preflight(scope, send, origin, request_method)
            return
        if origin is None:
            if self._star:  # "*" does not depend on the Origin: nothing to add or vary
                await self.app(scope, receive, send)
                return
            await self.app(scope, receive, on_response_start(send, _vary_only))
            return

        allowed = self.origins.matches(origin.decode("latin-1"))
        if not allowed:
            await self.app(scope, receive, on_response_start(send, _vary_only))
            return
        added = [(b"access-control-allow-origin", b"*" if self._star else origin), *self._simple]
        vary = not self._star

        def add_cors(message: Message) -> None:
            headers = message_headers(message)
            if any(key.startswith(b"access-control-") for key, _ in headers):
                headers[:] = [h for h in headers if not h[0].startswith(b"access-control-")]
            headers.extend(added)
            if vary:
                append_vary(headers, "Origin")

        await self.app(scope, receive, on_response_start(send, add_cors))

    async def _preflight(
        self, scope: Scope, send: Send, origin: bytes, request_method: bytes
    ) -> None:
        vary = {"Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"}
        method = request_method.decode("latin-1").strip()
        requested = [
            h.lower() for h in get_list_header(scope["headers"], b"access-control-request-headers")
        ]
        refused = []
        if not self.origins.matches(origin.decode("latin-1")):
            refused.append("origin")
        # With "*" the request's own names are echoed back, so they must at least be tokens.
        if not TOKEN.match(method) or (
            not self._any_method and method.upper() not in self._methods
        ):
            refused.append(f"method {method[:32]!r}")
        bad_headers = [
            h
            for h in requested
            if not TOKEN.match(h) or (not self._any_header and h not in self._headers)
        ]
        if bad_headers:
            refused.append("headers " + ", ".join(repr(h[:64]) for h in bad_headers[:10]))
        if refused:
            await send_problem(
                send,
                403,
                CORS_PREFLIGHT_REJECTED,
                "CORS preflight refused: " + "; ".join(refused) + " not allowed.",
                headers=vary,
            )
            return
        headers: list[tuple[bytes, bytes]] = [
            (b"access-control-allow-origin", b"*" if self._star else origin),
            (
                b"access-control-allow-methods",
                method.encode("latin-1") if self._any_method else self._methods_value,
            ),
            (b"access-control-max-age", self._max_age),
        ]
        if self.allow_credentials:
            headers.append((b"access-control-allow-credentials", b"true"))
        if requested:
            headers.append((b"access-control-allow-headers", ", ".join(requested).encode()))
        headers.append((b"vary", vary["Vary"].encode()))
        headers.append((b"content-length", b"0"))
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def _vary_only(message: Message) -> None:
    """No CORS headers for this response (and none the app may have set), only ``Vary``."""
    headers = message_headers(message)
    if any(key.startswith(b"access-control-") for key, _ in headers):
        headers[:] = [h for h in headers if not h[0].startswith(b"access-control-")]
    append_vary(headers, "Origin")


__all__ = [
    "CORS_PREFLIGHT_REJECTED",
    "DEFAULT_ALLOW_HEADERS",
    "DEFAULT_ALLOW_METHODS",
    "DEFAULT_EXPOSE_HEADERS",
    "CORSKeywords",
    "CORSMiddleware",
    "CORSOptions",
    "OriginMatcher",
]

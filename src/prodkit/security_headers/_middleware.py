"""Security response headers with safe defaults; never overrides what the app set itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict, Unpack

from prodkit._core import options as valid
from prodkit._core.exceptions import ConfigurationError
from prodkit._core.headers import get_header, message_headers
from prodkit._core.observer import on_response_start
from prodkit._core.options import build_options
from prodkit._core.types import ASGIApp, Message, Receive, Scope, Send

#: Default policy for HTML responses: only same-origin resources, no plugins, no framing.
DEFAULT_CSP = (
    "default-src 'self'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'none'; object-src 'none'"
)
#: The shortest ``max-age`` the HSTS preload list accepts: one year.
_PRELOAD_MAX_AGE = 31_536_000


@dataclass(frozen=True, kw_only=True, slots=True)
class SecurityHeadersOptions:
    """The options of :class:`SecurityHeadersMiddleware`, checked when made.

    Pass ``None`` to a header's option to never send that header.

    Attributes:
        hsts_max_age: ``Strict-Transport-Security`` ``max-age`` in seconds (default
            ``31_536_000``, one year), or ``None`` for no HSTS.
        hsts_include_subdomains: the HSTS ``includeSubDomains`` directive (default ``True``).
        hsts_preload: the HSTS ``preload`` directive (default ``False``: only if you have
            submitted the domain to the preload list).
        hsts_https_only: send HSTS only over HTTPS (default ``True``; see
            :class:`SecurityHeadersMiddleware`).
        content_type_options: ``X-Content-Type-Options`` (default ``"nosniff"``).
        referrer_policy: ``Referrer-Policy`` (default ``"no-referrer"``: an API has no reason
            to leak URLs to third parties).
        frame_options: ``X-Frame-Options`` (default ``"DENY"``) for old browsers; modern ones
            follow the CSP's ``frame-ancestors``.
        content_security_policy: ``Content-Security-Policy`` for ``text/html`` responses only
            (default :data:`DEFAULT_CSP`; JSON is not rendered, so a CSP there protects
            nothing).
        cross_origin_opener_policy: ``Cross-Origin-Opener-Policy`` for HTML responses (default
            ``"same-origin"``).

    Raises:
        ConfigurationError: a header value that is empty or not printable ASCII on one line,
            a negative ``hsts_max_age``, or ``hsts_preload`` without what the preload list
            requires.
    """

    hsts_max_age: int | None = 31_536_000
    hsts_include_subdomains: bool = True
    hsts_preload: bool = False
    hsts_https_only: bool = True
    content_type_options: str | None = "nosniff"
    referrer_policy: str | None = "no-referrer"
    frame_options: str | None = "DENY"
    content_security_policy: str | None = DEFAULT_CSP
    cross_origin_opener_policy: str | None = "same-origin"

    def __post_init__(self) -> None:
        if self.hsts_max_age is not None:
            valid.non_negative_int("hsts_max_age", self.hsts_max_age, example=_PRELOAD_MAX_AGE)
        preloadable = self.hsts_max_age is None or (
            self.hsts_max_age >= _PRELOAD_MAX_AGE and self.hsts_include_subdomains
        )
        if self.hsts_preload and not preloadable:
            raise ConfigurationError(
                f"hsts_preload=True: the preload list requires hsts_max_age of at least "
                f"{_PRELOAD_MAX_AGE} and hsts_include_subdomains=True; write those, or "
                "hsts_preload=False"
            )
        for name in (
            "content_type_options",
            "referrer_policy",
            "frame_options",
            "content_security_policy",
            "cross_origin_opener_policy",
        ):
            value = getattr(self, name)
            if value is not None:
                valid.header_value(name, value)


class SecurityHeadersKeywords(TypedDict, total=False):
    """:class:`SecurityHeadersOptions`'s fields as keywords of :class:`SecurityHeadersMiddleware`."""

    hsts_max_age: int | None
    hsts_include_subdomains: bool
    hsts_preload: bool
    hsts_https_only: bool
    content_type_options: str | None
    referrer_policy: str | None
    frame_options: str | None
    content_security_policy: str | None
    cross_origin_opener_policy: str | None


class SecurityHeadersMiddleware:
    """Add HSTS, ``X-Content-Type-Options``, ``Referrer-Policy``, framing and CSP headers.

    A header the app already put on a response is left exactly as the app set it, so a route
    can relax (or tighten) any of them. Pass ``None`` to an option to never send that header.

    HSTS (RFC 6797) is sent only on responses to requests that arrived over HTTPS
    (``scope["scheme"] == "https"``): browsers ignore it over plain HTTP (section 8.1), and an
    HTTP deployment has no business pinning HTTPS. Behind a TLS-terminating proxy, make the
    server report the original scheme (uvicorn ``--proxy-headers --forwarded-allow-ips``) or
    set ``hsts_https_only=False`` when every client-facing hop is HTTPS.

    Example::

        import asyncio

        import httpx
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        from prodkit import SecurityHeadersMiddleware

        async def profile(request):  # this route relaxes one header: it is kept as set
            return JSONResponse({}, headers={"Referrer-Policy": "same-origin"})

        app = SecurityHeadersMiddleware(Starlette(routes=[Route("/profile", profile)]))

        async def main():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport) as client:
                secure = await client.get("https://api.example.com/profile")
                plain = await client.get("http://api.example.com/profile")
            hsts = secure.headers["Strict-Transport-Security"]
            assert hsts == "max-age=31536000; includeSubDomains"
            assert "Strict-Transport-Security" not in plain.headers  # HSTS over HTTPS only
            assert secure.headers["X-Content-Type-Options"] == "nosniff"
            assert secure.headers["Referrer-Policy"] == "same-origin"

        asyncio.run(main())

    Arguments:
        app: the ASGI app to wrap.
        options: the options as one object (default: made from ``keywords``).
        **keywords: :class:`SecurityHeadersOptions`'s fields by name, instead of ``options``:
            ``SecurityHeadersMiddleware(app, frame_options="SAMEORIGIN")``.

    Raises:
        ConfigurationError: an invalid option (see :class:`SecurityHeadersOptions`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        options: SecurityHeadersOptions | None = None,
        **keywords: Unpack[SecurityHeadersKeywords],
    ) -> None:
        self.app = app
        self.options = options = build_options(SecurityHeadersOptions, options, keywords)
        self._hsts: tuple[bytes, bytes] | None = None
        if options.hsts_max_age is not None:
            hsts = f"max-age={options.hsts_max_age}"
            if options.hsts_include_subdomains:
                hsts += "; includeSubDomains"
            if options.hsts_preload:
                hsts += "; preload"
            self._hsts = (b"strict-transport-security", hsts.encode())
        self._always = _present(
            (b"x-content-type-options", options.content_type_options),
            (b"referrer-policy", options.referrer_policy),
            (b"x-frame-options", options.frame_options),
        )
        self._html = _present(
            (b"content-security-policy", options.content_security_policy),
            (b"cross-origin-opener-policy", options.cross_origin_opener_policy),
        )
        # One header-adding function per scheme, built once: requests allocate nothing here.
        always = list(self._always)
        with_hsts = always if self._hsts is None else [*always, self._hsts]
        self._add_https = self._adder(with_hsts)
        self._add_http = self._adder(always if options.hsts_https_only else with_hsts)

    def _adder(self, added: list[tuple[bytes, bytes]]) -> Callable[[Message], None]:
        with_html = [*added, *self._html]
        html = bool(self._html)
        added_names = frozenset(name for name, _ in added)
        html_names = frozenset(name for name, _ in with_html)

        def add(message: Message) -> None:
            headers = message_headers(message)
            present = dict(headers)  # the names the response has, in one C-level pass
            extra, extra_names = added, added_names
            if html:
                if len(present) == len(headers):  # one field line per name: present has it
                    content_type = present.get(b"content-type") or b""
                else:
                    content_type = get_header(headers, b"content-type") or b""
                if content_type[:9].lower() == b"text/html":
                    extra, extra_names = with_html, html_names
            if present.keys().isdisjoint(extra_names):  # the app set none of them
                headers.extend(extra)
            else:
                headers.extend(item for item in extra if item[0] not in present)

        return add

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        add = self._add_https if scope.get("scheme") == "https" else self._add_http
        await self.app(scope, receive, on_response_start(send, add))


def _present(*headers: tuple[bytes, str | None]) -> list[tuple[bytes, bytes]]:
    """The headers whose value is not ``None``, encoded."""
    return [(name, value.encode()) for name, value in headers if value is not None]


__all__ = [
    "DEFAULT_CSP",
    "SecurityHeadersKeywords",
    "SecurityHeadersMiddleware",
    "SecurityHeadersOptions",
]

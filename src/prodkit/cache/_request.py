"""One read's cache facts: whether it may use the cache, its keys, and what it asked for."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from prometheus_client import Counter

from prodkit._core.callers import Caller
from prodkit._core.headers import get_all_headers
from prodkit._core.state import request_state
from prodkit._core.types import Scope
from prodkit.cache._entry import parse_cache_control
from prodkit.cache._rules import CacheRule, Route

Outcome = Literal["hit", "miss", "bypass", "error", "coalesced"]

_NO_DIRECTIVES: Mapping[str, str] = MappingProxyType({})
# Entry keys and tag keys of recent reads, so a repeated read does not parse and hash again;
# long URLs (and callers) are not remembered, which bounds the memo's memory.
_MEMO_SIZE = 4096
_MEMO_MAX_URL = 256

Keys = tuple[str, tuple[str, ...]]
Memo = tuple[str, str, bytes | None, str, bytes, str | None]


@dataclass(slots=True)
class CacheRequest:
    """Per-request cache facts (never stored on the middleware)."""

    route: Route
    rule: CacheRule
    scope: Scope
    base: str  # hex digest of method, route, path, query and caller
    tags: tuple[str, ...]  # tag version keys, path tag first
    if_none_match: bytes | None
    statuses: frozenset[int]
    ttl: float
    head: bool
    directives: Mapping[str, str]  # the request's Cache-Control
    shared_credentials: bool = False  # credentials on a shared route: RFC 9111 section 3.5
    versions: tuple[str, ...] | None = None  # tag versions read before the app runs
    fenced: bool = False  # a write to one of the tags is under way: store nothing
    unstorable: bool = False  # the last response for this key could not be stored
    vary_values: dict[tuple[str, ...], str] = field(default_factory=dict)

    @property
    def entry_key(self) -> str:
        """The store key of the entry (or of its vary record)."""
        return "e:{" + self.base + "}"

    @property
    def lock_key(self) -> str:
        """The store key of the single-flight lease."""
        return "l:{" + self.base + "}"

    def vary_digest(self, names: tuple[str, ...]) -> str:
        """A digest of this request's values of the header fields ``names``."""
        digest = self.vary_values.get(names)
        if digest is None:
            headers = self.scope.get("headers") or ()
            h = hashlib.sha256()
            for name in names:
                h.update(b", ".join(get_all_headers(headers, name.encode("latin-1"))))
                h.update(b"\0")
            digest = h.hexdigest()[:32]
            self.vary_values[names] = digest
        return digest

    def variant_key(self, names: tuple[str, ...]) -> str:
        """The store key of the variant this request selects among ``names``."""
        return self.entry_key + ":" + self.vary_digest(names)


class RequestReader:
    """Turns a scope on a cached route into a :class:`CacheRequest`, remembering recent keys."""

    __slots__ = ("_keys", "caller", "statuses")

    def __init__(self, caller: Caller | None, statuses: frozenset[int]) -> None:
        self.caller = caller
        self.statuses = statuses
        self._keys: dict[Memo, Keys] = {}

    def read(self, scope: Scope, route: Route) -> CacheRequest | Outcome:
        """Return the request's cache facts, or ``"bypass"`` when it must not use the cache."""
        rule = route.rule
        if rule is None:  # pragma: no cover - read routes always have a rule
            return "bypass"
        # The request's header fields, read once for every layer (the request state's).
        found = request_state(scope).headers(scope)
        credentials = b"authorization" in found or b"cookie" in found
        # RFC 9111 section 3.5: a shared cache keeps out of requests with credentials, unless
        # the route is keyed by caller (each caller's answers stay the caller's) or opted in.
        if credentials and not (rule.per_caller or rule.allow_credentials):
            return "bypass"
        if b"range" in found:
            return "bypass"  # partial content is not stored; let the app answer ranges
        caller_name: str | None = None
        if self.caller is not None and route.by_caller:  # the key or a tag names the caller
            caller_name = self.caller(scope)
        if rule.per_caller and caller_name is None:
            return "bypass"
        path: str = scope.get("path", "/")
        query: bytes = scope.get("query_string", b"")
        scheme: str = scope.get("scheme", "http")
        host = found.get(b"host")
        memo = (route.template, scheme, host, path, query, caller_name)
        keys = self._keys.get(memo)
        if keys is None:  # a URL not read lately: parse and hash it
            target = origin(scheme, host, scope.get("server"))
            keys = self._remember(memo, route.keys(target, path, query, caller_name))
        base, tags = keys
        return CacheRequest(
            route=route,
            rule=rule,
            scope=scope,
            base=base,
            tags=tags,
            if_none_match=found.get(b"if-none-match"),
            statuses=rule.statuses if rule.statuses is not None else self.statuses,
            ttl=rule.ttl,
            head=scope.get("method") == "HEAD",
            directives=(
                parse_cache_control(found.get_all(b"cache-control"))[0]
                if b"cache-control" in found
                else _NO_DIRECTIVES
            ),
            shared_credentials=credentials and not rule.per_caller,
        )

    def _remember(self, memo: Memo, keys: Keys) -> Keys:
        _, _, host, path, query, caller_name = memo
        size = len(path) + len(query) + len(host or b"") + len(caller_name or "")
        if size <= _MEMO_MAX_URL:
            if len(self._keys) >= _MEMO_SIZE:
                self._keys.clear()
            self._keys[memo] = keys
        return keys


def origin(scheme: str, host: bytes | None, server: object) -> str:
    """The scheme and authority of a request's target URI, normalised, for its cache key.

    RFC 9111 section 2 keys a cache on the target URI: an app that builds absolute URLs from
    the ``Host`` header answers differently per host, and one host's answer must never be
    served for another. The authority is the ``Host`` header, else the scope's ``server``;
    lower-cased, its default port dropped (``Example.COM:443`` over https is ``example.com``),
    as RFC 3986 section 6.2.3 normalises.
    """
    if host is not None:
        authority = host.decode("latin-1")
    elif isinstance(server, tuple | list) and len(server) == 2:
        name, port = str(server[0]), server[1]
        name = f"[{name}]" if ":" in name else name  # an IPv6 address
        authority = name if port is None else f"{name}:{port}"
    else:
        authority = ""
    authority = authority.strip().lower()
    authority = authority.removesuffix(":443" if scheme in ("https", "wss") else ":80")
    return f"{scheme}://{authority}"


class OutcomeCounter:
    """``cache_requests_total{route, outcome}``, with its children kept once made."""

    __slots__ = ("_children", "_counter")

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._children: dict[tuple[str, Outcome], Counter] = {}

    def count(self, route: str, outcome: Outcome) -> None:
        """Count one request to ``route`` with ``outcome``."""
        child = self._children.get((route, outcome))
        if child is None:
            # labels() costs more than the rest of a hit; a child is created on first use, as
            # before, so series that never happened are still not exported.
            child = self._children[route, outcome] = self._counter.labels(route, outcome)
        child.inc()


__all__ = ["CacheRequest", "Outcome", "OutcomeCounter", "RequestReader", "origin"]

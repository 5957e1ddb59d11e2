"""Cache-aside for GET/HEAD with single-flight, tag invalidation and RFC 9111 semantics."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal
from urllib.parse import parse_qsl, urlencode

from prometheus_client import CollectorRegistry, Counter

from prodkit._core.callers import Caller
from prodkit._core.collectors import DEFAULT_PREFIX, counter
from prodkit._core.exceptions import BackendError, ConfigurationError
from prodkit._core.headers import (
    get_all_headers,
    get_header,
    get_list_header,
    message_headers,
    set_header,
)
from prodkit._core.problems import send_problem
from prodkit._core.routing import UNMATCHED_ROUTE, RouteTable, compile_template, route_template
from prodkit._core.types import ASGIApp, Message, RawHeaders, Receive, Scope, Send
from prodkit.cache._cache import ResponseCache, tag_key
from prodkit.cache._entry import (
    NOT_MODIFIED_HEADERS,
    UNSTORABLE_MARKER,
    CachedResponse,
    DecodedEntries,
    cache_control,
    compute_etag,
    decode_vary_record,
    delta_seconds,
    encode_vary_record,
    etag_matches,
    stored_headers,
)
from prodkit.cache._memory import MemoryCacheStore
from prodkit.cache._store import CacheStore

#: Problem code of a ``Cache-Control: only-if-cached`` request that found nothing (504).
NOT_CACHED = "NOT_CACHED"

Outcome = Literal["hit", "miss", "bypass", "error", "coalesced"]

_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_FIELD_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+\Z")
_TAG_FIELD = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)}")
#: Request header fields the cache looks at.
_READ_FIELDS = frozenset(
    {b"authorization", b"cache-control", b"cookie", b"if-none-match", b"range"}
)
_EMPTY_PART = (0).to_bytes(8, "big")  # an empty query, length-prefixed
_NO_DIRECTIVES: Mapping[str, str] = MappingProxyType({})
# Entry keys and tag keys of recent reads, so a repeated read does not parse and hash again;
# long URLs (and callers) are not remembered, which bounds the memo's memory.
_MEMO_SIZE = 4096
_MEMO_MAX_URL = 256


@dataclass(frozen=True, slots=True)
class CacheRule:
    """How one route is cached.

    Arguments:
        ttl: seconds an entry is kept (shortened by the response's ``s-maxage`` / ``max-age``).
        per_caller: key entries by the caller too (the middleware's ``caller``); a request
            whose caller is unknown is not cached.
        tags: tag templates stamped on every entry of the route, filled from the route's path
            parameters and ``{caller}`` (the caller), e.g. ``("fund:{id}", "user:{caller}")``.
            Invalidating a tag makes every entry carrying it stale.
        allow_credentials: cache requests that carry ``Authorization`` or ``Cookie`` (off by
            default: RFC 9111 section 3.5; turn it on only with ``per_caller``).
        statuses: statuses stored for this route (default: the middleware's ``statuses``).
    """

    ttl: float
    per_caller: bool = False
    tags: Sequence[str] = ()
    allow_credentials: bool = False
    statuses: frozenset[int] | None = None


@dataclass(frozen=True, slots=True)
class _Route:
    template: str
    pattern: re.Pattern[str]
    rule: CacheRule | None
    tags: tuple[str, ...]  # tag templates bumped by a write / stamped on an entry
    key_prefix: bytes = field(init=False)  # the template's part of every entry key
    by_caller: bool = field(init=False)  # the caller is part of the key or of a tag

    def __post_init__(self) -> None:
        raw = self.template.encode("utf-8", "surrogatepass")
        object.__setattr__(self, "key_prefix", len(raw).to_bytes(8, "big") + raw)
        by_caller = self.rule is not None and self.rule.per_caller
        by_caller = by_caller or any("caller" in _TAG_FIELD.findall(tag) for tag in self.tags)
        object.__setattr__(self, "by_caller", by_caller)

    def keys(self, path: str, query: bytes, caller_name: str | None) -> tuple[str, tuple[str, ...]]:
        """The entry key's hash and the tag version keys of a read (path tag first)."""
        tags = (self.render_tags(path, caller_name) or ()) if self.tags else ()
        raw_path = path.encode("utf-8", "surrogatepass")
        # length-prefixed, so no choice of path or query can imitate another split
        parts = [self.key_prefix, len(raw_path).to_bytes(8, "big"), raw_path]
        if query:
            # latin-1 both ways: percent-decoding is then one-to-one, so two different queries
            # (say %ff and %fe, both U+FFFD under UTF-8 with replacement) never share a key.
            pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
            # Sorted by name only: the order of one parameter's values can matter (getlist).
            normalised = urlencode(sorted(pairs, key=lambda pair: pair[0]), encoding="latin-1")
            raw_query = normalised.encode("utf-8", "surrogatepass")
            parts += (len(raw_query).to_bytes(8, "big"), raw_query)
        else:
            parts.append(_EMPTY_PART)
        if self.rule is not None and self.rule.per_caller and caller_name is not None:
            raw_caller = caller_name.encode("utf-8", "surrogatepass")
            parts += (len(raw_caller).to_bytes(8, "big"), raw_caller)
        else:
            parts.append(b"-")
        base = hashlib.sha256(b"".join(parts)).hexdigest()[:40]
        return base, (tag_key("path:" + path), *(tag_key(t) for t in tags))

    def render_tags(self, path: str, caller_name: str | None) -> tuple[str, ...] | None:
        found = self.pattern.match(path)
        if found is None:
            return None
        values = {k: v for k, v in found.groupdict().items() if v is not None}
        if caller_name is not None:
            values["caller"] = caller_name
        rendered = []
        for template in self.tags:
            try:
                rendered.append(template.format_map(values))
            except KeyError:
                continue  # {caller} with an unknown caller: nothing to tag
        return tuple(rendered)


@dataclass(slots=True)
class _Request:
    """Per-request cache facts (never stored on the middleware)."""

    route: _Route
    rule: CacheRule
    scope: Scope
    base: str  # hex digest of method, route, path, query and caller
    tags: tuple[str, ...]  # tag version keys, path tag first
    if_none_match: bytes | None
    statuses: frozenset[int]
    ttl: float
    head: bool
    directives: Mapping[str, str]  # the request's Cache-Control
    versions: tuple[str, ...] | None = None  # tag versions read before the app runs
    unstorable: bool = False  # the last response for this key could not be stored
    vary_values: dict[tuple[str, ...], str] = field(default_factory=dict)

    @property
    def entry_key(self) -> str:
        return "e:{" + self.base + "}"

    @property
    def lock_key(self) -> str:
        return "l:{" + self.base + "}"

    def vary_digest(self, names: tuple[str, ...]) -> str:
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
        return self.entry_key + ":" + self.vary_digest(names)


@dataclass(frozen=True, slots=True)
class _Shared:
    """What an in-process single flight hands its waiters."""

    entry: CachedResponse
    fetched: bool  # computed by the app now (waiters: "coalesced"), or read from the store
    vary_digest: str  # the leader's digest of the entry's Vary headers


class CacheMiddleware:
    """Cache GET/HEAD responses of configured routes (cache-aside) and invalidate on writes.

    Reads (``GET``; ``HEAD`` shares ``GET``'s entries): the entry key is built from the route
    template, the path, the query (parameters sorted), the caller for ``per_caller`` routes, and
    the request headers the response's ``Vary`` names. A hit is answered with ``X-Cache: HIT``
    and ``Age``; a miss runs the app, answers with ``X-Cache: MISS`` and stores the response
    when RFC 9111 allows a shared cache to: status in ``statuses``, no ``Set-Cookie``, no
    ``Cache-Control: no-store / private / no-cache``, no ``Vary: *``, and no ``Authorization``
    or ``Cookie`` on the request unless the route's ``allow_credentials`` is set. Every cached
    response carries a strong ``ETag`` (sha256 of the body unless the app set one), and
    ``If-None-Match`` is answered with ``304`` on hits and misses (RFC 9110 section 13.1.2).

    Stampede protection: concurrent misses for one key in a process share one app call
    (waiters get the same response); across processes a lease lock in the store (``SET NX PX``
    with an owner token) lets one worker compute while the others poll for the entry; a waiter
    still waiting when the lease runs out calls the app itself.

    Writes: a 2xx response to ``POST``/``PUT``/``PATCH``/``DELETE`` on a path that a cached
    route (or an ``invalidate`` template) matches invalidates that path's entries and the
    route's tags *before* the response reaches the client, so the client's next read misses.

    Store failures fail open: the request is served by the app, and the circuit breaker of the
    :class:`ResponseCache` turns a dead store into microseconds per request.

    Hits are cheap: the middleware remembers the keys of recent URLs and the last 1,024 entries
    it decoded (at most 8 MiB of stored bytes, reused only while the store returns the same
    bytes), so a repeated hit neither hashes, parses nor copies the body.

    Arguments:
        app: the ASGI app to wrap.
        routes: ``{template: CacheRule}`` for the cached routes (``RouteTable`` syntax:
            ``/api/funds/{id}``, ``{id:int}``, a trailing ``/*``).
        cache: the :class:`ResponseCache` to use (share it with code that invalidates).
        store: build a :class:`ResponseCache` over this store instead (default: memory).
        caller: returns the caller of a request (``None``: unknown), for ``per_caller`` routes
            and ``{caller}`` in tags; see :func:`caller_from_header`.
        invalidate: ``{template: [tag templates]}``: tags that a 2xx write to a matching path
            invalidates, in addition to the path itself and the tags of a cached route there.
        statuses: statuses stored (default 200 only).
        max_body_bytes: larger responses are streamed through and not stored.
        lock_lease: seconds one worker may compute a missing entry before others give up
            waiting and compute it themselves.
        honor_no_cache: a request ``Cache-Control: no-cache`` (or ``max-age=0``) skips the
            read and refreshes the entry; turn off if clients could use it to load the app.
        honor_no_store: a request ``Cache-Control: no-store`` bypasses the cache.
        registry, metric_prefix: metrics (default: those of ``cache``).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Mapping[str, CacheRule],
        cache: ResponseCache | None = None,
        store: CacheStore | None = None,
        caller: Caller | None = None,
        invalidate: Mapping[str, Sequence[str]] | None = None,
        statuses: Iterable[int] = (200,),
        max_body_bytes: int = 1024 * 1024,
        lock_lease: float = 10.0,
        honor_no_cache: bool = True,
        honor_no_store: bool = True,
        registry: CollectorRegistry | None = None,
        metric_prefix: str | None = None,
    ) -> None:
        if cache is not None and store is not None:
            raise ConfigurationError("pass either cache= or store=, not both")
        if cache is None:
            cache = ResponseCache(
                store,
                registry=registry,
                metric_prefix=DEFAULT_PREFIX if metric_prefix is None else metric_prefix,
            )
        if max_body_bytes < 1:
            raise ConfigurationError("max_body_bytes must be at least 1")
        if lock_lease <= 0:
            raise ConfigurationError("lock_lease must be a positive number of seconds")
        self.statuses = frozenset(statuses)
        if not self.statuses or any(not 200 <= s <= 599 for s in self.statuses):
            raise ConfigurationError("statuses must be HTTP status codes (e.g. (200,))")
        reads: list[tuple[str, _Route]] = []
        for template, rule in routes.items():
            if not isinstance(rule, CacheRule):
                raise ConfigurationError(
                    f"routes[{template!r}] must be a CacheRule(ttl=...), not {type(rule).__name__}"
                )
            if rule.ttl <= 0:
                raise ConfigurationError(f"routes[{template!r}]: ttl must be positive seconds")
            if rule.ttl > cache.tag_ttl:
                raise ConfigurationError(
                    f"routes[{template!r}]: ttl {rule.ttl}s exceeds the cache's tag_ttl "
                    f"{cache.tag_ttl}s; raise ResponseCache(tag_ttl=...)"
                )
            if rule.per_caller and caller is None:
                raise ConfigurationError(
                    f"routes[{template!r}] is per_caller: pass caller= (e.g. "
                    "caller_from_header('X-User-Id'))"
                )
            if isinstance(rule.tags, str):
                raise ConfigurationError(f"routes[{template!r}]: tags must be a list of strings")
            self._check_tags(template, rule.tags, caller)
            reads.append(
                (template, _Route(template, compile_template(template), rule, tuple(rule.tags)))
            )
        writes: list[tuple[str, _Route]] = list(reads)
        for template, tags in (invalidate or {}).items():
            if isinstance(tags, str):
                raise ConfigurationError(
                    f"invalidate[{template!r}] must be a list of tag templates"
                )
            self._check_tags(template, tags, caller)
            writes.append(
                (template, _Route(template, compile_template(template), None, tuple(tags)))
            )
        self.app = app
        self.cache = cache
        self.caller = caller
        self.max_body_bytes = max_body_bytes
        self.lock_lease = lock_lease
        self.honor_no_cache = honor_no_cache
        self.honor_no_store = honor_no_store
        self._reads = RouteTable(reads)
        self._writes = [route for _, route in writes]
        self._write_table = RouteTable((t, None) for t, _ in writes)
        # In-process single flights by key, with the cache generation each one started at.
        self._flights: dict[str, tuple[asyncio.Future[_Shared | None], int]] = {}
        self._requests = counter(
            f"{cache.metric_prefix if metric_prefix is None else metric_prefix}cache_requests_total",
            "Requests to cached routes, by route template and outcome "
            "(hit, miss, bypass, error, coalesced).",
            ["route", "outcome"],
            registry=cache.registry if registry is None else registry,
        )
        self._counted: dict[tuple[str, Outcome], Counter] = {}
        self._decoded = DecodedEntries()
        # The memory store answers without suspending (and, without a breaker, cannot fail).
        self._inline_store = isinstance(cache.store, MemoryCacheStore) and cache.breaker is None
        self._keys: dict[tuple[str, str, bytes, str | None], tuple[str, tuple[str, ...]]] = {}

    @staticmethod
    def _check_tags(template: str, tags: Sequence[str], caller: Caller | None) -> None:
        params = set(compile_template(template).groupindex)
        for tag in tags:
            if not isinstance(tag, str) or not tag:
                raise ConfigurationError(f"tags of {template!r} must be non-empty strings")
            rest = _TAG_FIELD.sub("", tag)
            if "{" in rest or "}" in rest:
                raise ConfigurationError(
                    f"tag {tag!r} of {template!r} is not a valid template: use plain {{name}} "
                    "fields (path parameters or caller) and no other braces"
                )
            for name in _TAG_FIELD.findall(tag):
                if name == "caller":
                    if caller is None:
                        raise ConfigurationError(
                            f"tag {tag!r} of {template!r} uses {{caller}}: pass caller="
                        )
                elif name not in params:
                    raise ConfigurationError(
                        f"tag {tag!r} of {template!r} uses {{{name}}}, which is not a path "
                        f"parameter of the route (have: {', '.join(sorted(params)) or 'none'})"
                    )

    async def invalidate_tags(self, tags: Iterable[str]) -> bool:
        """Shortcut for :meth:`ResponseCache.invalidate_tags` of this middleware's cache."""
        return await self.cache.invalidate_tags(tags)

    async def invalidate_path(self, path: str) -> bool:
        """Make every cached entry of ``path`` (all queries, callers, variants) stale."""
        return await self.cache.invalidate_tags(["path:" + path])

    # -- dispatch -------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        path: str = scope.get("path", "/")
        if method in ("GET", "HEAD"):
            matched = self._reads.match(path)
            if matched is not None:
                await self._read(scope, receive, send, matched[1])
                return
        elif method in _UNSAFE and self._write_table.match(path) is not None:
            await self._write(scope, receive, send, path)
            return
        await self.app(scope, receive, send)

    def _count(self, route: str, outcome: Outcome) -> None:
        child = self._counted.get((route, outcome))
        if child is None:
            # labels() costs more than the rest of a hit; a child is created on first use, as
            # before, so series that never happened are still not exported.
            child = self._counted[route, outcome] = self._requests.labels(route, outcome)
        child.inc()

    # -- writes ---------------------------------------------------------------------------

    async def _write(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        caller_name = self.caller(scope) if self.caller is not None else None
        tags: list[str] = ["path:" + path]
        for route in self._writes:
            rendered = route.render_tags(path, caller_name)
            if rendered is not None:
                tags.extend(rendered)
        done = False

        async def invalidating_send(message: Message) -> None:
            nonlocal done
            if message["type"] == "http.response.start" and not done:
                done = True
                if 200 <= int(message["status"]) < 300:
                    # Before the client sees the response, so its next read cannot hit.
                    await self.cache.invalidate_tags(tags)
            await send(message)

        await self.app(scope, receive, invalidating_send)

    # -- reads ----------------------------------------------------------------------------

    def _prepare(self, scope: Scope, route: _Route) -> _Request | Outcome:
        """Return the request's cache facts, or ``"bypass"`` when it must not use the cache."""
        rule = route.rule
        if rule is None:  # pragma: no cover - read routes always have a rule
            return "bypass"
        headers = scope.get("headers") or ()
        # One pass over the request headers for every field the cache reads.
        found: dict[bytes, bytes] = {}
        controls = False
        for name, value in headers:
            if name in _READ_FIELDS:
                if name == b"cache-control":
                    controls = True
                elif name not in found:
                    found[name] = value
        if not rule.allow_credentials and (b"authorization" in found or b"cookie" in found):
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
        memo = (route.template, path, query, caller_name)
        keys = self._keys.get(memo)
        if keys is None:
            keys = route.keys(path, query, caller_name)
            if len(path) + len(query) + (len(caller_name) if caller_name else 0) <= _MEMO_MAX_URL:
                if len(self._keys) >= _MEMO_SIZE:
                    self._keys.clear()
                self._keys[memo] = keys
        return _Request(
            route=route,
            rule=rule,
            scope=scope,
            base=keys[0],
            tags=keys[1],
            if_none_match=found.get(b"if-none-match"),
            statuses=rule.statuses if rule.statuses is not None else self.statuses,
            ttl=rule.ttl,
            head=scope.get("method") == "HEAD",
            directives=cache_control(headers) if controls else _NO_DIRECTIVES,
        )

    async def _read(self, scope: Scope, receive: Receive, send: Send, route: _Route) -> None:
        template = route.template
        prepared = self._prepare(scope, route)
        if not isinstance(prepared, _Request):
            self._count(template, prepared)
            await self.app(scope, receive, send)
            return
        request = prepared
        directives = request.directives
        if self.honor_no_store and "no-store" in directives:
            self._count(template, "bypass")
            await self.app(scope, receive, send)
            return
        max_age = delta_seconds(directives.get("max-age")) if "max-age" in directives else None
        if "only-if-cached" in directives:
            await self._only_if_cached(request, send)
            return
        refresh = self.honor_no_cache and ("no-cache" in directives or max_age == 0)
        if refresh:
            await self._refresh(request, receive, send)
            return
        if request.head:
            await self._head(request, receive, send, max_age)
            return

        joined = self._flights.get(request.base)
        flight = None
        if joined is not None and joined[1] == self.cache.generation:
            flight = joined[0]
        elif joined is not None:
            # A write invalidated entries since that flight started: its answer may predate
            # the write, and this caller's read must see the write. Ask the app, don't store.
            self._count(template, "miss")
            await self.app(scope, receive, self._miss_send(send))
            return
        if flight is not None:
            try:
                shared = await asyncio.wait_for(asyncio.shield(flight), self.lock_lease)
            except TimeoutError:
                shared = None  # the leader outlived the lease: compute rather than hang
            if shared is not None and (
                not shared.entry.vary
                or request.vary_digest(shared.entry.vary) == shared.vary_digest
            ):
                fresh_enough = max_age is None or _age(shared.entry) <= max_age
                if fresh_enough:
                    hit = not shared.fetched
                    self._count(template, "hit" if hit else "coalesced")
                    await self._send_entry(send, request, shared.entry, hit=hit)
                    return
            # The leader's response does not fit this request: ask the app, don't store.
            self._count(template, "miss")
            await self.app(scope, receive, self._miss_send(send))
            return

        if self._inline_store:
            # The lookup cannot suspend, so no request can join a flight before it answers:
            # a flight is only needed once it has missed.
            entry = _usable(await self._lookup(request), max_age)
            if entry is not None:
                self._count(template, "hit")
                await self._send_entry(send, request, entry, hit=True)
                return
        future: asyncio.Future[_Shared | None] = asyncio.get_running_loop().create_future()
        self._flights[request.base] = (future, self.cache.generation)
        try:
            await self._lead(request, receive, send, future, max_age, self._inline_store)
        finally:
            if not future.done():
                future.set_result(None)
            current = self._flights.get(request.base)
            if current is not None and current[0] is future:
                del self._flights[request.base]

    async def _lookup(self, request: _Request) -> CachedResponse | None:
        """The fresh entry for ``request``, or ``None`` (raises ``BackendError``)."""
        found = await self.cache.get(request.entry_key, request.tags)
        request.versions = found.versions
        value = found.value
        if value is None:
            return None
        if value == UNSTORABLE_MARKER:
            request.unstorable = True
            return None
        key = request.entry_key
        names = decode_vary_record(value)
        if names is not None:
            key = request.variant_key(names)
            value = (await self.cache.get(key, ())).value
            if value is None:
                return None
        try:
            entry = self._decoded.decode(key, value)
        except (ValueError, KeyError, TypeError):
            return None  # written by an incompatible version: treat as a miss
        if entry.versions != found.versions:
            return None  # a tag was invalidated after this entry was looked up
        return entry

    async def _lead(
        self,
        request: _Request,
        receive: Receive,
        send: Send,
        future: asyncio.Future[_Shared | None],
        max_age: int | None,
        missed: bool,
    ) -> None:
        """Answer a read as the only one for its key in this process (``missed``: the caller
        already looked the key up, and found nothing usable)."""
        template = request.route.template
        outcome: Outcome = "miss"
        token = ""  # the lease's owner token, drawn only when a hit is not found
        locked = False
        try:
            if not missed:
                entry = _usable(await self._lookup(request), max_age)
                if entry is not None:
                    self._share(future, request, entry, fetched=False)
                    self._count(template, "hit")
                    await self._send_entry(send, request, entry, hit=True)
                    return
            token = os.urandom(16).hex()
            # Single flight across workers: hold the lease, or wait for whoever holds it.
            # Not when the last answer here could not be stored: waiting would only queue
            # the workers behind one another.
            deadline = time.monotonic() + self.lock_lease
            delay = 0.005
            while not request.unstorable:
                if await self.cache.claim(request.lock_key, token, self.lock_lease):
                    locked = True
                    # After waiting, the holder before us may have stored the entry just
                    # before releasing. (On a first-try claim that window is one round trip
                    # wide; a second computation there is harmless and not worth a read.)
                    waited = delay > 0.005
                    entry = _usable(await self._lookup(request), max_age) if waited else None
                    if entry is not None:
                        self._share(future, request, entry, fetched=True)
                        self._count(template, "coalesced")
                        await self._send_entry(send, request, entry, hit=False)
                        return
                    break
                if time.monotonic() >= deadline:
                    break  # the lease outlived us: compute rather than hang
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)
                entry = _usable(await self._lookup(request), max_age)
                if entry is not None:
                    self._share(future, request, entry, fetched=True)
                    self._count(template, "coalesced")
                    await self._send_entry(send, request, entry, hit=False)
                    return
        except BackendError:
            outcome = "error"
            # Never equal to a real version, and no second doomed round trip to read them.
            request.versions = ("?",) * len(request.tags)
        try:
            self._count(template, outcome)
            entry = await self._fetch(request, receive, send, future)
            if outcome != "error":
                values = self._values(request, entry)
                if locked:
                    locked = False
                    # Entry and lease release together: waiters find the entry when the
                    # lease is gone, in one round trip.
                    with contextlib.suppress(BackendError):
                        await self.cache.complete(values[0], values[1], request.lock_key, token)
                elif values[0]:
                    with contextlib.suppress(BackendError):
                        for key, value in values[0]:
                            await self.cache.set(key, value, values[1])
        finally:
            if locked:
                await self.cache.release(request.lock_key, token)

    async def _only_if_cached(self, request: _Request, send: Send) -> None:
        """RFC 9111 section 5.2.1.7: answer from the cache or with 504, never ask the app."""
        try:
            entry = await self._lookup(request)
        except BackendError:
            entry = None
        if entry is None:
            self._count(request.route.template, "miss")
            await send_problem(
                send, 504, NOT_CACHED, "No stored response for this only-if-cached request."
            )
            return
        self._count(request.route.template, "hit")
        await self._send_entry(send, request, entry, hit=True)

    async def _refresh(self, request: _Request, receive: Receive, send: Send) -> None:
        """``Cache-Control: no-cache``: skip the read, call the app, store what it answers."""
        self._count(request.route.template, "miss")
        if request.head:
            await self.app(request.scope, receive, self._miss_send(send))
            return
        entry = await self._fetch(request, receive, send, None)
        if entry is not None:
            await self._store(request, entry)

    async def _head(
        self, request: _Request, receive: Receive, send: Send, max_age: int | None
    ) -> None:
        """``HEAD``: answered from ``GET``'s entry; a miss goes to the app and stores nothing."""
        template = request.route.template
        try:
            entry = await self._lookup(request)
        except BackendError:
            self._count(template, "error")
            await self.app(request.scope, receive, self._miss_send(send))
            return
        if entry is not None and (max_age is None or _age(entry) <= max_age):
            self._count(template, "hit")
            await self._send_entry(send, request, entry, hit=True)
            return
        self._count(template, "miss")
        await self.app(request.scope, receive, self._miss_send(send))

    def _share(
        self,
        future: asyncio.Future[_Shared | None] | None,
        request: _Request,
        entry: CachedResponse,
        *,
        fetched: bool,
    ) -> None:
        if future is not None and not future.done():
            digest = request.vary_digest(entry.vary) if entry.vary else ""
            future.set_result(_Shared(entry, fetched, digest))

    def _values(
        self, request: _Request, entry: CachedResponse | None
    ) -> tuple[list[tuple[str, bytes]], float]:
        """What to store for a computed response, and for how long.

        Nothing for an unstorable response, except, briefly, a marker that tells workers waiting
        on this key's lease not to wait for an entry next time.
        """
        if entry is None:
            return [(request.entry_key, UNSTORABLE_MARKER)], min(request.ttl, 1.0)
        ttl = request.ttl
        directives = cache_control(entry.headers)
        for name in ("s-maxage", "max-age"):
            limit = delta_seconds(directives.get(name))
            if limit is not None:
                ttl = min(ttl, float(limit))
                break
        if ttl <= 0:
            return [], 0.0
        data = entry.encode()
        if entry.vary:
            return [
                (request.entry_key, encode_vary_record(entry.vary)),
                (request.variant_key(entry.vary), data),
            ], ttl
        return [(request.entry_key, data)], ttl

    async def _store(self, request: _Request, entry: CachedResponse) -> None:
        values, ttl = self._values(request, entry)
        with contextlib.suppress(BackendError):
            for key, value in values:
                await self.cache.set(key, value, ttl)

    # -- responses ------------------------------------------------------------------------

    def _storable(self, request: _Request, status: int, headers: RawHeaders) -> bool:
        """Whether RFC 9111 lets a shared cache store this response (section 3)."""
        if status not in request.statuses:
            return False
        if get_header(headers, b"set-cookie") is not None:
            return False
        directives = cache_control(headers)
        if {"no-store", "private", "no-cache"} & directives.keys():
            return False
        if directives.get("s-maxage") == "0" or (
            "s-maxage" not in directives and directives.get("max-age") == "0"
        ):
            return False
        if "*" in get_list_header(headers, b"vary"):
            return False
        return get_header(headers, b"content-range") is None

    def _miss_send(self, send: Send) -> Send:
        async def miss_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                set_header(message_headers(message), b"x-cache", b"MISS")
            await send(message)

        return miss_send

    async def _fetch(
        self,
        request: _Request,
        receive: Receive,
        send: Send,
        future: asyncio.Future[_Shared | None] | None,
    ) -> CachedResponse | None:
        """Run the app; buffer a storable response to compute its ETag. Returns the entry."""
        versions = request.versions
        if versions is None:
            versions = await self._versions_for(request)
        start: Message | None = None
        chunks: list[bytes] = []
        size = 0
        streaming = False
        result: CachedResponse | None = None
        miss_send = self._miss_send(send)

        async def capture(message: Message) -> None:
            nonlocal start, size, streaming, result
            if streaming:
                await send(message)
                return
            kind = message["type"]
            if kind == "http.response.start":
                headers = message_headers(message)
                if not self._storable(request, int(message["status"]), headers):
                    streaming = True
                    await miss_send(message)
                else:
                    start = message
                return
            if kind != "http.response.body" or start is None:
                await send(message)
                return
            body: bytes = message.get("body", b"")
            chunks.append(body)
            size += len(body)
            more = bool(message.get("more_body", False))
            if size > self.max_body_bytes:
                streaming = True
                set_header(message_headers(start), b"x-cache", b"MISS")
                await send(start)
                await send(
                    {"type": "http.response.body", "body": b"".join(chunks), "more_body": more}
                )
                return
            if more:
                return
            headers = message_headers(start)
            full = b"".join(chunks)
            etag = get_header(headers, b"etag") or compute_etag(full, headers)
            vary = tuple(sorted({n.lower() for n in get_list_header(headers, b"vary")}))
            result = CachedResponse(
                status=int(start["status"]),
                headers=stored_headers(headers),
                body=full,
                etag=etag,
                stored_at=time.time(),
                versions=versions,
                vary=vary,
                route=_app_route(request.scope),
            )
            self._share(future, request, result, fetched=True)
            await self._send_entry(send, request, result, hit=False, routed=True)

        await self.app(request.scope, receive, capture)
        return result

    async def _versions_for(self, request: _Request) -> tuple[str, ...]:
        """The tags' versions *before* the app runs: a write during the call leaves the entry stale."""
        try:
            return (await self.cache.get(request.entry_key, request.tags)).versions
        except BackendError:
            return ("?",) * len(request.tags)  # never equal to a real version: not reusable

    async def _send_entry(
        self,
        send: Send,
        request: _Request,
        entry: CachedResponse,
        *,
        hit: bool,
        routed: bool = False,
    ) -> None:
        """Answer from ``entry``: 200 with body (none for HEAD), or 304 for a matching ETag.

        ``routed``: the app ran for this request (and recorded its route on the scope).
        """
        if not routed and entry.route is not None:
            # The app's route for this response, as if it had routed the request: the metrics
            # and the access log outside need not match it against the router again.
            request.scope.setdefault("path_template", entry.route)
        headers: RawHeaders
        if (
            request.if_none_match is not None
            and 200 <= entry.status < 300
            and etag_matches(request.if_none_match, entry.etag)
        ):
            headers = [(k, v) for k, v in entry.headers if k in NOT_MODIFIED_HEADERS]
            headers.append((b"etag", entry.etag))
            status = 304
            body = b""
        else:
            headers = [
                *entry.headers,
                (b"etag", entry.etag),
                (b"content-length", b"%d" % len(entry.body)),
            ]
            status = entry.status
            body = b"" if request.head else entry.body
        headers.append((b"x-cache", b"HIT" if hit else b"MISS"))
        if hit:
            headers.append((b"age", b"%d" % _age(entry)))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _age(entry: CachedResponse) -> int:
    return max(0, int(time.time() - entry.stored_at))


def _app_route(scope: Scope) -> str | None:
    """The route template the app recorded on ``scope`` while it routed, if any."""
    template = route_template(scope)
    return None if template == UNMATCHED_ROUTE else template


def _usable(entry: CachedResponse | None, max_age: int | None) -> CachedResponse | None:
    """``entry`` unless it is older than the request's ``max-age``."""
    if entry is None or (max_age is not None and _age(entry) > max_age):
        return None
    return entry


__all__ = ["NOT_CACHED", "CacheMiddleware", "CacheRule"]

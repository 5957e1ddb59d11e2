"""``RateLimitMiddleware``: per-client quotas with IETF ``RateLimit`` headers and 429 problems."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict, Unpack

from prometheus_client import CollectorRegistry, Counter

from prodkit._core import options as valid
from prodkit._core.addresses import ClientAddressResolver
from prodkit._core.breaker import CircuitBreaker
from prodkit._core.callers import Caller
from prodkit._core.collectors import DEFAULT_PREFIX, counter
from prodkit._core.exceptions import BackendError, ConfigurationError
from prodkit._core.headers import message_headers
from prodkit._core.observer import on_response_start
from prodkit._core.options import build_options
from prodkit._core.outcome import PathFilter
from prodkit._core.problems import Problem, send_problem
from prodkit._core.routing import RouteTable
from prodkit._core.types import ASGIApp, Message, Receive, Scope, Send
from prodkit.ratelimit._memory import MemoryRateLimitStore
from prodkit.ratelimit._policy import (
    RateLimitPolicy,
    ceil_seconds,
    route_policy_name,
    to_policy,
)
from prodkit.ratelimit._redis import RedisRateLimitStore
from prodkit.ratelimit._store import RateLimitDecision, RateLimitStore

RATE_LIMITED = "RATE_LIMITED"
RATE_LIMIT_UNAVAILABLE = "RATE_LIMIT_UNAVAILABLE"

#: Problem type of a 429, registered by draft-ietf-httpapi-ratelimit-headers ("Quota Exceeded").
QUOTA_EXCEEDED_TYPE = "https://iana.org/assignments/http-problem-types#quota-exceeded"

#: Paths never limited by default: probes and scrapes must not be throttled.
DEFAULT_EXCLUDE_PATHS = ("/livez", "/readyz", "/healthz", "/metrics")

StoreErrorPolicy = Literal["fail_open", "fail_closed"]
PolicySpec = RateLimitPolicy | str
RouteSpec = PolicySpec | Sequence[PolicySpec] | None


def _policies(value: RouteSpec, where: str | None) -> tuple[RateLimitPolicy, ...]:
    """Policies from an option (``where``: the route template, ``None`` for the global one).

    Strings are named ``default``, ``default-2`` ... (global) or after the route (see
    :func:`route_policy_name`).
    """
    if value is None:
        return ()
    items = [value] if isinstance(value, RateLimitPolicy | str) else list(value)
    return tuple(
        to_policy(
            item,
            route_policy_name(where, index)
            if where is not None
            else ("default" if index == 0 else f"default-{index + 1}"),
        )
        for index, item in enumerate(items)
    )


def _origin(where: str | None) -> str:
    return "the global policy" if where is None else f"route {where!r}"


def _describe(policy: RateLimitPolicy) -> str:
    return f"{policy.quota} per {policy.window} s"


def _check_names(
    global_policies: tuple[RateLimitPolicy, ...],
    own: Mapping[str, tuple[RateLimitPolicy, ...]],
) -> None:
    """Refuse two different policies under one name (one store key)."""
    places: list[tuple[str | None, tuple[RateLimitPolicy, ...]]] = [(None, global_policies)]
    places += own.items()
    for where, group in places:
        together = group if where is None else (*global_policies, *group)
        names = [item.name for item in together]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            applier = "policy=" if where is None else f"route {where!r}"
            raise ConfigurationError(
                f"{applier} applies several policies named {repeated[0]!r}: the "
                "policies checked together (the global ones and a route's own) need distinct names"
            )
    known: dict[str, tuple[RateLimitPolicy, str | None]] = {}
    for where, group in places:
        for item in group:
            first = known.setdefault(item.name, (item, where))
            if first[0] == item:
                continue
            raise ConfigurationError(
                f"two different policies are named {item.name!r} and would count in one "
                f"quota: {_describe(first[0])} ({_origin(first[1])}) and {_describe(item)} "
                f"({_origin(where)}); give each its own name, or pass one RateLimitPolicy "
                "object to share a quota"
            )


def _address_key(resolver: ClientAddressResolver) -> Callable[[Scope], str]:
    """The resolver's ``key``, memoised by peer address when no forwarding header counts."""
    if resolver.trusts_any:
        return resolver.key
    known: dict[str, str] = {}

    def key(scope: Scope) -> str:
        client = scope.get("client")
        if not client:
            return resolver.key(scope)
        found = known.get(client[0])
        if found is None:
            found = resolver.key(scope)
            if len(known) >= 10_000:
                known.clear()
            known[client[0]] = found
        return found

    return key


def _caller_key(caller: Caller, address: Callable[[Scope], str]) -> Callable[[Scope], str]:
    """Key by ``caller``, or by client address for a request that names no caller.

    Callers are kept apart from addresses by the ``caller:`` in front: a client cannot send a
    caller name such as ``203.0.113.7`` to spend another address's quota. An address never
    starts with ``caller:``.
    """

    def key(scope: Scope) -> str:
        name = caller(scope)
        return address(scope) if name is None else "caller:" + name

    return key


@dataclass(frozen=True, kw_only=True, slots=True)
class RateLimitOptions:
    """The options of :class:`RateLimitMiddleware`, checked when made.

    The policies are kept parsed: ``policy`` as a tuple of :class:`RateLimitPolicy`, each
    route's as a tuple too (``None`` for a route that is not limited).

    Attributes:
        policy: the global policy (a :class:`RateLimitPolicy` or a rate such as
            ``"100/minute"``, or several), applied to every request; ``None`` for none.
        routes: per-route policies by route template (``{"/api/login": "5/minute"}``), applied
            in addition to the global one; a route mapped to ``None`` is not limited at all.
            A policy given as a string is named after its route (``route:api_login``; see
            :func:`~prodkit.ratelimit.route_policy_name`), so two routes never share one. The
            same :class:`RateLimitPolicy` object on several routes is one shared quota.
        store: where counters live (default: a
            :class:`~prodkit.ratelimit.MemoryRateLimitStore`, per process), or a
            :class:`~prodkit.ratelimit.RedisRateLimitStore` shared by every worker.
        caller: who is calling (``scope -> str | None``, such as
            :func:`~prodkit.caller_from_header`): each caller gets its own quota, wherever it
            calls from. A request it names no caller for (``None``) is limited by its client
            address, as without ``caller``. Only pass a caller that an earlier layer has
            authenticated: a client that may name itself freely gets a fresh quota per name.
        trusted_proxies: addresses/CIDRs (or a comma-separated string, as in
            ``TRUSTED_PROXIES``) whose forwarding headers are believed when finding the client
            address: without ``caller``, or when it names nobody. The address comes from
            ``ClientAddressResolver(trusted_proxies, ipv6_prefix=...)``, IPv6 grouped by
            prefix, IPv4-mapped IPv6 as IPv4. Kept as a tuple.
        ipv6_prefix: the client address's IPv6 grouping (default ``64``; 56 for providers that
            hand out /56).
        on_store_error: ``"fail_open"`` (default, decide with a per-process memory store,
            so the limit still roughly holds per worker) or ``"fail_closed"`` (503 problem
            ``RATE_LIMIT_UNAVAILABLE`` with ``Retry-After``).
        breaker: circuit breaker around a shared store's calls (default: one named
            ``rate-limit``: it opens after 5 consecutive failures and probes again after
            0.5 s; each call times out after 0.5 s); not used with the memory store.
        exclude_paths: paths never limited (default :data:`DEFAULT_EXCLUDE_PATHS`: the health
            probes and ``/metrics``), kept as a tuple.
        unavailable_retry_after: ``Retry-After`` seconds of a fail-closed 503 (default ``5``).
        registry: the Prometheus registry of
            ``{metric_prefix}rate_limit_decisions_total{policy,decision}`` (default:
            prometheus-client's global ``REGISTRY``).
        metric_prefix: put in front of that metric name (default ``"prodkit_"``).

    Raises:
        ConfigurationError: no policy at all, a rate that is not one, two different policies
            under one name, or another invalid option, saying what to write instead.
    """

    policy: RouteSpec = None
    routes: Mapping[str, RouteSpec] | None = None
    store: RateLimitStore | None = None
    caller: Caller | None = None
    trusted_proxies: Iterable[str] | str = ()
    ipv6_prefix: int = 64
    on_store_error: StoreErrorPolicy = "fail_open"
    breaker: CircuitBreaker | None = None
    exclude_paths: Iterable[str] = DEFAULT_EXCLUDE_PATHS
    unavailable_retry_after: int = 5
    registry: CollectorRegistry | None = None
    metric_prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        global_policies = _policies(self.policy, None)
        own = {
            template: _policies(value, template) for template, value in (self.routes or {}).items()
        }
        routes = {
            template: None if value is None else own[template]
            for template, value in (self.routes or {}).items()
        }
        if not global_policies and not any(routes.values()):
            raise ConfigurationError(
                "RateLimitMiddleware needs a policy (e.g. policy='100/minute') or routes"
            )
        _check_names(global_policies, own)
        valid.one_of("on_store_error", self.on_store_error, ("fail_open", "fail_closed"))
        valid.positive_int("ipv6_prefix", self.ipv6_prefix, example=64, maximum=128)
        proxies = valid.string_list("trusted_proxies", self.trusted_proxies)
        ClientAddressResolver(proxies)  # refuses what is not an address or a network
        valid.positive_int("unavailable_retry_after", self.unavailable_retry_after, example=5)
        valid.metric_prefix("metric_prefix", self.metric_prefix)
        object.__setattr__(self, "policy", global_policies)
        object.__setattr__(self, "routes", routes)
        object.__setattr__(self, "trusted_proxies", proxies)
        object.__setattr__(
            self, "exclude_paths", valid.path_list("exclude_paths", self.exclude_paths)
        )


class RateLimitKeywords(TypedDict, total=False):
    """:class:`RateLimitOptions`'s fields as keywords of :class:`RateLimitMiddleware`."""

    policy: RouteSpec
    routes: Mapping[str, RouteSpec] | None
    store: RateLimitStore | None
    caller: Caller | None
    trusted_proxies: Iterable[str] | str
    ipv6_prefix: int
    on_store_error: StoreErrorPolicy
    breaker: CircuitBreaker | None
    exclude_paths: Iterable[str]
    unavailable_retry_after: int
    registry: CollectorRegistry | None
    metric_prefix: str


class RateLimitMiddleware:
    """Limit how often each client may call the app; answer 429 problems with ``Retry-After``.

    Every limited response, allowed or not, carries ``RateLimit-Policy`` and ``RateLimit`` in
    the syntax of draft-ietf-httpapi-ratelimit-headers (``"default";q=100;w=60`` and
    ``"default";r=99;t=1``). A rejected request gets a 429 ``application/problem+json`` with
    the draft's ``quota-exceeded`` type, ``code`` ``RATE_LIMITED``, ``violated-policies``,
    ``Retry-After`` (whole seconds until a request would succeed, never less than the ``t`` it
    advertises) and ``Cache-Control: no-store``. The app is not called. WebSocket and
    ``lifespan`` scopes pass straight through.

    Example::

        import asyncio

        import httpx
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        from prodkit import RateLimitMiddleware

        async def quote(request):
            return JSONResponse({"price": 101.5})

        app = RateLimitMiddleware(
            Starlette(routes=[Route("/quote", quote), Route("/login", quote)]),
            policy="100/minute",  # per client address
            routes={"/login": "2/minute"},  # checked on top of the global policy
        )

        async def main():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                quoted = await client.get("/quote")
                logins = [await client.get("/login") for _ in range(3)]
            assert quoted.headers["RateLimit-Policy"] == '"default";q=100;w=60'
            assert [response.status_code for response in logins] == [200, 200, 429]
            refused = logins[-1]
            assert refused.json()["violated-policies"] == ["route:login"]
            assert int(refused.headers["Retry-After"]) > 0

        asyncio.run(main())

    Arguments:
        app: the ASGI app to wrap.
        options: the options as one object (default: made from ``keywords``).
        **keywords: :class:`RateLimitOptions`'s fields by name, instead of ``options``:
            ``RateLimitMiddleware(app, policy="100/minute")``.

    Raises:
        ConfigurationError: an invalid option (see :class:`RateLimitOptions`).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        options: RateLimitOptions | None = None,
        **keywords: Unpack[RateLimitKeywords],
    ) -> None:
        self.app = app
        self.options = options = build_options(RateLimitOptions, options, keywords)
        self._global = global_policies = _parsed(options.policy)
        route_policies = {
            template: () if own is None else (*global_policies, *_parsed(own))
            for template, own in (options.routes or {}).items()
        }
        store = options.store
        self.store: RateLimitStore = store if store is not None else MemoryRateLimitStore()
        resolver = ClientAddressResolver(options.trusted_proxies, ipv6_prefix=options.ipv6_prefix)
        address = _address_key(resolver)
        self._key = address if options.caller is None else _caller_key(options.caller, address)
        self.on_store_error = options.on_store_error
        shared = not isinstance(self.store, MemoryRateLimitStore)
        self._breaker = _shared_breaker(options) if shared else None
        self._fallback = MemoryRateLimitStore() if shared else None
        # Units this worker reserved in Redis are handed out before the breaker: no network.
        reserved = self.store if isinstance(self.store, RedisRateLimitStore) else None
        self._reserved = None if reserved is None else reserved.consume_reserved
        self._excluded = PathFilter(options.exclude_paths)
        self.unavailable_retry_after = options.unavailable_retry_after
        decisions = counter(
            f"{options.metric_prefix}rate_limit_decisions_total",
            "Rate-limit decisions by policy: allowed, limited, or error (the store failed).",
            ["policy", "decision"],
            registry=options.registry,
        )
        self._default, self._routes = _grouped(global_policies, route_policies, decisions)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._excluded.excludes(scope):
            await self.app(scope, receive, send)
            return
        group = self._default
        if self._routes is not None:
            found = self._routes.match_request(scope)
            if found is not None:
                group = found[1]
        if group is None:
            await self.app(scope, receive, send)
            return
        client = self._key(scope)
        state = b""
        store = self.store if self._breaker is None else None
        for limit in group.limits:
            if store is not None:  # a memory store: no breaker, no fallback to go through
                result: RateLimitDecision | None = await store.consume(client, limit.policy)
            else:
                result = await self._consume(client, limit)
            if result is None:
                await send_problem(
                    send,
                    503,
                    RATE_LIMIT_UNAVAILABLE,
                    "The rate limiter is unavailable; try again later.",
                    headers={"Retry-After": str(self.unavailable_retry_after)},
                )
                return
            item = b"%b%d;t=%d" % (limit.state, result.remaining, result.reset)
            state = state + b", " + item if state else item
            if not result.allowed:
                limit.limited.inc()
                # Later policies keep their quota for a request that is not served.
                await self._reject(send, group, state, limit.policy, result)
                return
            limit.allowed.inc()

        policy_field = group.policy_field
        state_field = (b"ratelimit", state)

        def add_fields(message: Message) -> None:
            headers = message_headers(message)
            headers.append(policy_field)
            headers.append(state_field)

        await self.app(scope, receive, on_response_start(send, add_fields))

    async def _reject(
        self,
        send: Send,
        group: _Group,
        state: bytes,
        policy: RateLimitPolicy,
        result: RateLimitDecision,
    ) -> None:
        """Send the 429 problem for the policy that ``result`` refused."""
        retry_after = max(1, ceil_seconds(result.retry_after))
        await Problem(
            429,
            RATE_LIMITED,
            f"Too many requests; retry in {retry_after} s.",
            title="Request cannot be satisfied as assigned quota has been exceeded",
            type=QUOTA_EXCEEDED_TYPE,
            headers={"Retry-After": str(retry_after)},
            extensions={"violated-policies": [policy.name]},
        ).send(send, headers=[group.policy_field, (b"ratelimit", state)])

    async def _consume(self, client: str, limit: _Limit) -> RateLimitDecision | None:
        """One decision; store failures go to the fallback (fail open) or ``None`` (fail closed)."""
        policy = limit.policy
        if self._reserved is not None:
            local = self._reserved(client, policy)
            if local is not None:
                return local
        if self._breaker is None:
            return await self.store.consume(client, policy)
        store = self.store
        try:
            return await self._breaker.call(lambda: store.consume(client, policy))
        except BackendError:
            limit.error.inc()
            if self._fallback is None or self.on_store_error == "fail_closed":
                return None
            return await self._fallback.consume(client, policy)


def _shared_breaker(options: RateLimitOptions) -> CircuitBreaker:
    """The breaker around a shared store's calls: the one given, or one named ``rate-limit``."""
    if options.breaker is not None:
        return options.breaker
    return CircuitBreaker(
        "rate-limit", timeout=0.5, registry=options.registry, metric_prefix=options.metric_prefix
    )


def _parsed(spec: RouteSpec) -> tuple[RateLimitPolicy, ...]:
    """The policies :class:`RateLimitOptions` keeps parsed: a tuple of them (or ``None``)."""
    if spec is None or isinstance(spec, RateLimitPolicy | str):
        return ()  # not a value RateLimitOptions leaves
    return tuple(item for item in spec if isinstance(item, RateLimitPolicy))


def _grouped(
    global_policies: tuple[RateLimitPolicy, ...],
    route_policies: Mapping[str, tuple[RateLimitPolicy, ...]],
    decisions: Counter,
) -> tuple[_Group | None, RouteTable[_Group | None] | None]:
    """The global group and the route table of groups, each group's counters found once.

    A request then reads attributes instead of hashing a tuple of dataclasses or a (name,
    outcome) key.
    """
    limits: dict[str, _Limit] = {}
    for group in (global_policies, *route_policies.values()):
        for item in group:
            if item.name not in limits:
                limits[item.name] = _Limit(item, decisions)
    groups: dict[tuple[RateLimitPolicy, ...], _Group] = {}
    for group in (global_policies, *route_policies.values()):
        if group and group not in groups:
            groups[group] = _Group(tuple(limits[item.name] for item in group))
    # ``None`` rather than an empty table: a table's truth is a Python call per request.
    routes: RouteTable[_Group | None] | None = None
    if route_policies:
        routes = RouteTable(
            {template: groups.get(group) for template, group in route_policies.items()}
        )
    return groups.get(global_policies), routes


class _Limit:
    """One policy as a request applies it: the start of its ``RateLimit`` member, its counters."""

    __slots__ = ("allowed", "error", "limited", "policy", "state")

    def __init__(self, policy: RateLimitPolicy, decisions: Counter) -> None:
        self.policy = policy
        self.state = f'"{policy.name}";r='.encode("latin-1")
        self.allowed = decisions.labels(policy.name, "allowed")
        self.limited = decisions.labels(policy.name, "limited")
        self.error = decisions.labels(policy.name, "error")


class _Group:
    """The policies applied together to a request, and their ``RateLimit-Policy`` field."""

    __slots__ = ("limits", "policy_field")

    def __init__(self, limits: tuple[_Limit, ...]) -> None:
        self.limits = limits
        text = ", ".join(limit.policy.header for limit in limits)
        self.policy_field = (b"ratelimit-policy", text.encode("latin-1"))


__all__ = [
    "DEFAULT_EXCLUDE_PATHS",
    "QUOTA_EXCEEDED_TYPE",
    "RATE_LIMITED",
    "RATE_LIMIT_UNAVAILABLE",
    "RateLimitKeywords",
    "RateLimitMiddleware",
    "RateLimitOptions",
]

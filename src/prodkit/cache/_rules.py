"""What is cached, for whom and how long: rules, reads and their keys, Cache-Control, freshness.

:class:`CacheRule` and :class:`Route` say which routes are cached and build their entry and tag
keys; :class:`RequestReader` decides whether one read may use the cache (RFC 9111 section 3.5,
the route's rule) and works out its keys; the rest reads ``Cache-Control`` (section 5.2),
dates and entity tags, and the freshness lifetime of a response (section 4.2.1).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from typing import Literal
from urllib.parse import parse_qsl, urlencode

from prodkit._core import options as valid
from prodkit._core.callers import Caller
from prodkit._core.exceptions import ConfigurationError
from prodkit._core.headers import get_all_headers, get_header
from prodkit._core.routing import compile_template
from prodkit._core.state import request_state
from prodkit._core.types import Scope
from prodkit.cache._cache import flush_key, tag_key

_TAG_FIELD = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)}")
_EMPTY_PART = (0).to_bytes(8, "big")  # an empty query, length-prefixed


@dataclass(frozen=True, slots=True)
class CacheRule:
    """How one route is cached.

    Arguments:
        ttl: seconds an entry is kept (shortened by the response's ``s-maxage``, ``max-age``
            or ``Expires``).
        per_caller: key entries by the caller too, the middleware's ``caller`` (default
            ``False``); a request whose caller is unknown is not cached. Requests that carry
            ``Authorization`` or ``Cookie`` are cached on such a route (each caller's entries
            are only ever served to that caller): that is what a caller derived from the
            credentials is for.
        tags: tag templates stamped on every entry of the route, filled from the route's path
            parameters and ``{caller}`` (the caller), e.g. ``("fund:{id}", "user:{caller}")``.
            Invalidating a tag makes every entry carrying it stale (default ``()``: none).
        allow_credentials: on a shared route (no ``per_caller``), let requests that carry
            ``Authorization`` or ``Cookie`` use the shared entries, and store the answer to
            such a request only when the response says ``public``, ``s-maxage`` or
            ``must-revalidate`` (RFC 9111 section 3.5) (default ``False``: those requests
            bypass a shared route). A ``per_caller`` route needs no opt-in.
        statuses: statuses stored for this route (default: the middleware's ``statuses``).
    """

    ttl: float
    per_caller: bool = False
    tags: Sequence[str] = ()
    allow_credentials: bool = False
    statuses: frozenset[int] | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """A configured template: a cached read route (``rule`` set) or an invalidating one."""

    template: str
    pattern: re.Pattern[str]
    rule: CacheRule | None
    tags: tuple[str, ...]  # tag templates bumped by a write / stamped on an entry
    flush: bool = False  # entries also carry a flush tag (the cache's store can fail)
    key_prefix: bytes = field(init=False)  # the template's part of every entry key
    by_caller: bool = field(init=False)  # the caller is part of the key or of a tag

    def __post_init__(self) -> None:
        raw = self.template.encode("utf-8", "surrogatepass")
        object.__setattr__(self, "key_prefix", len(raw).to_bytes(8, "big") + raw)
        by_caller = self.rule is not None and self.rule.per_caller
        by_caller = by_caller or any("caller" in _TAG_FIELD.findall(tag) for tag in self.tags)
        object.__setattr__(self, "by_caller", by_caller)

    def under(self, root_path: str) -> Route:
        """This route in an app served under ``root_path``: the same template and key prefix,
        but tags are filled from the full path the request arrives with (``/api/funds/1``)."""
        return replace(self, pattern=re.compile(re.escape(root_path) + self.pattern.pattern))

    def keys(
        self, origin: str, path: str, query: bytes, caller_name: str | None
    ) -> tuple[str, tuple[str, ...]]:
        """The entry key's hash and the tag version keys of a read (path tag first, flush tag last).

        ``origin`` is the target URI's scheme and authority (``https://example.com``).
        """
        tags = (self.render_tags(path, caller_name) or ()) if self.tags else ()
        raw_origin = origin.encode("utf-8", "surrogatepass")
        raw_path = path.encode("utf-8", "surrogatepass")
        # length-prefixed, so no choice of host, path or query can imitate another split
        parts = [
            self.key_prefix,
            len(raw_origin).to_bytes(8, "big"),
            raw_origin,
            len(raw_path).to_bytes(8, "big"),
            raw_path,
        ]
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
        if self.flush:
            return base, (tag_key("path:" + path), *(tag_key(t) for t in tags), flush_key(base))
        return base, (tag_key("path:" + path), *(tag_key(t) for t in tags))

    def render_tags(self, path: str, caller_name: str | None) -> tuple[str, ...] | None:
        """The route's tags filled in for ``path``, or ``None`` when ``path`` is not this route."""
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


def check_routes(routes: Mapping[str, CacheRule], caller: Caller | None, tag_ttl: float) -> None:
    """Refuse a rule that is not one, or that the cache (its ``tag_ttl``) or the caller cannot
    serve."""
    for template, rule in routes.items():
        if not isinstance(rule, CacheRule):
            raise ConfigurationError(
                f"routes[{template!r}] must be a CacheRule(ttl=...), not {type(rule).__name__}"
            )
        valid.positive_seconds(f"routes[{template!r}].ttl", rule.ttl, example=60)
        if rule.ttl > tag_ttl:
            raise ConfigurationError(
                f"routes[{template!r}]: ttl {rule.ttl}s exceeds the cache's tag_ttl "
                f"{tag_ttl}s; raise ResponseCache(tag_ttl=...)"
            )
        if rule.per_caller and caller is None:
            raise ConfigurationError(
                f"routes[{template!r}] is per_caller: pass caller= (e.g. "
                "caller_from_header('X-User-Id'))"
            )
        if isinstance(rule.tags, str):
            raise ConfigurationError(f"routes[{template!r}]: tags must be a list of strings")
        check_tags(template, rule.tags, caller)


def check_invalidations(invalidate: Mapping[str, Sequence[str]], caller: Caller | None) -> None:
    """Refuse ``{template: [tag templates]}`` whose tags are not a list of valid templates."""
    for template, tags in invalidate.items():
        if isinstance(tags, str):
            raise ConfigurationError(f"invalidate[{template!r}] must be a list of tag templates")
        check_tags(template, tags, caller)


def read_routes(routes: Mapping[str, CacheRule], flushable: bool) -> list[tuple[str, Route]]:
    """The cached routes (checked by :func:`check_routes`); ``flushable``: the cache's store
    can fail, so entries carry a flush tag."""
    return [
        (template, Route(template, compile_template(template), rule, tuple(rule.tags), flushable))
        for template, rule in routes.items()
    ]


def invalidation_routes(invalidate: Mapping[str, Sequence[str]]) -> list[tuple[str, Route]]:
    """The extra ``{template: [tag templates]}`` that writes invalidate (checked by
    :func:`check_invalidations`)."""
    return [
        (template, Route(template, compile_template(template), None, tuple(tags)))
        for template, tags in invalidate.items()
    ]


def check_tags(template: str, tags: Sequence[str], caller: Caller | None) -> None:
    """Reject tag templates that name anything but the route's parameters and ``{caller}``."""
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


# -- reads: whether one may use the cache, and its keys -----------------------------------------


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
        # Without a Host header the origin is the server's address, which the memo leaves out:
        # such a read is keyed afresh.
        memo = (route.template, scheme, host, path, query, caller_name) if host else None
        keys = self._keys.get(memo) if memo else None
        if keys is None:  # a URL not read lately: parse and hash it
            keys = route.keys(origin(scheme, host, scope.get("server")), path, query, caller_name)
            if memo:
                keys = self._remember(memo, keys)
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


# -- Cache-Control, dates, entity tags and freshness (RFC 9111) ---------------------------------


#: An entity tag, weak or strong (RFC 9110 section 8.8.3), as ``If-None-Match`` lists them.
_ENTITY_TAG = re.compile(rb'(?:W/)?"[^"]*"')


#: ``tchar`` (RFC 9110 section 5.6.2): what a directive's name and unquoted value are made of.
_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_OWS = " \t"


def cache_control(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """``Cache-Control`` directives (RFC 9111 section 5.2) as ``{name: value}``, names lower-case.

    See :func:`parse_cache_control`; this keeps what could be read of a malformed field.
    """
    return parse_cache_control(get_all_headers(headers, b"cache-control"))[0]


def parse_cache_control(lines: Iterable[bytes]) -> tuple[dict[str, str], bool]:
    """The directives of ``Cache-Control`` field lines, and whether every line was well-formed.

    The grammar is RFC 9111 section 5.2's ``#( token [ "=" ( token / quoted-string ) ] )``
    with RFC 9110 section 5.6's lists and quoted strings: a comma inside a quoted string is
    part of the value (``x="a, max-age=9"`` is one directive), a quoted value is unescaped
    (``\\"`` is ``"``), empty list elements and whitespace around commas are allowed. Names
    are lower-cased; of a directive given twice the first counts (RFC 9111 section 4.2.1).

    Anything else (an unterminated quoted string, a name that is not a token, ``=`` with no
    value, text after a value) makes the field malformed: the second item is then ``False``,
    and the first holds what could be read (a caller storing responses refuses them).
    """
    directives: dict[str, str] = {}
    valid = True
    for line in lines:
        valid = _read_directives(line.decode("latin-1"), directives) and valid
    return directives, valid


def _read_directives(text: str, directives: dict[str, str]) -> bool:
    """Add one field line's directives to ``directives``; ``False`` if it is malformed."""
    valid = True
    end = len(text)
    at = 0
    while at < end:
        if text[at] in _OWS or text[at] == ",":  # empty list elements and OWS (5.6.1)
            at += 1
            continue
        start = at
        while at < end and text[at] in _TCHARS:
            at += 1
        name = text[start:at].lower()
        value = ""
        after = _skip_ows(text, at)
        if after < end and text[after] == "=":
            at = _skip_ows(text, after + 1)
            if at < end and text[at] == '"':
                value, at, closed = _quoted_string(text, at)
                valid = valid and closed
            else:
                start = at
                while at < end and text[at] in _TCHARS:
                    at += 1
                value = text[start:at]
                valid = valid and at > start
        else:
            at = after
        at = _skip_ows(text, at)
        if not name or (at < end and text[at] != ","):
            valid = False
            at = _next_element(text, at)
        if name:
            directives.setdefault(name, value)
    return valid


def _skip_ows(text: str, at: int) -> int:
    while at < len(text) and text[at] in _OWS:
        at += 1
    return at


def _quoted_string(text: str, at: int) -> tuple[str, int, bool]:
    """The unescaped quoted string starting at ``text[at]`` (a ``"``), the index after it, and
    whether it was closed."""
    chars: list[str] = []
    at += 1
    while at < len(text):
        char = text[at]
        if char == "\\" and at + 1 < len(text):
            chars.append(text[at + 1])
            at += 2
        elif char == '"':
            return "".join(chars), at + 1, True
        else:
            chars.append(char)
            at += 1
    return "".join(chars), at, False


def _next_element(text: str, at: int) -> int:
    """The index of the comma that ends the malformed element at ``at`` (quoted strings
    skipped), or the end of ``text``."""
    while at < len(text):
        if text[at] == ",":
            return at
        if text[at] == '"':
            at = _quoted_string(text, at)[1]
        else:
            at += 1
    return at


def delta_seconds(value: str | None) -> int | None:
    """A ``delta-seconds`` value (RFC 9111 section 1.2.2), or ``None`` if absent or invalid."""
    if value is None or not value.isdigit():
        return None
    return int(value)


def http_date(value: bytes) -> float | None:
    """An HTTP-date (RFC 9110 section 5.6.7, all three formats) as epoch seconds, else ``None``."""
    try:
        parsed = parsedate_to_datetime(value.decode("latin-1").strip())
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if parsed.tzinfo is None:  # "-0000": HTTP dates are always GMT
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def freshness_lifetime(
    headers: Iterable[tuple[bytes, bytes]],
    generated_at: float,
    directives: Mapping[str, str] | None = None,
) -> float | None:
    """How long a shared cache may use a response (RFC 9111 section 4.2.1), or ``None``.

    ``s-maxage``, else ``max-age``, else ``Expires`` minus ``Date`` (or minus ``generated_at``
    when the response has no valid ``Date``); ``None`` when the response says nothing, so the
    rule's TTL alone applies. Invalid freshness information counts as already expired (0):
    an ``Expires`` that is not an HTTP-date, ``Expires: 0`` included (section 5.3), and a
    ``max-age`` that is not a number (section 4.2.1 encourages it). Of several ``Expires``
    lines the first is used. ``directives`` are the response's ``Cache-Control`` if already
    parsed.
    """
    headers = list(headers)
    if directives is None:
        directives = cache_control(headers)
    for name in ("s-maxage", "max-age"):  # section 5.3: these take precedence over Expires
        if name in directives:
            seconds = delta_seconds(directives[name])
            return 0.0 if seconds is None else float(seconds)
    expires = get_header(headers, b"expires")
    if expires is None:
        return None
    expires_at = http_date(expires)
    if expires_at is None:
        return 0.0
    date = get_header(headers, b"date")
    date_at = http_date(date) if date is not None else None
    return max(0.0, expires_at - (generated_at if date_at is None else date_at))


def etag_matches(if_none_match: bytes, etag: bytes) -> bool:
    """Whether ``If-None-Match`` matches ``etag`` by weak comparison (RFC 9110 section 13.1.2)."""
    if if_none_match.strip() == b"*":
        return True
    opaque = etag.removeprefix(b"W/")
    return any(tag.removeprefix(b"W/") == opaque for tag in _ENTITY_TAG.findall(if_none_match))


__all__ = [
    "CacheRequest",
    "CacheRule",
    "Outcome",
    "RequestReader",
    "Route",
    "cache_control",
    "check_invalidations",
    "check_routes",
    "check_tags",
    "delta_seconds",
    "etag_matches",
    "freshness_lifetime",
    "http_date",
    "invalidation_routes",
    "origin",
    "parse_cache_control",
    "read_routes",
]

"""Which routes are cached and how: :class:`CacheRule`, its validation, and entry and tag keys."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qsl, urlencode

from prodkit._core import options as valid
from prodkit._core.callers import Caller
from prodkit._core.exceptions import ConfigurationError
from prodkit._core.routing import compile_template
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


__all__ = [
    "CacheRule",
    "Route",
    "check_invalidations",
    "check_routes",
    "check_tags",
    "invalidation_routes",
    "read_routes",
]

"""Redaction: the secrets a log line must never carry, and the processor that removes them.

:class:`Redactor` is a structlog processor usable in any chain; the access log also uses its
``redact_query`` and ``is_secret_key`` for the query string and logged headers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote_plus

from structlog.typing import EventDict, WrappedLogger

from prodkit._core.exceptions import ConfigurationError

#: What a redacted value is replaced with.
REDACTED = "[REDACTED]"

#: Headers whose values are never logged (compared case-insensitively).
DEFAULT_REDACT_HEADERS: tuple[str, ...] = (
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-health-key",
)

#: Query parameters whose values are never logged (compared case-insensitively).
DEFAULT_REDACT_QUERY_PARAMS: tuple[str, ...] = (
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "password",
    "passwd",
    "secret",
    "client_secret",
    "api_key",
    "apikey",
    "key",
    "signature",
    "sig",
    "auth",
    "code",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
)

#: Dict keys whose values are never logged, at any depth: a key equal to one of these or ending
#: in ``_<word>`` (``db_password``, ``access_token``, ``client_secret``) is redacted.
DEFAULT_REDACT_KEYS: tuple[str, ...] = (
    "password",
    "passwd",
    "token",
    "secret",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
)

_KEY_CACHE_LIMIT = 4096
_CONTAINERS = frozenset({dict, list, tuple})


def _normalize(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _name_pattern(name: str) -> str:
    """A regex for query parameter ``name`` as it may appear in a URL.

    ``-`` and ``_`` match each other, and every character may be percent-encoded
    (``access%5Ftoken`` is ``access_token`` to the app that decodes it, so it is to us).
    """
    parts = []
    for char in name:
        if char in "-_":
            parts.append("(?:[-_]|%2d|%5f)")
        else:
            codes = {f"%{ord(c):02x}" for c in (char.lower(), char.upper()) if ord(c) < 128}
            parts.append("(?:" + "|".join([re.escape(char), *sorted(codes)]) + ")")
    return "".join(parts)


class Redactor:
    """A structlog processor that replaces secrets in an event with ``[REDACTED]``.

    What is redacted (all names compared case-insensitively, ``-`` and ``_`` alike):

    * the value of any key, at any depth of dicts and lists in the event, that is a secret
      header (``Authorization``, ``Cookie``, ``X-API-Key`` ...) or a secret word
      (``password``, ``token``, ``secret`` ...) or ends with ``_<word>`` (``db_password``);
    * in the event message (``event``) and in query strings: the values of secret query
      parameters (``?token=...``) and the credentials of ``Bearer``/``Basic`` authorization.

    Dicts and lists inside the event are copied before being changed: the caller's objects
    are left alone. Use it in any structlog chain (before the renderer), or through
    :func:`configure_logging`, which installs it by default.

    Arguments:
        keys: secret words for dict keys (default :data:`DEFAULT_REDACT_KEYS`).
        headers: header names whose values are secret (default :data:`DEFAULT_REDACT_HEADERS`).
        query_params: secret query parameters (default :data:`DEFAULT_REDACT_QUERY_PARAMS`).
        replacement: the text put in place of a secret.
    """

    __slots__ = (
        "_cache",
        "_exact",
        "_plain",
        "_query_names",
        "_suffixes",
        "_text",
        "_texts",
        "replacement",
    )

    def __init__(
        self,
        keys: Iterable[str] = DEFAULT_REDACT_KEYS,
        headers: Iterable[str] = DEFAULT_REDACT_HEADERS,
        query_params: Iterable[str] = DEFAULT_REDACT_QUERY_PARAMS,
        *,
        replacement: str = REDACTED,
    ) -> None:
        for group in (keys, headers, query_params):
            if isinstance(group, str):
                raise ConfigurationError(
                    "keys, headers and query_params take a list of names, not one string"
                )
        words = {_normalize(k) for k in keys if k.strip()}
        self._exact = frozenset(words | {_normalize(h) for h in headers if h.strip()})
        self._suffixes = tuple(f"_{word}" for word in sorted(words))
        self._query_names = frozenset(_normalize(q) for q in query_params if q.strip())
        names = sorted({q.strip() for q in query_params if q.strip()}, key=len, reverse=True)
        alternatives = [r"\b(?:bearer|basic)\s+()[A-Za-z0-9._~+/=-]+"]
        if names:
            joined = "|".join(_name_pattern(name) for name in names)
            alternatives.append(rf"(?:^|(?<=[?&;\s\"']))(?:{joined})=()[^&;\s\"'#]*")
        self._text = re.compile("|".join(alternatives), re.IGNORECASE)
        self._cache: dict[str, bool] = {}
        self._plain: set[Any] = set()
        self._texts: dict[str, str] = {}
        self.replacement = replacement

    def is_secret_key(self, key: str) -> bool:
        """Whether the value under dict key ``key`` is redacted."""
        found = self._cache.get(key)
        if found is None:
            norm = _normalize(key)
            found = norm in self._exact or norm.endswith(self._suffixes)
            if len(self._cache) < _KEY_CACHE_LIMIT:
                self._cache[key] = found
        return found

    def is_secret_param(self, name: str) -> bool:
        """Whether query parameter ``name`` is secret, read as the app reads it.

        ``name`` is percent-decoded first (``access%5Ftoken`` is ``access_token``).
        """
        if "%" in name or "+" in name:
            name = unquote_plus(name)
        return _normalize(name) in self._query_names or self.is_secret_key(name)

    def redact_text(self, text: str) -> str:
        """Return ``text`` with secret query values and authorization credentials replaced."""
        if self._text.search(text) is None:
            return text
        return self._text.sub(self._replace_match, text)

    def _replace_match(self, match: re.Match[str]) -> str:
        whole = match.group(0)
        # The empty group marks where the secret starts: keep what precedes it.
        for index in range(1, (match.lastindex or 0) + 1):
            start = match.start(index)
            if start != -1:
                return whole[: start - match.start()] + self.replacement
        return self.replacement

    def redact_query(self, query: str) -> str:
        """Return a query string with the values of secret parameters replaced (order kept)."""
        if not query:
            return query
        parts = query.split("&")
        changed = False
        for index, part in enumerate(parts):
            name, sep, _ = part.partition("=")
            if sep and self.is_secret_param(name):
                parts[index] = f"{name}={self.replacement}"
                changed = True
        return "&".join(parts) if changed else query

    def redact_mapping(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Return a copy of ``values`` with secrets redacted at any depth."""
        return {key: self._value(key, value) for key, value in values.items()}

    def _value(self, key: Any, value: Any) -> Any:
        if isinstance(key, str) and self.is_secret_key(key):
            return self.replacement
        kind = type(value)
        if kind is dict:
            return self.redact_mapping(value)
        if kind is list or kind is tuple:
            return [self._value(None, item) for item in value]
        return value

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        # Hot path: most lines have the same few plain keys and flat values, so both checks
        # are set operations done in C; the per-key work happens only for new keys.
        plain = self._plain
        if not plain.issuperset(event_dict):  # no set is built when every key is known
            for key in event_dict.keys() - plain:
                if self.is_secret_key(key):
                    event_dict[key] = self.replacement
                elif len(plain) < _KEY_CACHE_LIMIT:
                    plain.add(key)
        if not _CONTAINERS.isdisjoint(map(type, event_dict.values())):
            for key, value in event_dict.items():
                if type(value) in _CONTAINERS:
                    event_dict[key] = self._value(None, value)
        event = event_dict.get("event")
        if type(event) is str:
            # Messages are mostly constant texts ("request completed"): remember their verdict.
            texts = self._texts
            redacted = texts.get(event)
            if redacted is None:
                redacted = self.redact_text(event)
                if len(texts) < _KEY_CACHE_LIMIT and len(event) <= 200:
                    texts[event] = redacted
            event_dict["event"] = redacted
        return event_dict


__all__ = [
    "DEFAULT_REDACT_HEADERS",
    "DEFAULT_REDACT_KEYS",
    "DEFAULT_REDACT_QUERY_PARAMS",
    "REDACTED",
    "Redactor",
]

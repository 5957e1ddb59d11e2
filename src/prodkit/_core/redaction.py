"""Redaction: the secrets a log line must never carry, and the processor that removes them.

:class:`Redactor` is a structlog processor usable in any chain (public as
:class:`prodkit.logging.Redactor`); the access log also uses its ``redact_query`` and
``is_secret_key`` for the query string and logged headers, and every line prodkit writes itself
goes through its ``redact_fields`` and :func:`exception_text` first (see ``_core.logs``). It
lives in the core because every concern's lines need it, not only the logging concern's.
"""

from __future__ import annotations

import re
import sys
import traceback
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


def _word_pattern(name: str) -> str:
    """A regex for a key or header name written out in text, ``-`` and ``_`` alike."""
    return "[-_]".join(re.escape(part) for part in re.split("[-_]", name))


def _alternatives(names: Iterable[str], pattern: Any) -> str:
    # Longest first, so that ``access_token`` is tried before ``token``.
    return "|".join(pattern(name) for name in sorted(set(names), key=len, reverse=True))


def exception_text(exc_info: Any) -> str | None:
    """The traceback of ``exc_info`` as Python prints it, or ``None`` when there is none.

    ``exc_info`` is what structlog accepts: ``True`` (the exception being handled), an
    exception, or a ``sys.exc_info()`` tuple. Causes, contexts, notes and exception groups are
    included; local variables never are (no ``repr`` of a frame's values).
    """
    if exc_info is True:
        exc = sys.exception()
    elif isinstance(exc_info, BaseException):
        exc = exc_info
    elif isinstance(exc_info, tuple) and len(exc_info) == 3:
        exc = exc_info[1]
    else:
        return None
    if exc is None:
        return None
    return "".join(traceback.format_exception(exc)).rstrip("\n")


class Redactor:
    """A structlog processor that replaces secrets in an event with ``[REDACTED]``.

    What is redacted (all names compared case-insensitively, ``-`` and ``_`` alike):

    * the value of any key, at any depth of dicts and lists in the event, that is a secret
      header (``Authorization``, ``Cookie``, ``X-API-Key`` ...) or a secret word
      (``password``, ``token``, ``secret`` ...) or ends with ``_<word>`` (``db_password``);
    * in the event message (``event``), in exception tracebacks and in query strings: the
      values of secret query parameters (``?token=...``), the credentials of
      ``Bearer``/``Basic`` authorization, the password of a URL (``redis://:pw@host``), and
      secret keys and headers written out (``'password': '...'``, ``db_password=...``,
      ``X-API-Key: ...``).

    An exception (``exc_info``) is rendered here, as the plain traceback Python prints (never
    with local variables), redacted, under ``exception``: whatever renderer follows, it cannot
    show a secret that a frame held.

    Dicts and lists inside the event are copied before being changed: the caller's objects
    are left alone. Use it in any structlog chain (before the renderer), or through
    :func:`~prodkit.configure_logging`, which installs it unless told not to.

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
        header_names = {h.strip().lower() for h in headers if h.strip()}
        self._exact = frozenset(words | {_normalize(h) for h in header_names})
        self._suffixes = tuple(f"_{word}" for word in sorted(words))
        self._query_names = frozenset(_normalize(q) for q in query_params if q.strip())
        self._text = re.compile(
            "|".join(_text_patterns(words, header_names, {q.strip() for q in query_params})),
            re.IGNORECASE | re.MULTILINE,
        )
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
        """Return ``text`` with the secrets written out in it replaced.

        Those are the values of secret query parameters, authorization credentials, URL
        passwords, and the values of secret keys and headers written as ``name=value``,
        ``'name': 'value'`` or ``Name: value``.
        """
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
        """Return a copy of ``values`` with the values of secret keys redacted at any depth."""
        return {key: self._value(key, value) for key, value in values.items()}

    def redact_fields(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Return a copy of ``values`` with secret keys redacted and every text redacted too.

        What :meth:`redact_mapping` does, plus :meth:`redact_text` on every string at any
        depth and on the ``repr`` of any other object that is not a number, a boolean or
        ``None`` (an object's ``repr`` may hold a URL or a token): for lines whose texts come
        from anywhere, such as an exception's message.
        """
        return {key: self._deep(key, value) for key, value in values.items()}

    def _value(self, key: Any, value: Any) -> Any:
        if isinstance(key, str) and self.is_secret_key(key):
            return self.replacement
        kind = type(value)
        if kind is dict:
            return self.redact_mapping(value)
        if kind is list or kind is tuple:
            return [self._value(None, item) for item in value]
        return value

    def _deep(self, key: Any, value: Any) -> Any:
        if isinstance(key, str) and self.is_secret_key(key):
            return self.replacement
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, dict):
            return {k: self._deep(k, v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._deep(None, item) for item in value]
        if value is None or isinstance(value, bool | int | float):
            return value
        return self.redact_text(repr(value))

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        if "exc_info" in event_dict:  # first: a sys.exc_info() tuple is no list of values
            text = exception_text(event_dict.pop("exc_info"))
            if text is not None:
                event_dict["exception"] = text
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
        exception = event_dict.get("exception")
        if exception is not None:
            event_dict["exception"] = (
                self.redact_text(exception)
                if type(exception) is str
                else self._deep(None, exception)
            )
        return event_dict


def _text_patterns(words: set[str], headers: set[str], query_params: set[str]) -> list[str]:
    """The alternatives of :meth:`Redactor.redact_text`'s regex, one kind of secret each.

    An empty group ``()`` marks where the secret starts; the secret runs to the end of the
    match. Every alternative starts at a delimiter (a lookbehind or a literal), so that a long
    run of letters is never rescanned from each of its characters.
    """
    # A key named like a secret: one of the words, or ending in "_<word>" ("db_password").
    keyed = rf"(?:[\w-]*[-_])?(?:{_alternatives(words, _word_pattern)})" if words else ""
    named = "|".join(
        part
        for part in (_alternatives(query_params, _name_pattern) if query_params else "", keyed)
        if part
    )
    header_names = _alternatives(headers, _word_pattern) if headers else ""
    spelled = "|".join(part for part in (header_names, keyed) if part)
    patterns = [
        # Authorization credentials: "Bearer abc", "Basic dXNlcjpwdw==".
        r"\b(?:bearer|basic)\s+()[A-Za-z0-9._~+/=-]+",
        # A URL's password: "redis://user:pw@host" keeps the user.
        r"://[^\s/:@\"'<>]*:()[^\s/@\"'<>]+(?=@)",
    ]
    if named:
        # "?token=abc", "password=pw", "Config(db_password='pw')".
        patterns.append(
            rf"(?:^|(?<=[?&;\s\"'(,{{]))(?:{named})=(?:[\"']()[^\"']*|()[^&;\s\"'#,)]*)"
        )
    if spelled:
        # "'password': 'pw'", "{\"x-api-key\": \"k\"}" (dict reprs, JSON).
        patterns.append(rf"(?<=[\"'])(?:{spelled})[\"']\s*:\s*(?:[\"']()[^\"']*|()[^\"',}}\]\s]+)")
    if header_names:
        # A header written out: "X-API-Key: k", "Cookie: session=abc; theme=dark" (the
        # scheme of "Authorization: Bearer abc" is kept, as above).
        patterns.append(
            rf"(?:^|(?<=[\s,{{(]))(?:{header_names})[ \t]*:[ \t]*"
            r"(?:(?:bearer|basic)[ \t]+)?()[^\r\n]+"
        )
    return patterns


__all__ = [
    "DEFAULT_REDACT_HEADERS",
    "DEFAULT_REDACT_KEYS",
    "DEFAULT_REDACT_QUERY_PARAMS",
    "REDACTED",
    "Redactor",
    "exception_text",
]

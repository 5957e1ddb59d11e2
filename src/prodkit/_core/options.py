"""Validators for middleware options: one function per kind of option, one message shape.

A middleware's options are a frozen keyword-only dataclass whose ``__post_init__`` calls these,
once, at start-up. Each takes the option's name and its value, returns the value (normalised
where the kind has a normal form) and otherwise raises :class:`ConfigurationError` with a
message in one shape: the option, what is wrong with the value, and what to write instead::

    max_concurrency=0: not a whole number of at least 1; write e.g. max_concurrency=100

:func:`build_options` is the other half of the pattern: a middleware takes ``options=`` or the
same fields as keywords, and this turns either into the dataclass.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from itertools import pairwise
from typing import Any, TypeVar

from prodkit._core.exceptions import ConfigurationError
from prodkit._core.headers import TOKEN

T = TypeVar("T")

#: A header value prodkit may send as configured: printable ASCII, no control characters.
_VALUE = re.compile(r"[\x20-\x7e]+\Z")
#: A classic Prometheus metric name (prometheus-client also accepts UTF-8 ones, which PromQL
#: must quote); a ``metric_prefix`` is the start of one.
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
#: How to make a secret, in the messages that refuse one.
_MAKE_A_KEY = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def _refuse(name: str, value: object, problem: str, write: str) -> ConfigurationError:
    return ConfigurationError(f"{name}={value!r}: {problem}; write {write}")


def positive_int(name: str, value: object, *, example: int = 10, maximum: int | None = None) -> int:
    """``value`` if it is an integer of at least 1 (``True`` is not one), and at most ``maximum``."""
    return _whole(name, value, 1, maximum, example)


def non_negative_int(
    name: str, value: object, *, example: int = 0, maximum: int | None = None
) -> int:
    """``value`` if it is an integer of 0 or more (``True`` is not one), and at most ``maximum``."""
    return _whole(name, value, 0, maximum, example)


def _whole(name: str, value: object, least: int, maximum: int | None, example: int) -> int:
    if maximum is not None:
        write = f"an integer from {least} to {maximum}, e.g. {name}={example}"
    elif least == 1:
        write = f"an integer of at least 1, e.g. {name}={example}"
    else:
        write = f"an integer of 0 or more, e.g. {name}={example}"
    if not isinstance(value, int) or isinstance(value, bool):
        raise _refuse(name, value, "not an integer", write)
    if value < least:
        raise _refuse(name, value, "less than 1" if least == 1 else "negative", write)
    if maximum is not None and value > maximum:
        raise _refuse(name, value, f"more than {maximum}", write)
    return value


def positive_seconds(name: str, value: object, *, example: float = 1.0) -> float:
    """``value`` if it is a finite number of seconds greater than 0 (an int or a float)."""
    write = f"seconds greater than 0, e.g. {name}={example}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if 0 < value < math.inf:
            return value
        raise _refuse(name, value, "not greater than 0 and finite", write)
    raise _refuse(name, value, "not a number", write)


def non_negative_seconds(name: str, value: object, *, example: float = 0.0) -> float:
    """``value`` if it is a finite number of seconds, 0 or more (an int or a float)."""
    write = f"seconds, 0 or more, e.g. {name}={example}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if 0 <= value < math.inf:
            return value
        raise _refuse(name, value, "negative or not finite", write)
    raise _refuse(name, value, "not a number", write)


def fraction(name: str, value: object, *, example: float = 0.5) -> float:
    """``value`` if it is a number from 0 to 1, both included (an int or a float)."""
    write = f"a number from 0 to 1, e.g. {name}={example}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if 0 <= value <= 1:
            return value
        raise _refuse(name, value, "not from 0 to 1", write)
    raise _refuse(name, value, "not a number", write)


def increasing_numbers(
    name: str, value: object, *, example: str = "[0.1, 0.5, 1.0]"
) -> tuple[float, ...]:
    """``value`` as a tuple, if it is a non-empty list of finite numbers, each above the last.

    The shape of a Prometheus histogram's buckets (``+Inf`` is added by prometheus-client).
    """
    write = f"numbers in increasing order, e.g. {name}={example}"
    items = _items(value)
    if items is None or not items:
        raise _refuse(name, value, "not a non-empty list of numbers", write)
    numbers: list[float] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | float) or not math.isfinite(item):
            raise _refuse(name, items, f"{item!r} is not a finite number", write)
        numbers.append(item)
    if any(later <= earlier for earlier, later in pairwise(numbers)):
        raise _refuse(name, items, "not in increasing order", write)
    return tuple(numbers)


def url_path(name: str, value: object, *, example: str = "/metrics") -> str:
    """``value`` if it is a path as ASGI gives it: a string that starts with ``/``."""
    if isinstance(value, str) and value.startswith("/"):
        return value
    raise _refuse(name, value, "not a path starting with '/'", f"e.g. {name}={example!r}")


def path_list(name: str, value: object) -> tuple[str, ...]:
    """``value`` as a tuple of paths (each starting with ``/``; ``/static/*`` for a prefix).

    One string is refused rather than read as a list: ``exclude_paths="/livez"`` would
    otherwise be a list of characters.
    """
    return _each(
        name,
        value,
        "paths",
        f"a list such as {name}=['/livez', '/static/*']",
        lambda item: item if item.startswith("/") else None,
        "must start with '/'",
    )


def metric_prefix(name: str, value: object) -> str:
    """``value`` if it can start a Prometheus metric name (``""`` included: no prefix)."""
    if isinstance(value, str) and (value == "" or METRIC_NAME.match(value)):
        return value
    raise _refuse(
        name,
        value,
        "not a valid start of a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)",
        f"e.g. {name}='myapp_', or {name}='' for none",
    )


def secret(name: str, value: object, *, min_length: int = 16) -> str:
    """``value`` if it is a secret a header can carry: at least ``min_length`` printable
    characters, no spaces at either end.

    The messages never repeat the value (it is a secret): they say what is wrong with it.
    """
    make = f"a random one such as {_MAKE_A_KEY} prints"
    if not isinstance(value, str):
        raise ConfigurationError(f"{name}: not a string; write {make}")
    if len(value) < min_length:
        raise ConfigurationError(
            f"{name}: {len(value)} characters long; write at least {min_length}, {make}"
        )
    if value != value.strip() or not value.isprintable():
        raise ConfigurationError(
            f"{name}: spaces at an end or control characters, which no header can carry; "
            f"write printable characters only, {make}"
        )
    return value


def header_name(name: str, value: object) -> str:
    """``value`` if it is a valid HTTP field name (RFC 9110 ``token``), as written."""
    if isinstance(value, str) and TOKEN.match(value):
        return value
    raise _refuse(
        name,
        value,
        "not a header name (letters, digits and !#$%&'*+.^_`|~- only)",
        f"e.g. {name}='X-Request-ID'",
    )


def http_token(name: str, value: object) -> str:
    """``value`` if it is an HTTP ``token`` (RFC 9110, section 5.6.2): a method, say."""
    if isinstance(value, str) and TOKEN.match(value):
        return value
    raise _refuse(
        name,
        value,
        "not a valid HTTP token (letters, digits and !#$%&'*+.^_`|~- only)",
        "a name such as 'GET' or 'Content-Type'",
    )


def header_value(name: str, value: object) -> str:
    """``value`` if it can be sent as a header value: non-empty printable ASCII, one line."""
    if isinstance(value, str) and _VALUE.match(value):
        return value
    raise _refuse(
        name,
        value,
        "not a non-empty printable ASCII header value (no line breaks)",
        f"the value as it should be sent, or {name}=None for no header",
    )


def header_names(name: str, value: object) -> tuple[str, ...]:
    """``value`` as a tuple of header names (RFC 9110 ``token``), stripped, as written.

    One string is refused rather than read as a list of its characters.
    """
    return _each(
        name,
        value,
        "header names",
        f"a list such as {name}=['Authorization', 'X-Request-ID']",
        lambda item: item.strip() if TOKEN.match(item.strip()) else None,
        "is not a header name",
    )


def one_of(name: str, value: object, choices: Iterable[T]) -> T:
    """``value`` if it is one of ``choices``."""
    allowed = list(choices)
    for choice in allowed:
        if type(value) is type(choice) and value == choice:
            return choice
    listed = ", ".join(repr(choice) for choice in allowed)
    raise _refuse(name, value, "not one of the choices", f"one of {listed}")


def string_list(name: str, value: object) -> tuple[str, ...]:
    """A list of strings as a tuple, stripped, without empty entries or repeats, in order.

    A single string is read as a comma-separated list (``"GET, POST"``), the way an
    environment variable spells one.
    """
    if isinstance(value, str):
        value = value.split(",")
    if isinstance(value, Iterable) and not isinstance(value, bytes | Mapping):
        items = list(value)
        if all(isinstance(item, str) for item in items):
            stripped = (item.strip() for item in items)
            return tuple(dict.fromkeys(item for item in stripped if item))
    raise _refuse(
        name, value, "not a list of strings", f"a list such as {name}=['a', 'b'] or 'a, b'"
    )


def _each(
    name: str,
    value: object,
    what: str,
    write: str,
    accept: Callable[[str], str | None],
    problem: str,
) -> tuple[str, ...]:
    """The strings of a list ``value``, each as ``accept`` returns it (``None``: refused).

    One string is refused rather than read as a list of its characters.
    """
    if isinstance(value, str):
        raise _refuse(name, value, f"a list of {what}, not one string", write)
    items = _items(value)
    if items is None:
        raise _refuse(name, value, f"not a list of {what}", write)
    accepted: list[str] = []
    for item in items:
        made = accept(item) if isinstance(item, str) else None
        if made is None:
            raise _refuse(name, items, f"{item!r} {problem}", write)
        accepted.append(made)
    return tuple(accepted)


def _items(value: object) -> list[object] | None:
    """The items of a list-like ``value`` (read once), or ``None`` if it is not one."""
    if isinstance(value, Iterable) and not isinstance(value, str | bytes | Mapping):
        return list(value)
    return None


def build_options(cls: type[T], options: T | None, keywords: Mapping[str, Any]) -> T:
    """The options dataclass of a middleware called with ``options=`` or with its keywords.

    Passing both is a :class:`ConfigurationError`: one of the two would be silently ignored.
    A keyword the dataclass does not have is the ``TypeError`` of any wrong call.
    """
    if options is None:
        return cls(**keywords)
    if keywords:
        raise ConfigurationError(
            f"options= and the keywords {', '.join(sorted(keywords))} were both given; "
            f"pass options={cls.__name__}(...) or the keywords alone"
        )
    if not isinstance(options, cls):
        raise _refuse("options", options, f"not of type {cls.__name__}", f"{cls.__name__}(...)")
    return options


__all__ = [
    "METRIC_NAME",
    "build_options",
    "fraction",
    "header_name",
    "header_names",
    "header_value",
    "http_token",
    "increasing_numbers",
    "metric_prefix",
    "non_negative_int",
    "non_negative_seconds",
    "one_of",
    "path_list",
    "positive_int",
    "positive_seconds",
    "secret",
    "string_list",
    "url_path",
]

"""What identifies an idempotent request: its key, the caller's storage key, its fingerprint.

Pure functions with no state, shared by the middleware and its tests: parsing the
``Idempotency-Key`` field (draft-ietf-httpapi-idempotency-key-header, section 2), scoping a key
to its caller, and fingerprinting a request so a reused key is told apart from a retry.
"""

from __future__ import annotations

import hashlib
import json
import re
from operator import itemgetter

from prodkit._core.headers import scope_header
from prodkit._core.types import Scope

_SF_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"\Z')
# A Structured Field token (RFC 8941 section 3.3.4): an HTTP token that may also hold : and /.
_SF_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~:/-]+\Z")
_JSON_TYPE = re.compile(rb"\s*application/(?:[\w.+-]+\+)?json\s*(?:;|\Z)", re.IGNORECASE)


def parse_idempotency_key(value: bytes, max_length: int = 255) -> str | None:
    """Return the key carried by an ``Idempotency-Key`` field value, or ``None`` if invalid.

    The draft makes the field a structured-field String (RFC 8941 section 3.3.3):
    ``"8e03978e-40d5-43e8-bc93-6894a57f9324"`` (with ``\\"`` and ``\\\\`` escapes). A bare
    token of ``A-Z a-z 0-9 ! # $ % & ' * + . ^ _ ` | ~ : / -`` is accepted too, because many
    clients send the UUID unquoted. The key must be 1 to ``max_length`` characters of
    printable ASCII; parameters are not allowed.
    """
    try:
        text = value.decode("ascii").strip(" \t")
    except UnicodeDecodeError:
        return None
    found = _SF_STRING.match(text)
    if found is not None:
        key = re.sub(r"\\(.)", r"\1", found.group(1))
    elif _SF_TOKEN.match(text):
        key = text
    else:
        return None
    if not 0 < len(key) <= max_length:
        return None
    return key


def _lp(*parts: bytes) -> bytes:
    # Length prefixes keep ("ab", "c") and ("a", "bc") apart in one digest.
    return b"".join(len(part).to_bytes(8, "big") + part for part in parts)


def storage_key(namespace: str, caller: str, key: str) -> str:
    """The store key for ``key`` sent by ``caller``: a SHA-256 hex digest (64 characters)."""
    parts = (namespace, caller, key)
    return hashlib.sha256(_lp(*(p.encode("utf-8", "surrogatepass") for p in parts))).hexdigest()


#: Zeros a whole number may end in and still be written out in full (``10**20`` is); beyond,
#: it is written ``1e+21``. Keeps a client's ``1e999999`` from becoming a million zeros.
_MAX_ZEROS = 20
#: Digits of an exponent that is worked out; a longer exponent (``1e123456789012345678901``,
#: no real number) leaves the number compared by its text, which may only tell equal values
#: apart, never merge different ones. Also keeps ``int()`` far below Python's digit limit.
_MAX_EXPONENT_DIGITS = 20


class _Text(str):
    """Canonical JSON text of a number, an object or an array, already written."""

    __slots__ = ()


_ZERO = _Text("0")


def _canonical_number(text: str) -> _Text:
    """The exact decimal value of the JSON number ``text``, written one way only.

    ``1e6``, ``1000000.0``, ``10e5`` and ``1E+6`` give ``1000000``; ``-0`` gives ``0``; ``0.5``
    and ``5e-1`` give ``0.5``. The form is Python's ``repr`` of a float, applied to the exact
    value: a whole number in full (up to 20 trailing zeros), other numbers positional from
    ``0.0001`` to below ``1e16`` and ``1.5e-05`` beyond. Linear in ``len(text)``: nothing is
    converted to ``int`` but an exponent of at most 20 digits.
    """
    negative = text.startswith("-")
    mantissa, _, exponent = text.lstrip("-").lower().partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    if not digits:
        return _ZERO
    significand = digits.rstrip("0")
    exponent_digits = exponent.lstrip("+-").lstrip("0")
    if len(exponent_digits) > _MAX_EXPONENT_DIGITS:
        return _Text(text)
    power = int(exponent_digits or "0")
    if exponent.startswith("-"):
        power = -power
    power += len(digits) - len(significand) - len(fraction)
    # The value is significand * 10**power; ``point`` digits of it come before the point.
    point = len(significand) + power
    if 0 <= power <= _MAX_ZEROS:
        written = significand + "0" * power
    elif power < 0 and -3 <= point <= 16:
        if point > 0:
            written = significand[:point] + "." + significand[point:]
        else:
            written = "0." + "0" * -point + significand
    else:
        head = significand[0] + ("." + significand[1:] if len(significand) > 1 else "")
        written = f"{head}e{point - 1:+03d}"
    return _Text("-" + written if negative else written)


def _canonical_integer(text: str) -> _Text:
    # An integer's text is its canonical form but for "-0" and a run of more than 20 zeros.
    if text == "-0" or text.endswith("0" * (_MAX_ZEROS + 1)):
        return _canonical_number(text)
    return _Text(text)


_name = itemgetter(0)
_encode_string = json.JSONEncoder(ensure_ascii=False).encode
#: The C encoder, for bodies whose parsed value it writes canonically (see ``_PLAIN``).
_dump = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode

#: Twenty-one digits in a row, in a number or a string: an integer whose canonical text may
#: differ from ``str(int(text))`` (more than 20 trailing zeros, or more digits than ``int()``
#: takes). Matched on the raw body: a false match (in a string) only takes the exact path.
_LONG_DIGITS = re.compile(rb"[0-9]{21}")


class _NotPlain(Exception):
    """A number or an object that only the exact path writes canonically."""


def _plain_float(text: str) -> float | int:
    # At most 15 digits and no exponent: a float holds the value exactly and repr() writes
    # it as _canonical_number() does; a whole number (1.0, -0.0) is written as the integer.
    if len(text) > 16 or "e" in text or "E" in text:
        raise _NotPlain
    value = float(text)
    return int(value) if value.is_integer() else value


def _unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # A member name given twice: the exact path keeps both members, a dict would not.
    members = dict(pairs)
    if len(members) != len(pairs):
        raise _NotPlain
    return members


class _Pairs(list[tuple[str, object]]):
    """An object's members as parsed, in order (sorted by name when written)."""

    __slots__ = ()


def _write(value: object, parts: list[str]) -> None:
    # Appends the canonical text of ``value`` to ``parts``: joined once at the end, so that
    # nesting does not copy what is written inside it again at every level.
    if type(value) is str:
        parts.append(_encode_string(value))
    elif isinstance(value, _Text):
        parts.append(value)
    elif type(value) is _Pairs:
        value.sort(key=_name)  # stable: a name given twice keeps both members, in order
        parts.append("{")
        for index, (name, member) in enumerate(value):
            if index:
                parts.append(",")
            parts.append(_encode_string(name))
            parts.append(":")
            _write(member, parts)
        parts.append("}")
    elif type(value) is list:
        parts.append("[")
        for index, item in enumerate(value):
            if index:
                parts.append(",")
            _write(item, parts)
        parts.append("]")
    else:
        parts.append("null" if value is None else "true" if value else "false")


def _exact(body: bytes) -> str:
    """The canonical text, every number written from its exact decimal value."""
    parts: list[str] = []
    _write(
        json.loads(
            body,
            parse_int=_canonical_integer,
            parse_float=_canonical_number,
            parse_constant=_Text,
            object_pairs_hook=_Pairs,
        ),
        parts,
    )
    return "".join(parts)


def canonical_body(body: bytes, content_type: bytes | None) -> tuple[bytes, bytes]:
    """Return ``(kind, bytes)`` for fingerprinting: canonical JSON for JSON bodies, else raw.

    JSON (``application/json`` or ``application/*+json``) is re-serialised with members sorted
    by name and no insignificant whitespace, so member order and formatting do not change the
    fingerprint, and every number is written from its exact decimal value
    (:func:`_canonical_number`): ``1e6`` and ``1000000.0`` are one number,
    ``1.000000000000000001`` and ``1.000000000000000002`` two. A member name given twice keeps
    both members, in order. A body that does not parse as JSON (or is nested too deep to) is
    taken as raw bytes.

    Linear in the body's size: a body whose numbers are all plain (integers, decimals of at
    most 15 digits without an exponent) and whose member names are unique is parsed and
    written by the standard library's C code; any other takes the exact path, in Python, with
    the same result.
    """
    if body and content_type is not None and _JSON_TYPE.match(content_type):
        try:
            canonical = None
            if _LONG_DIGITS.search(body) is None:
                try:
                    value = json.loads(body, parse_float=_plain_float, object_pairs_hook=_unique)
                    canonical = _dump(value)
                except _NotPlain:
                    pass
            if canonical is None:
                canonical = _exact(body)
        except (ValueError, RecursionError):
            return b"raw", body
        # JSON may carry lone surrogates ("\ud800"): keep them, a client's odd body is no 500.
        return b"json", canonical.encode("utf-8", "surrogatepass")
    return b"raw", body


def request_fingerprint(scope: Scope, body: bytes) -> bytes:
    """SHA-256 over the method, path, query string and (canonical) body, each length-prefixed."""
    kind, canonical = canonical_body(body, scope_header(scope, b"content-type"))
    path = (scope.get("root_path", "") + scope.get("path", "/")).encode("utf-8", "surrogateescape")
    return hashlib.sha256(
        _lp(
            scope.get("method", "").encode("ascii"),
            path,
            bytes(scope.get("query_string", b"")),
            kind,
            canonical,
        )
    ).digest()


__all__ = ["canonical_body", "parse_idempotency_key", "request_fingerprint", "storage_key"]

"""A framework's own error response, read and rewritten as an RFC 9457 problem.

Frameworks answer their own errors (an unknown route, a wrong method, a failed validation, an
``HTTPException``) each in a shape of their own: FastAPI ``{"detail": ...}``, Litestar
``{"status_code": ..., "detail": ..., "extra": ...}``, Starlette plain text, Quart and Django
HTML. This module turns such a response into a problem with the same status, a ``code``
derived from the status, the framework's detail when it is text and its validation errors as
``errors[].pointer``. It reads bytes only: no framework is imported.

The rule for what is converted (``docs/errors.md`` states it for users):

* ``text/plain``, a response without ``Content-Type``: always; the text is the detail.
* ``text/html``, ``application/xhtml+xml``: always; a page is for people, so nothing is scraped
  from it and the detail is the status's own.
* JSON (``application/json``, ``…+json``): only when the body is exactly one of the known
  framework shapes below, so that nothing it says is lost. Any other JSON is the app's own
  deliberate answer and passes as it is.
* Anything else (``application/problem+json`` included): passes as it is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from prodkit._core.problems import FieldError, encode_problem, problem_dict
from prodkit._core.types import RawHeaders

#: The ``code`` of a converted response, by status: the status's RFC 9110 reason phrase in
#: UPPER_SNAKE, except 422, which frameworks answer when a request fails validation.
STATUS_CODES: Mapping[int, str] = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    402: "PAYMENT_REQUIRED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    406: "NOT_ACCEPTABLE",
    407: "PROXY_AUTHENTICATION_REQUIRED",
    408: "REQUEST_TIMEOUT",
    409: "CONFLICT",
    410: "GONE",
    411: "LENGTH_REQUIRED",
    412: "PRECONDITION_FAILED",
    413: "CONTENT_TOO_LARGE",
    414: "URI_TOO_LONG",
    415: "UNSUPPORTED_MEDIA_TYPE",
    416: "RANGE_NOT_SATISFIABLE",
    417: "EXPECTATION_FAILED",
    421: "MISDIRECTED_REQUEST",
    422: "VALIDATION_FAILED",
    423: "LOCKED",
    424: "FAILED_DEPENDENCY",
    425: "TOO_EARLY",
    426: "UPGRADE_REQUIRED",
    428: "PRECONDITION_REQUIRED",
    429: "TOO_MANY_REQUESTS",
    431: "REQUEST_HEADER_FIELDS_TOO_LARGE",
    451: "UNAVAILABLE_FOR_LEGAL_REASONS",
    500: "INTERNAL_ERROR",
    501: "NOT_IMPLEMENTED",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
    505: "HTTP_VERSION_NOT_SUPPORTED",
    506: "VARIANT_ALSO_NEGOTIATES",
    507: "INSUFFICIENT_STORAGE",
    508: "LOOP_DETECTED",
    510: "NOT_EXTENDED",
    511: "NETWORK_AUTHENTICATION_REQUIRED",
}
#: The code of any response, whatever its status, that carries validation errors.
VALIDATION_FAILED = "VALIDATION_FAILED"
_VALIDATION_DETAIL = "The request is invalid; see errors."

#: What a body is, by its media type: converted as JSON, as text, as a page, or not at all.
JSON, TEXT, HTML = "json", "text", "html"
_KINDS = {
    b"": TEXT,  # no Content-Type: what a bare ``Response(status_code=404)`` sends
    b"text/plain": TEXT,
    b"text/html": HTML,
    b"application/xhtml+xml": HTML,
    b"application/json": JSON,
    b"application/problem+json": None,  # already a problem
}

#: Headers that describe the body being replaced; every other header is kept (``Allow``,
#: ``WWW-Authenticate``, ``Retry-After``, ``Set-Cookie``, the app's own).
_BODY_HEADERS = frozenset(
    {
        b"content-type",
        b"content-length",
        b"transfer-encoding",
        b"content-encoding",
        b"etag",
        b"last-modified",
        b"content-md5",
        b"digest",
        b"content-digest",
        b"repr-digest",
    }
)
_PROBLEM_HEADERS: RawHeaders = [(b"content-type", b"application/problem+json")]
_CHARSET = re.compile(rb";\s*charset\s*=\s*\"?([A-Za-z0-9._:-]{1,40})", re.IGNORECASE)
#: The path tokens of a Litestar ``key``: ``stages[0].months`` is ``stages``, ``0``, ``months``.
_KEY_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
#: Where a framework says a parameter came from, and the pointer prefix prodkit gives it.
_SOURCES = frozenset({"query", "path", "header", "cookie"})


def code_for(status: int) -> str:
    """The ``code`` of a converted response with ``status`` (see :data:`STATUS_CODES`)."""
    code = STATUS_CODES.get(status)
    if code is not None:
        return code
    return "CLIENT_ERROR" if status < 500 else "SERVER_ERROR"


def _media_type(content_type: bytes | None) -> bytes:
    return (content_type or b"").partition(b";")[0].strip().lower()


def is_problem(content_type: bytes | None) -> bool:
    """Whether ``content_type`` is ``application/problem+json`` (parameters aside)."""
    return _media_type(content_type) == b"application/problem+json"


def body_kind(content_type: bytes | None) -> str | None:
    """How a body of ``content_type`` is converted: :data:`JSON`, :data:`TEXT`, :data:`HTML`
    or ``None`` (it passes as it is)."""
    media = _media_type(content_type)
    if media in _KINDS:
        return _KINDS[media]
    return JSON if media.endswith(b"+json") else None


def convert(
    status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes, kind: str
) -> tuple[RawHeaders, bytes] | None:
    """The headers and body of the problem that replaces a framework's error response.

    ``None`` when the response is to pass as it is: JSON that is not a known framework shape.
    Reading cannot fail: a body that does not decode or parse is treated as having no detail
    (text) or as the app's own (JSON).
    """
    detail: str | None
    errors: list[FieldError] = []
    if kind == JSON:
        read = _from_json(status, body)
        if read is None:
            return None
        detail, errors = read
    elif kind == TEXT:
        detail = _text(body, header(headers, b"content-type"))
    else:
        detail = None
    code = VALIDATION_FAILED if errors else code_for(status)
    if detail is None and errors:
        detail = _VALIDATION_DETAIL
    encoded = encode_problem(problem_dict(status, code, detail, errors=errors))
    kept = [(name, value) for name, value in headers if name.lower() not in _BODY_HEADERS]
    raw: RawHeaders = [
        *_PROBLEM_HEADERS,
        (b"content-length", str(len(encoded)).encode()),
        *kept,
    ]
    if not any(name.lower() == b"cache-control" for name, _ in kept):
        # The body names this request (its request_id): no cache may hand it to another.
        raw.append((b"cache-control", b"no-store"))
    return raw, encoded


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case), whatever the case the app wrote it in:
    ASGI asks for lower-case names, but Django, for one, sends ``Content-Type``."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _text(body: bytes, content_type: bytes | None) -> str | None:
    """The body as text in its declared charset (UTF-8 if none), or ``None`` if it is empty or
    does not decode: bytes that are not the text they claim to be say nothing to a client."""
    charset = "utf-8"
    if content_type is not None and (match := _CHARSET.search(content_type)):
        charset = match.group(1).decode("ascii")
    try:
        # bytes.decode, not codecs.decode: only text encodings, never "zlib" or "base64".
        text = body.decode(charset).strip()
    except (LookupError, UnicodeError):
        return None
    return text or None


def _from_json(status: int, body: bytes) -> tuple[str | None, list[FieldError]] | None:
    """The detail and field errors of a known framework JSON shape, or ``None`` for any other.

    * ``{"detail": "text"}``: FastAPI's (and Starlette-based frameworks') ``HTTPException``.
    * ``{"detail": [{"loc": [...], "msg": "..."}, ...]}``: FastAPI's validation errors.
    * ``{"status_code": <the status>, "detail": "text"}`` with an optional ``"extra"`` that is
      absent, ``null``, or Litestar's validation errors ``[{"message", "key", "source"}]``.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    keys = document.keys()
    detail = document.get("detail")
    if keys == {"detail"}:
        if isinstance(detail, str):
            return detail, []
        errors = _fastapi_errors(detail)
        return None if errors is None else (None, errors)
    if keys in ({"status_code", "detail"}, {"status_code", "detail", "extra"}):
        code = document["status_code"]
        if type(code) is not int or code != status or not isinstance(detail, str):
            return None
        errors = _litestar_errors(document.get("extra"))
        return None if errors is None else (detail, errors)
    return None


def _fastapi_errors(detail: Any) -> list[FieldError] | None:
    """FastAPI's ``[{"loc": ["body", "size"], "msg": ...}]`` as field errors, or ``None``."""
    if not isinstance(detail, list):
        return None
    errors = []
    for item in detail:
        if not isinstance(item, dict):
            return None
        loc, msg = item.get("loc"), item.get("msg")
        if not isinstance(loc, list) or not isinstance(msg, str):
            return None
        if item.get("type") == "json_invalid":
            # The body is not JSON at all; FastAPI's second token is a character offset.
            loc = loc[:1]
        errors.append(FieldError(_located(loc), msg))
    return errors


def _litestar_errors(extra: Any) -> list[FieldError] | None:
    """Litestar's ``[{"message", "key", "source"}]`` as field errors; ``[]`` if there is no
    ``extra``; ``None`` for an ``extra`` of another form (the app's own data)."""
    if extra is None:
        return []
    if not isinstance(extra, list):
        return None
    errors = []
    for item in extra:
        if not isinstance(item, dict) or not item.keys() <= {"message", "key", "source"}:
            return None
        message, key, source = item.get("message"), item.get("key"), item.get("source")
        if not isinstance(message, str) or not isinstance(key, (str, type(None))):
            return None
        if not isinstance(source, (str, type(None))):
            return None
        if key is None:
            pointer = ""
        elif source in _SOURCES:
            pointer = _pointer([source, key])
        elif key == "data":
            pointer = ""  # Litestar names the request body itself ``data``
        else:
            tokens = [name or int(index) for name, index in _KEY_TOKEN.findall(key)]
            pointer = _pointer(tokens)
        errors.append(FieldError(pointer, message))
    return errors


def _located(loc: list[Any]) -> str:
    """A FastAPI ``loc`` as a pointer: ``["body", "size"]`` is ``/size`` (a pointer into the
    body), ``["query", "limit"]`` is ``/query/limit``; path, header and cookie alike."""
    if loc and loc[0] == "body":
        return _pointer(loc[1:])
    return _pointer(loc)


def _pointer(tokens: Sequence[Any]) -> str:
    """An RFC 6901 JSON pointer to ``tokens``: ``~`` is written ``~0`` and ``/`` is ``~1``."""
    return "".join("/" + str(token).replace("~", "~0").replace("/", "~1") for token in tokens)


__all__ = [
    "HTML",
    "JSON",
    "STATUS_CODES",
    "TEXT",
    "VALIDATION_FAILED",
    "body_kind",
    "code_for",
    "convert",
    "header",
    "is_problem",
]

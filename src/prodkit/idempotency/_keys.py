"""What identifies an idempotent request: its key, the caller's storage key, its fingerprint.

Pure functions with no state, shared by the middleware and its tests: parsing the
``Idempotency-Key`` field (draft-ietf-httpapi-idempotency-key-header, section 2), scoping a key
to its caller, and fingerprinting a request so a reused key is told apart from a retry.
"""

from __future__ import annotations

import hashlib
import json
import re

from prodkit._core.headers import scope_header
from prodkit._core.types import Scope

_SF_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"\Z')
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~:/-]+\Z")
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
    elif _TOKEN.match(text):
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


def canonical_body(body: bytes, content_type: bytes | None) -> tuple[bytes, bytes]:
    """Return ``(kind, bytes)`` for fingerprinting: canonical JSON for JSON bodies, else raw.

    JSON (``application/json`` or ``application/*+json``) is re-serialised with sorted keys
    and no insignificant whitespace, so key order and formatting do not change the fingerprint.
    A body that does not parse as JSON is taken as raw bytes.
    """
    if body and content_type is not None and _JSON_TYPE.match(content_type):
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            return b"raw", body
        canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        # JSON may carry lone surrogates ("\\ud800"): keep them, a client's odd body is no 500.
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

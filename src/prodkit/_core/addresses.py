"""Client address resolution: trusted proxies, ``Forwarded`` / ``X-Forwarded-For``, IPv6 grouping."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache
from typing import Any, Literal

from prodkit._core import options as valid
from prodkit._core.exceptions import ConfigurationError
from prodkit._core.headers import get_all_headers
from prodkit._core.state import REQUEST_STATE_KEY, RequestHeaders
from prodkit._core.types import Scope

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ForwardedMode = Literal["auto", "forwarded", "x-forwarded-for", "none"]


@lru_cache(maxsize=8192)
def parse_ip(value: str) -> IPAddress | None:
    """Parse an address as a client may send it, or return ``None`` if it is not one.

    Accepts ``1.2.3.4``, ``1.2.3.4:5678``, ``2001:db8::1``, ``[2001:db8::1]:443`` and a zone id
    (``fe80::1%eth0``, dropped). IPv4-mapped IPv6 (``::ffff:1.2.3.4``) becomes the IPv4 address,
    so one client is one key whichever stack it came through.
    """
    text = value.strip().strip('"')
    if not text or len(text) > 64:
        return None
    if text.startswith("["):
        end = text.find("]")
        if end == -1:
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]  # IPv4 with a port
    text = text.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def normalize_ip(value: str) -> str | None:
    """Return the canonical text of an address (see :func:`parse_ip`), or ``None``."""
    address = parse_ip(value)
    return None if address is None else str(address)


def _forwarded_for(values: list[bytes]) -> list[str]:
    """The ``for=`` parameters of RFC 7239 ``Forwarded`` field lines, in order (empty on garbage)."""
    result: list[str] = []
    for line in values:
        text = line.decode("latin-1")
        for element in _split_quoted(text, ","):
            found = ""
            for pair in _split_quoted(element, ";"):
                name, sep, val = pair.partition("=")
                if sep and name.strip().lower() == "for":
                    found = val.strip()
            # An element without ``for=`` is a hop we cannot place; keep the position so that
            # it is treated like an unknown address and stops the walk.
            result.append(found)
    return result


def _split_quoted(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    escaped = False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            current.append(ch)
            escaped = True
        elif ch == '"':
            quoted = not quoted
            current.append(ch)
        elif ch == sep and not quoted:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    tail = "".join(current).strip()
    if tail or parts:
        parts.append(tail)
    return [p for p in parts if p]


def _trusted(trusted_proxies: Iterable[str]) -> tuple[tuple[IPNetwork, ...], bool]:
    """The trusted networks (IPv4-mapped IPv6 ones as IPv4), and whether ``"*"`` trusts all."""
    if isinstance(trusted_proxies, str):
        trusted_proxies = [p for p in trusted_proxies.split(",") if p.strip()]
    networks: list[IPNetwork] = []
    trust_all = False
    for entry in trusted_proxies:
        entry = entry.strip()
        if entry == "*":
            trust_all = True
            continue
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError as exc:
            raise ConfigurationError(
                f"trusted_proxies: {entry!r} is not an IP address or CIDR network "
                "(examples: '10.0.0.1', '10.0.0.0/8', '::1', '*')"
            ) from exc
        mapped = (
            network.network_address.ipv4_mapped
            if isinstance(network, ipaddress.IPv6Network)
            else None
        )
        if mapped is not None and network.prefixlen >= 96:
            network = ipaddress.ip_network(f"{mapped}/{network.prefixlen - 96}", strict=False)
        networks.append(network)
    return tuple(networks), trust_all


class ClientAddressResolver:
    """Find the real client address of a request, trusting forwarding headers only from proxies.

    The immediate peer (``scope["client"]``) is the client unless it is a trusted proxy. When it
    is, the forwarding header is read right to left (nearest hop first), skipping trusted
    proxies; the first address that is not a trusted proxy is the client. Entries to its left
    were written by the client itself and are never believed, so rotating a spoofed
    ``X-Forwarded-For`` cannot change the result. A hop that is not an address (``unknown``,
    an obfuscated identifier, garbage) stops the walk and the last trusted hop is used.

    Arguments:
        trusted_proxies: addresses and networks (``10.0.0.0/8``, ``::1``) whose forwarding
            headers are honoured. ``"*"`` trusts every peer: only behind a proxy that always
            overwrites the header.
        forwarded: which header to read: ``"auto"`` (default; RFC 7239 ``Forwarded`` when
            present, else ``X-Forwarded-For``), one of them only, or ``"none"``.
        ipv6_prefix: prefix length by which :meth:`key` groups IPv6 clients (default ``64``:
            a subscriber usually gets a /64 or /56, so single addresses are free to rotate).
        ipv4_prefix: the same for IPv4 (default ``32``: every address is its own group).
    """

    __slots__ = (
        "_forwarded",
        "_networks",
        "_settings",
        "_trust_all",
        "ipv4_prefix",
        "ipv6_prefix",
    )

    def __init__(
        self,
        trusted_proxies: Iterable[str] = (),
        *,
        forwarded: ForwardedMode = "auto",
        ipv6_prefix: int = 64,
        ipv4_prefix: int = 32,
    ) -> None:
        valid.one_of("forwarded", forwarded, ("auto", "forwarded", "x-forwarded-for", "none"))
        valid.positive_int("ipv6_prefix", ipv6_prefix, example=64, maximum=128)
        valid.positive_int("ipv4_prefix", ipv4_prefix, example=32, maximum=32)
        self._networks, self._trust_all = _trusted(trusted_proxies)
        self._forwarded = forwarded
        # What the address depends on: resolvers with equal settings find the same address.
        self._settings = (self._networks, self._trust_all, forwarded)
        self.ipv6_prefix = ipv6_prefix
        self.ipv4_prefix = ipv4_prefix

    @property
    def trusts_any(self) -> bool:
        """Whether any proxy is trusted at all (if not, headers are never read)."""
        return self._trust_all or bool(self._networks)

    def is_trusted(self, address: IPAddress) -> bool:
        """Whether ``address`` is one of the trusted proxies."""
        if self._trust_all:
            return True
        return any(address in network for network in self._networks)

    def resolve(self, scope: Scope) -> str | None:
        """Return the client's address as canonical text, or ``None`` when it is unknown."""
        address = self.resolve_ip(scope)
        return None if address is None else str(address)

    def resolve_ip(self, scope: Scope) -> IPAddress | None:
        """Return the client's address as an :mod:`ipaddress` object, or ``None``.

        Within a request, the answer is kept on its state (:class:`~prodkit.asgi.RequestState`):
        the access log and the rate limiter, with the same trusted proxies, resolve it once.
        """
        state = scope.get(REQUEST_STATE_KEY)
        if state is None or not self.trusts_any:  # without proxies: the peer, parsed (cached)
            return self._resolve(scope)
        known, address = state.remembered_client(self._settings, scope)
        if not known:
            address = self._resolve(scope)
            state.remember_client(self._settings, scope, address)
        return address  # type: ignore[no-any-return]

    def _resolve(self, scope: Scope) -> IPAddress | None:
        client = scope.get("client")
        peer = parse_ip(client[0]) if client else None
        if peer is None or self._forwarded == "none" or not self.trusts_any:
            return peer
        if not self.is_trusted(peer):
            return peer
        hops = self._hops(scope)
        current = peer
        for hop in reversed(hops):
            address = parse_ip(hop)
            if address is None:
                return current
            current = address
            if not self.is_trusted(address):
                return address
        return current

    def _hops(self, scope: Scope) -> list[str]:
        state = scope.get(REQUEST_STATE_KEY)
        headers = (scope.get("headers") or ()) if state is None else state.headers(scope)
        if self._forwarded in ("auto", "forwarded"):
            lines = _all(headers, b"forwarded")
            if lines:
                return _forwarded_for(lines)
            if self._forwarded == "forwarded":
                return []
        hops: list[str] = []
        for line in _all(headers, b"x-forwarded-for"):
            hops.extend(part.strip() for part in line.decode("latin-1").split(","))
        return hops

    def group(self, address: IPAddress) -> str:
        """Return the rate-limiting group of an address: itself, or its network for IPv6."""
        if isinstance(address, ipaddress.IPv6Address):
            if self.ipv6_prefix == 128:
                return str(address)
            return str(ipaddress.IPv6Network((address, self.ipv6_prefix), strict=False))
        if self.ipv4_prefix == 32:
            return str(address)
        return str(ipaddress.IPv4Network((address, self.ipv4_prefix), strict=False))

    def key(self, scope: Scope) -> str:
        """Return the client's group (see :meth:`group`), ``"unknown"`` when there is no address."""
        address = self.resolve_ip(scope)
        return "unknown" if address is None else self.group(address)


def _all(headers: Any, name: bytes) -> list[bytes]:
    """Every value of ``name``, from the request state's fields or a raw header list."""
    if isinstance(headers, RequestHeaders):
        return headers.get_all(name)
    return get_all_headers(headers, name)


__all__ = ["ClientAddressResolver", "normalize_ip", "parse_ip"]

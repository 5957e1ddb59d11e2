"""ClientAddressResolver: trusted proxies, Forwarded / X-Forwarded-For, IPv6 normalisation."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prodkit import ConfigurationError
from prodkit.asgi import ClientAddressResolver, normalize_ip


def scope(peer: str | None, headers: list[tuple[str, str]] = ()) -> dict[str, object]:  # type: ignore[assignment]
    return {
        "type": "http",
        "client": (peer, 1234) if peer is not None else None,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
    }


@pytest.mark.parametrize(
    ("trusted", "peer", "headers", "expected"),
    [
        # No trusted proxies: headers are never read.
        ((), "203.0.113.7", [("X-Forwarded-For", "1.1.1.1")], "203.0.113.7"),
        # Untrusted peer: a spoofed XFF is ignored (issue 2's "done when").
        (("10.0.0.0/8",), "203.0.113.7", [("X-Forwarded-For", "1.1.1.1")], "203.0.113.7"),
        # Trusted peer: the rightmost untrusted hop is the client, not the leftmost.
        (
            ("10.0.0.0/8",),
            "10.0.0.2",
            [("X-Forwarded-For", "6.6.6.6, 198.51.100.9")],
            "198.51.100.9",
        ),
        # Chains of trusted proxies are skipped.
        (
            ("10.0.0.0/8",),
            "10.0.0.2",
            [("X-Forwarded-For", "198.51.100.9, 10.1.1.1, 10.2.2.2")],
            "198.51.100.9",
        ),
        # Several field lines form one list (RFC 9110 5.3).
        (
            ("10.0.0.0/8",),
            "10.0.0.2",
            [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "198.51.100.9")],
            "198.51.100.9",
        ),
        # Garbage at the nearest hop: fall back to the trusted proxy that reported it.
        (("10.0.0.0/8",), "10.0.0.2", [("X-Forwarded-For", "1.1.1.1, nonsense")], "10.0.0.2"),
        # Everything trusted: the leftmost address is the best we know.
        (("10.0.0.0/8",), "10.0.0.2", [("X-Forwarded-For", "10.9.9.9")], "10.9.9.9"),
        # RFC 7239 Forwarded, quoted IPv6 with port, preferred over XFF in auto mode.
        (
            ("10.0.0.0/8",),
            "10.0.0.2",
            [
                ("Forwarded", 'for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711"'),
                ("X-Forwarded-For", "9.9.9.9"),
            ],
            "2001:db8:cafe::17",
        ),
        # Forwarded with an obfuscated identifier (RFC 7239 6.3) at the nearest hop.
        (("10.0.0.0/8",), "10.0.0.2", [("Forwarded", "for=_hidden")], "10.0.0.2"),
        # IPv4-mapped IPv6 peer resolves to IPv4.
        ((), "::ffff:1.2.3.4", [], "1.2.3.4"),
        # ... and a trusted network given as IPv4 matches a mapped peer.
        (("127.0.0.1",), "::ffff:127.0.0.1", [("X-Forwarded-For", "::ffff:5.6.7.8")], "5.6.7.8"),
        # IPv4 with a port, as some proxies write it.
        (("10.0.0.0/8",), "10.0.0.2", [("X-Forwarded-For", "198.51.100.9:5555")], "198.51.100.9"),
        # Trust everything: every hop is believed, so the leftmost wins. Only safe behind a
        # proxy that overwrites the header instead of appending to it.
        (("*",), "198.51.100.1", [("X-Forwarded-For", "6.6.6.6, 7.7.7.7")], "6.6.6.6"),
        # No client at all (a UNIX socket): unknown.
        ((), None, [], None),
    ],
)
def test_resolve(
    trusted: tuple[str, ...], peer: str | None, headers: list[tuple[str, str]], expected: str | None
) -> None:
    assert ClientAddressResolver(trusted).resolve(scope(peer, headers)) == expected


def test_forwarded_mode_can_be_pinned() -> None:
    headers = [("Forwarded", "for=192.0.2.60"), ("X-Forwarded-For", "198.51.100.9")]
    assert (
        ClientAddressResolver(["10.0.0.1"], forwarded="x-forwarded-for").resolve(
            scope("10.0.0.1", headers)
        )
        == "198.51.100.9"
    )
    assert (
        ClientAddressResolver(["10.0.0.1"], forwarded="none").resolve(scope("10.0.0.1", headers))
        == "10.0.0.1"
    )


def test_ipv6_grouping_by_prefix() -> None:
    resolver = ClientAddressResolver()
    a = resolver.key(scope("2001:db8:1:2::a"))
    b = resolver.key(scope("2001:db8:1:2:ffff::b"))
    c = resolver.key(scope("2001:db8:1:3::a"))
    assert a == b == "2001:db8:1:2::/64"
    assert c != a
    assert ClientAddressResolver(ipv6_prefix=56).key(scope("2001:db8:1:3::a")) == "2001:db8:1::/56"
    assert resolver.key(scope("::ffff:1.2.3.4")) == resolver.key(scope("1.2.3.4")) == "1.2.3.4"
    assert resolver.key(scope(None)) == "unknown"


def test_comma_separated_string_is_accepted() -> None:
    resolver = ClientAddressResolver("10.0.0.0/8, 192.168.0.1")
    assert resolver.is_trusted(ipaddress.ip_address("192.168.0.1"))


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "not-an-ip", "10.0.0.0/8/8"])
def test_bad_trusted_proxy_is_a_configuration_error(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="trusted_proxies"):
        ClientAddressResolver([bad])


@given(st.ip_addresses())
def test_normalize_is_idempotent_and_unmaps(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    text = normalize_ip(str(address))
    assert text is not None
    assert normalize_ip(text) == text
    parsed = ipaddress.ip_address(text)
    assert not (isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None)


@given(st.lists(st.text(alphabet='0123456789abcdef.:, []"=;_-xyz', max_size=30), max_size=6))
def test_spoofed_headers_from_untrusted_peers_never_change_the_result(values: list[str]) -> None:
    resolver = ClientAddressResolver(["10.0.0.0/8"])
    headers = [("X-Forwarded-For", v) for v in values] + [("Forwarded", v) for v in values]
    assert resolver.resolve(scope("198.51.100.4", headers)) == "198.51.100.4"


@given(st.lists(st.ip_addresses(), min_size=1, max_size=5), st.ip_addresses())
def test_client_prefix_cannot_hide_the_real_hop(spoofed: list[object], real: object) -> None:
    # A client may prepend anything; the trusted proxy appends the real peer last.
    resolver = ClientAddressResolver(["10.0.0.1"])
    chain = ", ".join(str(a) for a in [*spoofed, real])
    expected = normalize_ip(str(real))
    if expected == "10.0.0.1":
        return  # the real client is the proxy itself: not a meaningful case
    assert resolver.resolve(scope("10.0.0.1", [("X-Forwarded-For", chain)])) == expected

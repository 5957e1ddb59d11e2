"""Network namespaces that stand in for separate hosts, joined by a bridge in the root namespace.

Each "host" is a network namespace of its own with one veth link to a bridge that only this test
creates. Addresses come from the IPv4 link-local range 169.254.0.0/16 (one /24 chosen at random
and checked unused, never 169.254.169.0/24), which exists only on these links: the namespaces
have no default route, so nothing they send can leave them but to the bridge, and the root
namespace reaches them through the bridge alone. The root end of the bridge (the *gateway*
address) is where the shared servers (PgBouncer, the Redis Cluster) listen for the hosts.

Everything is deleted afterwards, on failure too: the namespaces (which takes their veth pairs
with them) and then the bridge.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=10)


def namespaces_unavailable() -> str | None:
    """Why network namespaces cannot be made here (no ``ip``, no CAP_NET_ADMIN), or ``None``."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    probe = f"pkprobe-{uuid.uuid4().hex[:8]}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace (needs CAP_NET_ADMIN): {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    bridge = f"pkp{uuid.uuid4().hex[:8]}"
    made = _ip("link", "add", bridge, "type", "bridge", check=False)
    if made.returncode != 0:
        return f"cannot create a bridge: {made.stderr.strip()}"
    _ip("link", "del", bridge, check=False)
    return None


@dataclass(frozen=True)
class Host:
    """One namespace: its name (for ``ip netns exec``) and its address on the bridge."""

    namespace: str
    address: str

    def command(self, args: Sequence[str]) -> list[str]:
        """``args`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.namespace, *args]


@dataclass
class Network:
    """The bridge, its root-namespace address (``gateway``) and the hosts behind it."""

    bridge: str
    gateway: str
    hosts: list[Host] = field(default_factory=list)


def _free_subnet() -> str:
    """``169.254.N`` for a /24 no interface here uses (never 169.254.169.0/24)."""
    used = _ip("-4", "-o", "addr", "show").stdout
    candidates = [n for n in range(100, 250) if n != 169 and f"169.254.{n}." not in used]
    return f"169.254.{random.choice(candidates)}"


@contextlib.contextmanager
def host_network(count: int) -> Iterator[Network]:
    """``count`` namespaces on one new bridge; all of it deleted on the way out."""
    tag = uuid.uuid4().hex[:6]  # interface names are at most 15 characters
    subnet = _free_subnet()
    network = Network(bridge=f"pk{tag}br", gateway=f"{subnet}.1")
    made: list[str] = []
    links: list[str] = []
    try:
        _ip("link", "add", network.bridge, "type", "bridge")
        _ip("addr", "add", f"{network.gateway}/24", "dev", network.bridge)
        _ip("link", "set", network.bridge, "up")
        for index in range(count):
            host = Host(namespace=f"pk-{tag}-{index}", address=f"{subnet}.{10 + index}")
            outside, inside = f"pk{tag}h{index}", f"pk{tag}n{index}"
            _ip("netns", "add", host.namespace)
            made.append(host.namespace)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            links.append(outside)
            _ip("link", "set", inside, "netns", host.namespace)
            _ip("link", "set", outside, "master", network.bridge)
            _ip("link", "set", outside, "up")
            _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", inside)
            _ip("-n", host.namespace, "link", "set", inside, "up")
            _ip("-n", host.namespace, "link", "set", "lo", "up")
            network.hosts.append(host)
        yield network
    finally:
        for namespace in made:
            _ip("netns", "del", namespace, check=False)  # its veth pairs go with it
        for link in links:  # gone with its namespace, unless it never got there
            _ip("link", "del", link, check=False)
        _ip("link", "del", network.bridge, check=False)

"""Real Redis topologies for tests, from the ``redis-server`` binary on loopback ports.

A Redis Cluster (three primaries, three replicas) and a Sentinel group (one primary, one
replica, three Sentinels), each in a temporary directory, every process stopped by its own PID.
They listen on 127.0.0.1 unless given another local ``host`` (the root end of a test's own
network namespace link, for servers that processes inside the namespaces must reach).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import shutil
import signal
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.servers import HOST, free_port, wait_for_port

#: How long a topology may take to form before the fixture gives up.
FORM_TIMEOUT = 30.0
# Every server is bound to one address only (loopback, or a test's own link-local bridge):
# protected mode would refuse the clients in the test's namespaces, and guards nothing here.
_OPEN = ["--protected-mode", "no"]
# A primary waits 5 s (Redis's default) for more replicas before a diskless full sync: here each
# has one, so the topologies would form 5 s later for nothing.
_SYNC_NOW = ["--repl-diskless-sync-delay", "0"]


def redis_binaries_missing() -> str | None:
    """Why the topologies cannot be started here, or ``None``."""
    for binary in ("redis-server", "redis-cli"):
        if shutil.which(binary) is None:
            return f"{binary} is not on PATH"
    return None


def cli(port: int, *args: str, timeout: float = 10.0, host: str = HOST) -> str:
    """``redis-cli -h host -p port args…``: its output (raises on a non-zero exit)."""
    return subprocess.run(
        ["redis-cli", "-h", host, "-p", str(port), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
    ).stdout


@dataclass
class Topology:
    """Running ``redis-server`` processes by port, and the URL that reaches them."""

    url: str = ""
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    host: str = HOST

    def kill(self, port: int) -> None:
        """SIGKILL the server on ``port`` (a crashed node)."""
        process = self.processes[port]
        process.send_signal(signal.SIGCONT)
        process.kill()
        process.wait(timeout=10)

    def slot_owners(self) -> dict[int, list[range]]:
        """The Cluster's live primaries now: each one's port and the slots it serves."""
        port = next(p for p, process in self.processes.items() if process.poll() is None)
        owners: dict[int, list[range]] = {}
        # CLUSTER NODES: id, host:port@bus, flags, primary, ping, pong, epoch, link, slots…
        for line in cli(port, "cluster", "nodes", host=self.host).splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            ranges = owners.setdefault(int(fields[1].split("@")[0].rpartition(":")[2]), [])
            for served in fields[8:]:
                first, _, last = served.partition("-")
                if first.isdigit():
                    ranges.append(range(int(first), int(last or first) + 1))
        return owners

    def primary_for(self, key: str, owners: dict[int, list[range]] | None = None) -> int:
        """The port of the Cluster primary that serves ``key``, as ``owners`` (a
        :meth:`slot_owners` taken earlier; default: the one now) says."""
        from redis.crc import key_slot  # the driver is optional where topologies are not used

        slot = key_slot(key.encode())
        for port, ranges in (owners or self.slot_owners()).items():
            if any(slot in served for served in ranges):
                return port
        raise LookupError(f"no live primary serves slot {slot} of {key!r}")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)


def _start(topology: Topology, port: int, args: list[str], log: Path) -> None:
    with log.open("ab") as out:
        topology.processes[port] = subprocess.Popen(
            ["redis-server", *args], stdout=out, stderr=subprocess.STDOUT
        )
    wait_for_port(port, 10, topology.processes[port], host=topology.host)


def _until(check: object, what: str) -> None:
    deadline = time.monotonic() + FORM_TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(subprocess.SubprocessError):
            if check():  # type: ignore[operator]
                return
        time.sleep(0.1)
    raise TimeoutError(f"{what} within {FORM_TIMEOUT}s")


def _synced(replication: str) -> bool:
    return "role:master" in replication or "master_link_status:up" in replication


@contextlib.contextmanager
def redis_cluster(
    tmp_path: Path, *, node_timeout_ms: int = 1000, host: str = HOST
) -> Iterator[Topology]:
    """Three primaries and three replicas on ``host``; ``url`` is ``redis+cluster://`` with
    every node."""
    topology = Topology(host=host)
    ports = [free_port() for _ in range(6)]
    try:
        for port in ports:
            folder = tmp_path / f"cluster-{port}"
            folder.mkdir()
            _start(
                topology,
                port,
                [
                    "--port", str(port), "--bind", host, *_OPEN, *_SYNC_NOW, "--dir", str(folder),
                    "--save", "", "--appendonly", "no", "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    # The bus port is the data port + 10000 unless given: ephemeral ports are
                    # too high for that.
                    "--cluster-port", str(free_port()),
                    "--cluster-node-timeout", str(node_timeout_ms),
                ],
                folder / "redis.log",
            )  # fmt: skip
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"{host}:{p}" for p in ports),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        _until(
            lambda: all("cluster_state:ok" in cli(p, "cluster", "info", host=host) for p in ports),
            "the cluster did not form",
        )
        # A replica can only take over once it has synced with its primary.
        _until(
            lambda: all(_synced(cli(p, "info", "replication", host=host)) for p in ports),
            "the replicas did not sync",
        )
        topology.url = "redis+cluster://" + ",".join(f"{host}:{p}" for p in ports)
        yield topology
    finally:
        topology.stop()


@dataclass
class SentinelGroup(Topology):
    """A Sentinel group: the primary's and the replica's ports, and the service name."""

    primary: int = 0
    replica: int = 0
    sentinels: list[int] = field(default_factory=list)
    service: str = "prodkit"

    def current_primary(self) -> int:
        """The port the Sentinels now name as the primary."""
        reply = cli(
            self.sentinels[0], "sentinel", "get-master-addr-by-name", self.service, host=self.host
        )
        return int(reply.split()[1])


@contextlib.contextmanager
def redis_sentinel(
    tmp_path: Path, *, down_after_ms: int = 1000, host: str = HOST
) -> Iterator[SentinelGroup]:
    """One primary, one replica and three Sentinels on ``host``; ``url`` is
    ``redis+sentinel://…/prodkit``."""
    group = SentinelGroup(primary=free_port(), replica=free_port(), host=host)
    group.sentinels = [free_port() for _ in range(3)]
    common = ["--bind", host, *_OPEN, *_SYNC_NOW, "--save", "", "--appendonly", "no"]
    try:
        for port, extra in (
            (group.primary, []),
            (group.replica, ["--replicaof", host, str(group.primary)]),
        ):
            folder = tmp_path / f"data-{port}"
            folder.mkdir()
            _start(
                group,
                port,
                ["--port", str(port), "--dir", str(folder), *common, *extra],
                folder / "redis.log",
            )
        _until(
            lambda: _synced(cli(group.replica, "info", "replication", host=host)),
            "the replica did not sync",
        )
        for port in group.sentinels:
            folder = tmp_path / f"sentinel-{port}"
            folder.mkdir()
            config = folder / "sentinel.conf"
            config.write_text(
                f"port {port}\nbind {host}\nprotected-mode no\ndir {folder}\n"
                f"sentinel monitor {group.service} {host} {group.primary} 2\n"
                f"sentinel down-after-milliseconds {group.service} {down_after_ms}\n"
                f"sentinel failover-timeout {group.service} 5000\n"
                f"sentinel parallel-syncs {group.service} 1\n"
            )
            _start(group, port, [str(config), "--sentinel"], folder / "sentinel.log")
        _until(
            lambda: all(
                "num-other-sentinels\n2" in cli(p, "sentinel", "master", group.service, host=host)
                for p in group.sentinels
            ),
            "the Sentinels did not find each other",
        )
        nodes = ",".join(f"{host}:{p}" for p in group.sentinels)
        group.url = f"redis+sentinel://{nodes}/{group.service}"
        yield group
    finally:
        group.stop()


async def write_until_it_lands(client: Any, key: str, deadline: float) -> float:
    """One write every 50 ms until one succeeds (the primary is down meanwhile); its seconds."""
    start = time.monotonic()
    while time.monotonic() < deadline:
        try:
            await client.set(key, "after", px=60_000)
            return time.monotonic() - start
        except Exception:
            await asyncio.sleep(0.05)
    raise AssertionError(f"no write landed on {key} within the deadline")


def collect_dropped_connections() -> None:
    """Collect what redis-py dropped with a dead primary, while the caller's loop still runs.

    redis-py forgets a dead primary after a failover without closing its connection to it; the
    socket would otherwise be collected (with a ResourceWarning) in a later test.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()

"""The servers of a multi-host site: PgBouncer, HAProxy and the example on each host.

Every process listens on loopback or on the test's own link-local bridge, is bounded in time
and is stopped by its own PID (a host's workers with its process group).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.scale.network import Host
from tests.servers import HOST, ROOT, free_port, server_env, wait_for_port

#: The port every host serves the example on (each host has an address of its own).
APP_PORT = 8000


def binary(name: str) -> str | None:
    """The path of a system binary (``/usr/sbin`` included), or ``None``."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


def _stop(process: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


# -- PgBouncer ------------------------------------------------------------------------------


@dataclass
class Bouncer:
    """A running PgBouncer: where it listens, its admin console, and its process.

    ``kill`` and ``start`` stop it dead (SIGKILL, as a crash or an OOM kill would) and start
    it again with the same configuration, on the same address.
    """

    host: str
    port: int
    database: str
    user: str
    command: list[str]
    log_path: Path
    aliases: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = None

    def dsn(self, database: str | None = None) -> str:
        """The DSN the hosts use: the test database (or ``database``), through PgBouncer."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database or self.database}"

    def admin(self, command: str) -> str:
        """Run ``command`` (``PAUSE``, ``KILL db``, ``SHOW POOLS`` …) on the admin console."""
        return subprocess.run(
            [
                "psql", "-X", "-A", "-t", "-h", self.host, "-p", str(self.port),
                "-U", self.user, "-d", "pgbouncer", "-c", command,
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout  # fmt: skip

    def cut(self, database: str | None = None) -> None:
        """Cut the clients of ``database`` (default: every database name PgBouncer serves,
        aliases included) off it: refuse new connections, drop every open one."""
        for name in [database] if database else [self.database, *self.aliases]:
            self.admin(f"DISABLE {name}")
            self.admin(f"KILL {name}")

    def restore(self, database: str | None = None) -> None:
        """Let the clients of ``database`` (default: of every database name) connect again."""
        for name in [database] if database else [self.database, *self.aliases]:
            self.admin(f"ENABLE {name}")
            self.admin(f"RESUME {name}")

    def start(self) -> None:
        """Start the process (again); return once it accepts connections."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, 10, self.process, host=self.host)

    def kill(self) -> None:
        """SIGKILL: every client connection is reset mid-whatever it was doing."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process, signal.SIGINT)


def pgbouncer_missing() -> str | None:
    """Why PgBouncer cannot be started here, or ``None``."""
    if binary("pgbouncer") is None:
        return "pgbouncer is not installed (apt-get install -y pgbouncer)"
    return None


def _unprivileged_user() -> str | None:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    return None


@contextlib.contextmanager
def pgbouncer(
    tmp_path: Path,
    *,
    listen: str,
    server_dsn: str,
    pool_mode: str = "transaction",
    pool_size: int = 10,
    aliases: Sequence[str] = (),
) -> Iterator[Bouncer]:
    """PgBouncer on ``listen`` in front of the server of ``server_dsn`` (trust auth).

    Many client connections share ``pool_size`` server connections per database; the
    database's user is also an admin of the console (``PAUSE``, ``DISABLE``, ``KILL``). Each
    name of ``aliases`` is one more database name for the database of ``server_dsn``, with a
    pool of its own that the console can cut alone.
    """
    executable = binary("pgbouncer")
    if executable is None:
        raise FileNotFoundError("pgbouncer is not installed (apt-get install -y pgbouncer)")
    target = urlsplit(server_dsn)
    user = target.username or "postgres"
    server = f"host={target.hostname} port={target.port or 5432}"
    database = target.path.lstrip("/")
    port = free_port()
    folder = tmp_path / "pgbouncer"
    folder.mkdir()
    folder.chmod(0o777)  # pgbouncer runs as an unprivileged user and writes nothing here
    (folder / "users.txt").write_text(f'"{user}" ""\n')
    ini = folder / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        + "".join(f"{alias} = {server} dbname={database}\n" for alias in aliases)
        + f"* = {server}\n"
        "[pgbouncer]\n"
        f"listen_addr = {listen}\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\nadmin_users = {user}\n"
        f"pool_mode = {pool_mode}\ndefault_pool_size = {pool_size}\nmax_client_conn = 500\n"
        # What docs/scale.md asks of a PgBouncer in front of the example: the example sends
        # statement_timeout when it connects, which PgBouncer cannot keep per client (the
        # bound is set on the database instead; see the site's fixture).
        "ignore_startup_parameters = extra_float_digits,statement_timeout\n"
        # After a server login it could not complete (a KILL in the middle of one), PgBouncer
        # waits this long before it tries the server again (default 15 s): the clients wait
        # and answer 503 meanwhile. Shorter here, so that the tests of a cut end sooner.
        "server_login_retry = 1\n"
    )
    for path in folder.iterdir():
        path.chmod(0o644)
    command = [executable, str(ini)]
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        runner = _unprivileged_user()
        if runner is None:
            raise FileNotFoundError("no unprivileged user to run pgbouncer as")
        command = [executable, "-u", runner, str(ini)]
    bouncer = Bouncer(listen, port, database, user, command, folder / "pgbouncer.out", aliases)
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.stop()


# -- HAProxy --------------------------------------------------------------------------------


@dataclass
class Proxy:
    """A running HAProxy: its two frontends and the runtime API's socket.

    ``url`` balances over every host. ``rollout_url`` splits the traffic between two host
    groups by the weights of the servers ``baseline`` and ``canary`` of the backend
    ``groups``, which the rollout controller's :class:`~prodkit.rollout.HAProxyRouter` sets
    through ``socket``; each of the two balances over the hosts of its group.
    """

    url: str
    rollout_url: str
    socket: Path


@contextlib.contextmanager
def haproxy(
    tmp_path: Path, servers: Mapping[str, str], groups: Mapping[str, Sequence[str]]
) -> Iterator[Proxy]:
    """HAProxy on 127.0.0.1, round robin over ``servers`` (name -> ``address:port``), and over
    the host groups ``groups`` (``"baseline"`` and ``"canary"`` -> server names).

    It appends the client's address to ``X-Forwarded-For`` and names the server that answered
    in ``X-Served-By``. No health checks: the hosts' own answers (503s included) reach the
    client, as the tests of an outage need.
    """
    executable = binary("haproxy")
    if executable is None:
        raise FileNotFoundError("haproxy is not installed (apt-get install -y haproxy)")
    port, rollout_port = free_port(), free_port()
    config = tmp_path / "haproxy.cfg"
    sock = tmp_path / "haproxy.sock"
    tag = f"pk{port}"  # abstract socket names are per network namespace: unique per run

    def servers_of(names: Iterable[str]) -> str:
        return "\n".join(f"    server {name} {servers[name]}" for name in names)

    group_sections = "\n".join(
        f"""
frontend group-{group}
    # Reached from the groups backend, which appended the client's address already.
    bind abns@{tag}-{group}
    default_backend hosts-{group}

backend hosts-{group}
    balance roundrobin
    http-response set-header X-Served-By %s
{servers_of(names)}
"""
        for group, names in groups.items()
    )
    config.write_text(
        f"""
global
    maxconn 2048
    stats socket {sock} mode 600 level admin

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s

frontend web
    bind {HOST}:{port}
    option forwardfor
    default_backend funds

backend funds
    balance roundrobin
    http-response set-header X-Served-By %s
{servers_of(servers)}

frontend rollout
    bind {HOST}:{rollout_port}
    option forwardfor
    default_backend groups

backend groups
    balance roundrobin
    server baseline abns@{tag}-baseline weight 100
    server canary abns@{tag}-canary weight 0
{group_sections}"""
    )
    log_path = tmp_path / "haproxy.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [executable, "-f", str(config), "-db"], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_for_port(port, 15, process)
        wait_for_port(rollout_port, 15, process)
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        yield Proxy(f"http://{HOST}:{port}", f"http://{HOST}:{rollout_port}", sock)
    finally:
        _stop(process)


# -- the example on a host ------------------------------------------------------------------


@dataclass
class FundsHost:
    """The example running inside one namespace."""

    host: Host
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.host.address}:{APP_PORT}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


class HostFailed(RuntimeError):
    """A host did not become ready; the message ends with the tail of its output."""


def _wait_ready(server: FundsHost, timeout: float, *, port: int = APP_PORT) -> None:
    deadline = time.monotonic() + timeout
    url = f"http://{server.host.address}:{port}/readyz"
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url).status_code == 200:
                    return
            time.sleep(0.2)
    raise HostFailed(
        f"the example on {server.host.address} did not become ready "
        f"(exit status {server.process.poll()}):\n{server.output()[-3000:]}"
    )


@contextlib.contextmanager
def funds_hosts(
    hosts: list[Host],
    tmp_path: Path,
    env: Mapping[str, str],
    *,
    workers: int = 2,
    host_env: Mapping[int, Mapping[str, str]] | None = None,
) -> Iterator[list[FundsHost]]:
    """``python -m examples.funds --host <address> --workers N`` inside each host's namespace,
    with ``env`` (and ``host_env[index]`` for the host at that index).

    All start together and must answer ``/readyz`` within a minute; each is stopped with
    SIGTERM, its workers (its process group) killed if they outlive it.
    """
    started: list[FundsHost] = []
    try:
        for index, host in enumerate(hosts):
            environment = server_env({**env, **(host_env or {}).get(index, {})})
            environment.pop("PROMETHEUS_MULTIPROC_DIR", None)  # each host makes its own
            log_path = tmp_path / f"funds-{host.address}.log"
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    host.command(
                        [
                            sys.executable, "-m", "examples.funds",
                            "--host", host.address, "--port", str(APP_PORT),
                            "--workers", str(workers),
                        ]
                    ),
                    cwd=ROOT,
                    env=environment,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            started.append(FundsHost(host, process, log_path))
        for server in started:
            _wait_ready(server, 60)
        yield started
    finally:
        for server in started:
            if server.process.poll() is None:
                server.process.send_signal(signal.SIGTERM)
        for server in started:
            try:
                server.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait(timeout=5)
            # Workers share the host process's session: none may outlive the test.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(server.process.pid, signal.SIGKILL)


# -- can the example run behind transaction pooling? ----------------------------------------


def transaction_pooling_problem(tmp_path: Path, server_dsn: str) -> str | None:
    """Start the example twice, one after the other, behind a one-connection transaction pool.

    Transaction pooling hands every transaction to whichever server connection is free, and
    server connections outlive their clients: a client that names its prepared statements
    (asyncpg's statement cache) leaves them on the server connection, where the next client's
    statements of the same name collide. With one server connection, the second start meets
    the first one's statements every time. Returns the second start's output when a start
    fails, ``None`` when both serve.
    """
    folder = tmp_path / "pooling-probe"
    folder.mkdir()
    with pgbouncer(folder, listen=HOST, server_dsn=server_dsn, pool_size=1) as bouncer:
        for attempt in (1, 2):
            port = free_port()
            log_path = folder / f"start-{attempt}.log"
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "examples.funds", "--port", str(port)],
                    cwd=ROOT,
                    env=server_env({"DATABASE_URL": bouncer.dsn()}),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            try:
                server = FundsHost(Host("", HOST), process, log_path)
                _wait_ready(server, 30, port=port)
                with httpx.Client(timeout=10.0) as client:
                    listed = client.get(
                        f"http://{HOST}:{port}/api/funds", headers={"X-User-Id": "probe"}
                    )
                if listed.status_code != 200:
                    return _summary(f"start {attempt}: GET /api/funds answered", log_path)
            except HostFailed:
                return _summary(f"start {attempt} failed", log_path)
            finally:
                _stop(process)
    return None


def _summary(what: str, log_path: Path) -> str:
    """``what``, the last exception the log names, and where the whole log is."""
    text = log_path.read_text(errors="replace").replace('\\"', '"')  # JSON log lines
    errors = re.findall(r"(\w+(?:Error|Exception): [^\\\n]+)", text)
    return f"{what}: {errors[-1] if errors else 'see the log'} (log: {log_path})"

"""The PostgreSQL store behind a real PgBouncer in transaction pooling mode.

Many client connections share two server connections, so anything that relied on session
state or named prepared statements would break here. Skipped where the ``pgbouncer`` binary
is not installed (``apt-get install pgbouncer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from prodkit import BackendError
from prodkit.idempotency import ClaimOutcome, PostgresIdempotencyStore, StoredResponse
from tests.servers import free_port, wait_for_port

pytestmark = [pytest.mark.postgres, pytest.mark.server]

PGBOUNCER = shutil.which("pgbouncer") or (
    "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
)


@pytest.fixture
def bouncer_dsn(postgres_dsn: str, tmp_path: Path) -> Iterator[str]:
    """A DSN through a PgBouncer (transaction pooling, 2 server connections) to the test DB."""
    if PGBOUNCER is None:
        pytest.skip("pgbouncer is not installed")
    target = urlsplit(postgres_dsn)
    port = free_port()
    tmp_path.chmod(0o777)
    (tmp_path / "users.txt").write_text(f'"{target.username}" ""\n')
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"* = host={target.hostname} port={target.port or 5432}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {tmp_path / 'users.txt'}\n"
        f"admin_users = {target.username}\nserver_login_retry = 1\n"
        "pool_mode = transaction\ndefault_pool_size = 2\nmax_client_conn = 200\n"
        "ignore_startup_parameters = extra_float_digits\n"
    )
    for path in tmp_path.iterdir():
        path.chmod(0o644)
    command = [PGBOUNCER, str(ini)]
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        user = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
        if user is None:
            pytest.skip("no unprivileged user to run pgbouncer as")
        command = [PGBOUNCER, "-u", user, str(ini)]
    log = (tmp_path / "pgbouncer.out").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 10, process)
        yield f"postgresql://{target.username}@127.0.0.1:{port}{target.path}"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()


def _user_exists(name: str) -> bool:
    with contextlib.suppress(KeyError):
        pwd.getpwnam(name)
        return True
    return False


async def test_store_works_behind_pgbouncer_transaction_pooling(bouncer_dsn: str) -> None:
    table = f"idem_bouncer_{uuid.uuid4().hex[:8]}"
    store = PostgresIdempotencyStore(
        bouncer_dsn, table=table, pool_options={"min_size": 10, "max_size": 10}
    )
    try:
        await store.ensure_schema()
        key = uuid.uuid4().hex
        claims = await asyncio.gather(
            *(store.claim(key, b"fp", f"o{i}", lease=30, ttl=600) for i in range(40))
        )
        winners = [i for i, c in enumerate(claims) if c.outcome is ClaimOutcome.ACQUIRED]
        assert len(winners) == 1
        response = StoredResponse(201, ((b"content-type", b"application/json"),), b"{}")
        assert await store.complete(key, f"o{winners[0]}", response, ttl=600)
        replays = await asyncio.gather(
            *(store.claim(key, b"fp", f"r{i}", lease=30, ttl=600) for i in range(40))
        )
        assert {r.outcome for r in replays} == {ClaimOutcome.COMPLETED}
        assert {r.response for r in replays} == {response}
        other = uuid.uuid4().hex
        await store.claim(other, b"fp", "a", lease=30, ttl=600)
        assert await store.release(other, "a")
        store.clock_offset = 700
        assert await store.cleanup() >= 1
    finally:
        await store.aclose()


async def test_connections_pgbouncer_drops_are_backend_errors(bouncer_dsn: str) -> None:
    # PgBouncer's console drops every connection again and again while claims run: some
    # statements are cut mid-flight, some pooled connections are dead when next used (asyncpg
    # then raises InternalClientError). The middleware answers a BackendError with 503
    # IDEMPOTENCY_STORE_UNAVAILABLE; anything else raised here would be a 500.
    table = f"idem_bouncer_{uuid.uuid4().hex[:8]}"
    store = PostgresIdempotencyStore(
        bouncer_dsn, table=table, pool_options={"min_size": 4, "max_size": 4}
    )
    admin = [
        "psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(urlsplit(bouncer_dsn).port),
        "-U", str(urlsplit(bouncer_dsn).username), "-d", "pgbouncer",
    ]  # fmt: skip
    database = urlsplit(bouncer_dsn).path.lstrip("/")
    outcomes: Counter[str] = Counter()
    stop = asyncio.Event()

    async def claims(worker: int) -> None:
        while not stop.is_set():
            try:
                await store.claim(uuid.uuid4().hex, b"fp", f"w{worker}", lease=30, ttl=600)
                outcomes["claimed"] += 1
            except BackendError:
                outcomes["backend error"] += 1
                await asyncio.sleep(0.01)

    try:
        await store.ensure_schema()
        workers = [asyncio.create_task(claims(worker)) for worker in range(8)]
        try:
            for _ in range(12):
                await asyncio.sleep(0.25)
                await asyncio.to_thread(
                    subprocess.run,
                    [*admin, "-c", f"KILL {database}", "-c", f"RESUME {database}"],
                    check=True,
                    capture_output=True,
                    timeout=10,
                )
            await asyncio.sleep(1.5)
            before = outcomes["claimed"]
            await asyncio.sleep(0.5)
        finally:
            stop.set()
            await asyncio.gather(*workers)  # raises whatever was not a BackendError
    finally:
        await store.aclose()
    assert outcomes["backend error"] > 0, outcomes
    assert outcomes["claimed"] > before, outcomes  # claims work again afterwards

"""Real server processes for tests: loopback only, bounded in time, stopped by their own PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int,
    timeout: float = 20.0,
    process: subprocess.Popen[bytes] | None = None,
    *,
    host: str = HOST,
) -> None:
    """Wait until ``host`` (127.0.0.1 by default):``port`` accepts connections, or raise
    ``TimeoutError``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited early with status {process.returncode}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on {host}:{port} within {timeout}s")


@dataclass
class ServerProcess:
    """A running server: its process, port and the file its output goes to."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the server's own PID."""
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """Wait for the server to exit; return its status."""
        return self.process.wait(timeout=timeout)


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a server process: this checkout's ``src`` and root importable."""
    env = dict(os.environ)
    paths = [str(ROOT / "src"), str(ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


@contextlib.contextmanager
def redis_server(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A private ``redis-server`` on 127.0.0.1:``port`` (never the shared one), for tests that
    pause (SIGSTOP), resume or kill it; stopped by its own PID."""
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, 10, process)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)  # a paused server still dies when killed
            process.kill()
        process.wait(timeout=10)


@contextlib.contextmanager
def run_server(
    args: Sequence[str],
    *,
    port: int,
    tmp_path: Path,
    env: Mapping[str, str] | None = None,
    startup_timeout: float = 30.0,
    stop_timeout: float = 15.0,
) -> Iterator[ServerProcess]:
    """Start ``python -m <args…>`` listening on ``port``; always stop it by its PID afterwards.

    ``args`` follow ``python -m`` (e.g. ``["uvicorn", "tests.servers_app:app", "--port", ...]``).
    On exit the process gets SIGTERM, then SIGKILL if it has not exited within ``stop_timeout``;
    its children (workers) are in its own session and are killed with it.
    """
    log_path = tmp_path / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", *args],
            cwd=ROOT,
            env=server_env(env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServerProcess(process, port, log_path)
    try:
        wait_for_port(port, startup_timeout, process)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        # Workers of a multi-process server share its session: none may outlive the test.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

"""Traffic routers: the part of a rollout that moves traffic between baseline and canary.

A router is anything with the small :class:`TrafficRouter` protocol. prodkit ships two:

* :class:`HAProxyRouter` sets server weights through HAProxy's runtime API (its stats socket),
  so the change takes effect at once, without a reload;
* :class:`CommandRouter` runs a command of your choice with the weights filled in — a
  ``kubectl`` patch of a traffic split, an nginx include file plus a reload, a cloud CLI.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from prodkit._core.exceptions import ConfigurationError, ProdkitError


class RouterError(ProdkitError):
    """The traffic router could not be reached or refused a weight change."""


@runtime_checkable
class TrafficRouter(Protocol):
    """Moves traffic between the baseline and the canary (a pluggable part of a rollout).

    Weights are percentages: ``set_weights(25, 75)`` sends a quarter of the requests to the
    canary. Both methods raise :class:`RouterError` on failure.
    """

    def describe(self) -> str:
        """A short human-readable description for logs and deployment records."""
        ...

    def check(self) -> None:
        """Pre-flight: verify that the router is reachable and knows both targets."""
        ...

    def set_weights(self, canary: int, baseline: int) -> None:
        """Route ``canary`` percent of the traffic to the canary and ``baseline`` to the baseline."""
        ...


class HAProxyRouter:
    """Set two servers' weights through HAProxy's runtime API.

    HAProxy needs a stats socket at admin level in its ``global`` section
    (``stats socket /run/haproxy/admin.sock mode 600 level admin``) and one backend holding
    both servers. Weights are sent as ``set server <backend>/<server> weight N`` with N in
    0..256 (the percentage itself), so the split holds whatever the servers' initial weights.

    Arguments:
        socket_path: path of the stats socket (a UNIX socket).
        backend: the backend that holds both servers.
        canary_server, baseline_server: the two servers' names in that backend.
        timeout: seconds to wait for HAProxy to answer one command.
    """

    def __init__(
        self,
        socket_path: str | Path,
        *,
        backend: str,
        canary_server: str = "canary",
        baseline_server: str = "baseline",
        timeout: float = 5.0,
    ) -> None:
        for option, value in (
            ("backend", backend),
            ("canary_server", canary_server),
            ("baseline_server", baseline_server),
        ):
            if not value or any(ch.isspace() or ch in "/;" for ch in value):
                raise ConfigurationError(
                    f"{option} {value!r} must be a non-empty HAProxy name without spaces, '/' or ';'"
                )
        if canary_server == baseline_server:
            raise ConfigurationError("canary_server and baseline_server must be different servers")
        if timeout <= 0:
            raise ConfigurationError("timeout must be a positive number of seconds")
        self.socket_path = Path(socket_path)
        self.backend = backend
        self.canary_server = canary_server
        self.baseline_server = baseline_server
        self.timeout = timeout

    def describe(self) -> str:
        """``haproxy:<socket> <backend>/{canary,baseline}``."""
        return (
            f"haproxy:{self.socket_path} {self.backend}/"
            f"{{{self.canary_server},{self.baseline_server}}}"
        )

    def command(self, line: str) -> str:
        """Send one runtime-API command and return HAProxy's answer (stripped)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(str(self.socket_path))
                sock.sendall(line.encode() + b"\n")
                chunks: list[bytes] = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError as exc:
            raise RouterError(f"HAProxy runtime API at {self.socket_path}: {exc}") from exc
        return b"".join(chunks).decode("utf-8", "replace").strip()

    def weight(self, server: str) -> int:
        """The current weight of ``server`` in the backend (``get weight``)."""
        answer = self.command(f"get weight {self.backend}/{server}")
        first = answer.split(" ", 1)[0]
        if not first.isdigit():
            raise RouterError(f"HAProxy: get weight {self.backend}/{server}: {answer}")
        return int(first)

    def check(self) -> None:
        """Both servers exist in the backend and HAProxy answers on the socket."""
        for server in (self.canary_server, self.baseline_server):
            self.weight(server)

    def set_weights(self, canary: int, baseline: int) -> None:
        """Set both weights, the one that shrinks first, and verify them with ``get weight``."""
        _check_weights(canary, baseline)
        changes = [(self.canary_server, canary), (self.baseline_server, baseline)]
        if canary > self.weight(self.canary_server):
            # Drain the baseline's share before the canary takes more, never overloading either.
            changes.reverse()
        for server, weight in changes:
            answer = self.command(f"set server {self.backend}/{server} weight {weight}")
            # HAProxy answers an empty line on success and a message otherwise.
            if answer:
                raise RouterError(f"HAProxy refused weight {weight} for {server}: {answer}")
        for server, weight in changes:
            if self.weight(server) != weight:
                raise RouterError(f"HAProxy did not apply weight {weight} to {server}")


class CommandRouter:
    """Run a command template to change the split; for Kubernetes, nginx, a cloud LB, ...

    The template is split like a shell would (``shlex``) but run without a shell; in each
    argument ``{canary_weight}`` and ``{baseline_weight}`` are replaced by the percentages. A
    non-zero exit status is a :class:`RouterError`. Example (a Gateway API ``HTTPRoute`` whose
    second backend is the canary)::

        CommandRouter(
            "kubectl patch httproute funds --type=json -p '[{{\"op\": \"replace\", "
            "\"path\": \"/spec/rules/0/backendRefs/1/weight\", \"value\": {canary_weight}}}]'"
        )

    Literal braces are doubled (``{{``/``}}``), as in :meth:`str.format`.

    Arguments:
        template: the command line, with the placeholders.
        check_command: an optional command run by :meth:`check` (pre-flight), e.g.
            ``kubectl get httproute funds``.
        timeout: seconds a command may take.
    """

    def __init__(
        self,
        template: str | Sequence[str],
        *,
        check_command: str | Sequence[str] | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.template = shlex.split(template) if isinstance(template, str) else list(template)
        if not self.template:
            raise ConfigurationError("template must name a command to run")
        try:
            self._render(0, 100)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigurationError(
                f"template {template!r} has an unknown placeholder {exc}; use {{canary_weight}} "
                "and {baseline_weight}, and double literal braces"
            ) from exc
        if check_command is None:
            self.check_command: list[str] | None = None
        else:
            self.check_command = (
                shlex.split(check_command)
                if isinstance(check_command, str)
                else list(check_command)
            )
        if timeout <= 0:
            raise ConfigurationError("timeout must be a positive number of seconds")
        self.timeout = timeout

    def _render(self, canary: int, baseline: int) -> list[str]:
        return [
            part.format(canary_weight=canary, baseline_weight=baseline) for part in self.template
        ]

    def describe(self) -> str:
        """``command:<the template>``."""
        return f"command:{shlex.join(self.template)}"

    def _run(self, argv: list[str]) -> None:
        try:
            result = subprocess.run(  # noqa: S603 - the operator's own command, without a shell
                argv, capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RouterError(f"{shlex.join(argv)}: {exc}") from exc
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip()[-500:]
            raise RouterError(f"{shlex.join(argv)} exited with {result.returncode}: {output}")

    def check(self) -> None:
        """Run ``check_command`` if one was given."""
        if self.check_command:
            self._run(self.check_command)

    def set_weights(self, canary: int, baseline: int) -> None:
        """Run the template with the weights filled in."""
        _check_weights(canary, baseline)
        self._run(self._render(canary, baseline))


def _check_weights(canary: int, baseline: int) -> None:
    if not (0 <= canary <= 100 and 0 <= baseline <= 100):
        raise RouterError(f"weights must be percentages, got canary={canary} baseline={baseline}")


__all__ = ["CommandRouter", "HAProxyRouter", "RouterError", "TrafficRouter"]

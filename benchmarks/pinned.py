"""``python -m benchmarks.pinned CPUS MODULE [ARGS...]``: ``python -m MODULE`` on those CPUs.

Replaces itself with ``taskset -c CPUS python -m MODULE ARGS...``, which replaces itself with
the module: the process keeps this one's PID (so ``tests.servers.run_server`` stops it by its
own PID), and every process it starts, a server's workers included, inherits the CPUs.
"""

from __future__ import annotations

import os
import shutil
import sys


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    cpus, module, *args = argv
    taskset = shutil.which("taskset")
    if taskset is None:
        raise SystemExit("benchmarks.pinned: taskset is not installed (Debian: util-linux)")
    os.execv(taskset, ["taskset", "-c", cpus, sys.executable, "-m", module, *args])  # noqa: S606


if __name__ == "__main__":
    main(sys.argv[1:])

"""A gunicorn worker class: ``gunicorn app:app -k prodkit.serving.gunicorn.Worker``.

gunicorn's uvicorn worker (the ``uvicorn-worker`` package) with what ``prodkit serve`` changes
in uvicorn: the request head bounded where it arrives, requests already on their way at
shutdown answered (:class:`prodkit.serving.uvicorn.HttpProtocol`), and forwarding headers left
to ``TRUSTED_PROXIES`` (gunicorn's ``FORWARDED_ALLOW_IPS`` would trust 127.0.0.1). Its access
log stays gunicorn's to configure (``--access-logfile``; prodkit's access log writes one).
"""

from __future__ import annotations

from typing import Any

from uvicorn_worker import UvicornWorker

from prodkit.serving._run_uvicorn import PROTOCOL


class Worker(UvicornWorker):  # type: ignore[misc]  # uvicorn-worker has no type information
    """gunicorn's ``uvicorn_worker.UvicornWorker`` with prodkit's HTTP protocol, proxy headers off."""

    CONFIG_KWARGS: dict[str, Any] = {  # noqa: RUF012  # uvicorn-worker's own class attribute
        "loop": "auto",
        "http": PROTOCOL,
        "proxy_headers": False,
    }


__all__ = ["Worker"]

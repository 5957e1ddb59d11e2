"""``python -m benchmarks.responder --port 8000``: a server that costs next to nothing.

It answers every HTTP/1.1 request head it reads with the same 200 (``ok``), without parsing
more than the blank line that ends a head (requests without a body only). Measuring it shows
how far the load generator holds its schedule on its own CPU: the ceiling of every other
figure (``python -m benchmarks capacity --only responder``). Binds 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import uvloop

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
END = b"\r\n\r\n"


class Responder(asyncio.Protocol):
    """One connection: one fixed answer per request head."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a TCP transport

    def data_received(self, data: bytes) -> None:
        data = self.pending + data
        heads = data.count(END)
        self.pending = data[data.rfind(END) + len(END) :] if heads else data
        if heads and self.transport is not None:
            self.transport.write(RESPONSE * heads)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Responder, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.responder")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    uvloop.run(serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Hold N idle keep-alive TLS connections to a server on loopback, for bench/idle.sh.

Usage: idle.py PORT PROTO N [PARALLEL]
  PROTO    h1 (ALPN http/1.1) or h2 (ALPN h2)
  PARALLEL connections being set up at once (64)

Each connection does a TLS handshake and one `GET /` (answered 200), then stays open and idle:
over HTTP/2 it answers the server's PINGs, as a client would. When all N are up the script
prints "ready N" on stdout and holds them until its standard input closes or it gets SIGTERM,
then prints "closed_by_server K" (connections the server closed while held) and exits.
Only the standard library; no certificate check (the servers use a throwaway certificate).
"""

import asyncio
import signal
import ssl
import struct
import sys

HOST = "127.0.0.1"


def h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def h2_request(authority: str) -> bytes:
    # HPACK, static table only: :method GET (2), :scheme https (7), :path / (4), then
    # :authority as a literal without indexing, name from the static table (1).
    block = bytes([0x82, 0x87, 0x84, 0x01, len(authority)]) + authority.encode()
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    return preface + h2_frame(0x4, 0, 0) + h2_frame(0x1, 0x5, 1, block)  # SETTINGS; HEADERS


class Conn:
    closed_by_server = 0

    def __init__(self, proto: str):
        self.proto = proto
        self.reader = self.writer = None
        self.task = None

    async def open(self, ctx, port):
        self.reader, self.writer = await asyncio.open_connection(HOST, port, ssl=ctx)
        alpn = self.writer.get_extra_info("ssl_object").selected_alpn_protocol()
        want = "h2" if self.proto == "h2" else "http/1.1"
        if alpn != want:
            raise RuntimeError(f"ALPN {alpn!r}, wanted {want}")
        if self.proto == "h2":
            self.writer.write(h2_request(f"{HOST}:{port}"))
            await self.h2_until_response()
        else:
            self.writer.write(f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode())
            await self.h1_response()
        self.task = asyncio.create_task(self.hold())

    async def h1_response(self):
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        if status != b"200":
            raise RuntimeError(f"status {status.decode()}")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await self.reader.readexactly(length)

    async def h2_frame(self):
        head = await self.reader.readexactly(9)
        length = int.from_bytes(head[:3], "big")
        kind, flags = head[3], head[4]
        stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        payload = await self.reader.readexactly(length)
        if kind == 0x4 and not flags & 0x1:  # SETTINGS: acknowledge
            self.writer.write(h2_frame(0x4, 0x1, 0))
        elif kind == 0x6 and not flags & 0x1:  # PING: answer
            self.writer.write(h2_frame(0x6, 0x1, 0, payload))
        elif kind == 0x7:  # GOAWAY
            raise ConnectionError("GOAWAY")
        return kind, flags, stream

    async def h2_until_response(self):
        while True:
            kind, flags, stream = await self.h2_frame()
            if stream == 1 and kind in (0x0, 0x1) and flags & 0x1:  # DATA/HEADERS, END_STREAM
                return

    async def hold(self):
        try:
            if self.proto == "h2":
                while True:
                    await self.h2_frame()
            else:
                if not await self.reader.read(1):
                    raise ConnectionError("closed")
                raise RuntimeError("unexpected bytes on an idle HTTP/1.1 connection")
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            Conn.closed_by_server += 1
        except asyncio.CancelledError:
            pass

    def close(self):
        if self.task:
            self.task.cancel()
        if self.writer:
            self.writer.transport.abort()


async def main():
    port, proto, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    parallel = int(sys.argv[4]) if len(sys.argv) > 4 else 64
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2" if proto == "h2" else "http/1.1"])

    conns = [Conn(proto) for _ in range(n)]
    gate = asyncio.Semaphore(parallel)

    async def one(c):
        async with gate:
            await asyncio.wait_for(c.open(ctx, port), 30)

    try:
        await asyncio.gather(*(one(c) for c in conns))
    except Exception as e:  # noqa: BLE001 - report any failure and stop
        print(f"error: {type(e).__name__}: {e}", flush=True)
        for c in conns:
            c.close()
        sys.exit(1)
    print(f"ready {n}", flush=True)

    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: done.done() or done.set_result(None))
    loop.add_reader(sys.stdin.fileno(), lambda: sys.stdin.read(1) or done.done() or done.set_result(None))
    await done
    print(f"closed_by_server {Conn.closed_by_server}", flush=True)
    for c in conns:
        c.close()


if __name__ == "__main__":
    asyncio.run(main())

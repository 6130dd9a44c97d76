#!/usr/bin/env python3
"""A TCP proxy that adds latency to every request of a request/response protocol
(HTTP/1.1 to an S3 server): each time a client starts sending after the server last
spoke on that connection (a new request, on a new or a kept-alive connection), the
client's bytes wait DELAY_MS before they go on. Bytes of one request body are not
delayed again.

    bench/delayproxy.py LISTEN_PORT TARGET_HOST TARGET_PORT [DELAY_MS=20]

Prints the number of delayed requests when stopped (SIGINT or SIGTERM), then the
requests by kind: LIST (a GET listing objects or multipart uploads), GET, HEAD, PUT,
POST, DELETE, e.g. `requests by kind: GET=31 LIST=2 PUT=4`.
"""
import asyncio
import collections
import signal
import sys

LISTEN, HOST, PORT = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
DELAY = (float(sys.argv[4]) if len(sys.argv) > 4 else 20.0) / 1000
requests = 0
kinds = collections.Counter()


def kind(data):
    """The kind of the request whose first bytes are `data`."""
    line = data.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
    method, target = line[0], line[1] if len(line) > 1 else ""
    query = target.partition("?")[2].split("&")
    listing = any(q.startswith("list-type=") or q in ("uploads", "uploads=") for q in query)
    return "LIST" if method == "GET" and listing else method


async def handle(client_r, client_w):
    global requests
    try:
        server_r, server_w = await asyncio.open_connection(HOST, PORT)
    except OSError:
        client_w.close()
        return
    # True when the server spoke last: the client's next bytes start a request.
    turn = {"server": True}

    async def upstream():
        global requests
        while data := await client_r.read(1 << 16):
            if turn["server"]:
                turn["server"] = False
                requests += 1
                kinds[kind(data)] += 1
                await asyncio.sleep(DELAY)
            server_w.write(data)
            await server_w.drain()
        server_w.close()

    async def downstream():
        while data := await server_r.read(1 << 16):
            turn["server"] = True
            client_w.write(data)
            await client_w.drain()
        client_w.close()

    await asyncio.gather(upstream(), downstream(), return_exceptions=True)


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", LISTEN)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    print(f"delayed requests: {requests}", file=sys.stderr)
    counts = " ".join(f"{k}={n}" for k, n in sorted(kinds.items()))
    print(f"requests by kind: {counts}", file=sys.stderr)


asyncio.run(main())

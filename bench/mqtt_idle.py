#!/usr/bin/env python3
"""Holds N idle MQTT connections over TLS open against a broker.

bench/mqtt.sh's idle-connections scenario: it reads the broker's RSS before
this connects and while it holds the connections. One asyncio loop, raw
sockets: no MQTT library (paho would cost a thread and far more memory per
client), only what an idle client does:

  TLS handshake with a client certificate -> CONNECT (clean start, keep
  alive --keep-alive) -> CONNACK with reason code 0 -> PINGREQ every half
  keep-alive (the broker's Server Keep Alive if it sends one) -> DISCONNECT.

Prints, on stdout, one line when every connection attempt has ended:

  READY ok=N failed=N seconds=S

then holds the connections until --hold seconds pass or it gets SIGTERM or
SIGINT, and prints

  DONE ok=N dropped=N

where dropped counts the connections the broker closed while they were held.
Failures are summarised on stderr (the first few reasons, then counts).
Bounded: --connect-timeout per connection, --hold at most.
"""

import argparse
import asyncio
import collections
import signal
import ssl
import sys
import time


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            b |= 0x80
        out.append(b)
        if not n:
            return bytes(out)


def utf8(s):
    b = s.encode()
    return len(b).to_bytes(2, "big") + b


def connect_packet(client_id, keep_alive, level):
    # Protocol name, level, flags: clean start (bit 1), no user name or
    # password (the certificate is the identity), keep alive.
    var = utf8("MQTT") + bytes([level, 0x02]) + keep_alive.to_bytes(2, "big")
    if level == 5:
        var += b"\x00"  # no properties
    body = var + utf8(client_id)
    return b"\x10" + varint(len(body)) + body


PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"


async def read_packet(reader):
    """One MQTT control packet: (first byte, body)."""
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    for _ in range(4):
        b = (await reader.readexactly(1))[0]
        length |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    else:
        raise ValueError("malformed remaining length")
    return first, await reader.readexactly(length)


def read_varint(buf, i):
    n, shift = 0, 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def server_keep_alive(body):
    """The Server Keep Alive property (0x13) of a v5 CONNACK, or None."""
    try:
        plen, i = read_varint(body, 2)
        end = i + plen
        while i < end:
            ident = body[i]
            i += 1
            if ident == 0x13:
                return int.from_bytes(body[i : i + 2], "big")
            # Skip the other CONNACK properties by their types.
            if ident in (0x11, 0x27):  # four-byte integers
                i += 4
            elif ident in (0x21, 0x22, 0x13):  # two-byte integers
                i += 2
            elif ident in (0x24, 0x25, 0x28, 0x29, 0x2A):  # bytes
                i += 1
            elif ident in (0x12, 0x1A, 0x1C, 0x1F, 0x15, 0x16):  # strings, data
                i += 2 + int.from_bytes(body[i : i + 2], "big")
            elif ident == 0x26:  # user property: two strings
                for _ in range(2):
                    i += 2 + int.from_bytes(body[i : i + 2], "big")
            else:
                return None
    except IndexError:
        return None
    return None


class Stats:
    def __init__(self):
        self.ok = 0
        self.failed = 0
        self.dropped = 0
        self.reasons = collections.Counter()


async def hold(reader, writer, ping_every, stop, stats):
    """Keeps one connection alive until `stop` is set or the broker closes it."""
    reading = asyncio.ensure_future(read_packet(reader))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while True:
            done, _ = await asyncio.wait(
                {reading, stopping},
                timeout=ping_every,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if stopping in done:
                return
            if reading in done:
                if reading.exception() is not None:
                    stats.dropped += 1
                    return
                reading = asyncio.ensure_future(read_packet(reader))  # PINGRESP
                continue
            writer.write(PINGREQ)
            await writer.drain()
    except (OSError, ConnectionError):
        stats.dropped += 1
    finally:
        for t in (reading, stopping):
            t.cancel()
        try:
            writer.write(DISCONNECT)
            writer.close()
        except Exception:
            pass


async def one(i, args, ctx, sem, stop, stats, holders):
    async with sem:
        if stop.is_set():
            return
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    args.host, args.port, ssl=ctx, server_hostname=args.server_name
                ),
                args.connect_timeout,
            )
            writer.write(
                connect_packet(f"{args.client_id_prefix}{i}", args.keep_alive, args.level)
            )
            first, body = await asyncio.wait_for(read_packet(reader), args.connect_timeout)
            if first != 0x20 or len(body) < 2 or body[1] != 0:
                code = body[1] if len(body) >= 2 else None
                raise RuntimeError(f"CONNACK packet 0x{first:02x} reason {code}")
        except Exception as e:  # noqa: BLE001 -- counted and reported
            stats.failed += 1
            stats.reasons[f"{type(e).__name__}: {e}"[:160]] += 1
            return
        stats.ok += 1
    keep = args.keep_alive
    if args.level == 5:
        keep = server_keep_alive(body) or keep
    ping_every = keep / 2 if keep else None
    holders.append(asyncio.ensure_future(hold(reader, writer, ping_every, stop, stats)))


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--server-name", default="localhost",
                   help="TLS server name to verify the broker's certificate against")
    p.add_argument("--ca", required=True, help="CA that signed the broker's certificate")
    p.add_argument("--cert", help="client certificate (PEM)")
    p.add_argument("--key", help="client key (PEM)")
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=100,
                   help="connection attempts (TLS handshakes) in flight at once")
    p.add_argument("--keep-alive", type=int, default=600,
                   help="seconds, in CONNECT; 0 turns keep-alive off")
    p.add_argument("--level", type=int, choices=(4, 5), default=5,
                   help="MQTT protocol level: 4 is 3.1.1, 5 is 5.0")
    p.add_argument("--client-id-prefix", default="idle-")
    p.add_argument("--connect-timeout", type=float, default=30.0)
    p.add_argument("--hold", type=float, default=300.0,
                   help="seconds to hold the connections after READY, at most")
    args = p.parse_args()
    if args.count < 1 or args.concurrency < 1:
        p.error("--count and --concurrency must be at least 1")

    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.ca)
    if args.cert:
        ctx.load_cert_chain(args.cert, args.key)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    stats = Stats()
    holders = []
    sem = asyncio.Semaphore(args.concurrency)
    start = time.monotonic()
    await asyncio.gather(
        *(one(i, args, ctx, sem, stop, stats, holders) for i in range(args.count))
    )
    print(f"READY ok={stats.ok} failed={stats.failed} "
          f"seconds={time.monotonic() - start:.1f}", flush=True)
    for reason, n in stats.reasons.most_common(5):
        print(f"mqtt_idle: {n} x {reason}", file=sys.stderr, flush=True)

    try:
        await asyncio.wait_for(stop.wait(), args.hold)
    except asyncio.TimeoutError:
        stop.set()
    await asyncio.gather(*holders, return_exceptions=True)
    print(f"DONE ok={stats.ok} dropped={stats.dropped}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())

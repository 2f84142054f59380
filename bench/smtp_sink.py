"""A fast SMTP sink for benchmarks: speaks just enough SMTP to accept messages, counts them.

Run it as its own process (`python bench/smtp_sink.py --port P --stats FILE`) so that its CPU is
measured apart from the pipeline's; it writes counts to FILE when it gets SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from collections import Counter


class Stats:
    def __init__(self) -> None:
        self.messages = 0
        self.connections = 0
        self.recipients: Counter[str] = Counter()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: Stats) -> None:
    stats.connections += 1
    writer.write(b"220 sink ESMTP\r\n")
    rcpts: list[str] = []
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                writer.write(b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 33554432\r\n")
            elif verb == b"MAIL":
                rcpts = []
                writer.write(b"250 OK\r\n")
            elif verb == b"RCPT":
                address = line.split(b":", 1)[1].strip().strip(b"<>").split(b">")[0]
                rcpts.append(address.decode(errors="replace"))
                writer.write(b"250 OK\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                await reader.readuntil(b"\r\n.\r\n")
                stats.messages += 1
                stats.recipients.update(rcpts)
                writer.write(b"250 accepted\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:  # RSET, NOOP, anything else
                writer.write(b"250 OK\r\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def report(stats: Stats, live_path: str, stop: asyncio.Event) -> None:
    last = -1
    while not stop.is_set():
        if stats.messages != last:
            last = stats.messages
            with open(live_path + ".tmp", "w") as out:
                out.write(str(last))
            os.replace(live_path + ".tmp", live_path)
        await asyncio.sleep(0.05)


async def serve(host: str, port: int, stats_path: str, live_path: str | None) -> None:
    stats = Stats()
    server = await asyncio.start_server(lambda r, w: handle(r, w, stats), host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if live_path:
        reporter = asyncio.create_task(report(stats, live_path, stop))
    print("ready", flush=True)
    async with server:
        await stop.wait()
    if live_path:
        await reporter
    duplicates = sum(1 for n in stats.recipients.values() if n > 1)
    with open(stats_path, "w") as out:
        json.dump(
            {
                "messages": stats.messages,
                "connections": stats.connections,
                "recipients": len(stats.recipients),
                "duplicates": duplicates,
            },
            out,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stats", required=True)
    parser.add_argument("--live", help="a file kept up to date with the message count")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.stats, args.live))


if __name__ == "__main__":
    main()

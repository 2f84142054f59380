"""A fast SMTP sink for benchmarks: speaks just enough SMTP to accept messages, counts them.

It offers PIPELINING and CHUNKING (RFC 3030 BDAT), as Postfix and Exim do; `--refuse TEXT`
answers 550 to recipients containing TEXT and `--save DIR` keeps each message, for the tests of
both paths.

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
from pathlib import Path


class Stats:
    def __init__(self) -> None:
        self.messages = 0
        self.connections = 0
        self.recipients: Counter[str] = Counter()


async def handle(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    stats: Stats,
    refuse: bytes | None,
    save: Path | None,
) -> None:
    stats.connections += 1
    writer.write(b"220 sink ESMTP\r\n")
    rcpts: list[str] = []
    chunks: list[bytes] = []
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                writer.write(
                    b"250-sink\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-8BITMIME\r\n"
                    b"250 SIZE 33554432\r\n"
                )
            elif verb == b"MAIL":
                rcpts, chunks = [], []
                writer.write(b"250 OK\r\n")
            elif verb == b"RCPT":
                address = line.split(b":", 1)[1].strip().strip(b"<>").split(b">")[0]
                if refuse is not None and refuse in address:
                    writer.write(b"550 5.1.1 no such user\r\n")
                else:
                    rcpts.append(address.decode(errors="replace"))
                    writer.write(b"250 OK\r\n")
            elif verb == b"DATA" and not rcpts:
                writer.write(b"554 5.5.1 no valid recipients\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go ahead\r\n")
                await writer.drain()
                data = await reader.readuntil(b"\r\n.\r\n")
                if save is not None:  # undo the dot-stuffing
                    data = b"\r\n".join(
                        ln[1:] if ln.startswith(b".") else ln for ln in data[:-3].split(b"\r\n")
                    )
                writer.write(accept(stats, rcpts, data, save))
                rcpts = []
            elif verb == b"BDAT":
                # RFC 3030: read exactly the chunk; the last one completes the message.
                parts = line.split()
                chunks.append(await reader.readexactly(int(parts[1])))
                if len(parts) > 2 and parts[2].upper() == b"LAST":
                    writer.write(accept(stats, rcpts, b"".join(chunks), save))
                    rcpts, chunks = [], []
                else:
                    writer.write(b"250 chunk received\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:  # RSET, NOOP, anything else
                rcpts = []
                writer.write(b"250 OK\r\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


def accept(stats: Stats, rcpts: list[str], data: bytes, save: Path | None) -> bytes:
    if not rcpts:
        return b"554 5.5.1 no valid recipients\r\n"
    stats.messages += 1
    stats.recipients.update(rcpts)
    if save is not None:
        (save / f"{stats.messages:06d}.eml").write_bytes(data)
    return b"250 accepted\r\n"


async def report(stats: Stats, live_path: str, stop: asyncio.Event) -> None:
    last = -1
    while not stop.is_set():
        if stats.messages != last:
            last = stats.messages
            with open(live_path + ".tmp", "w") as out:
                out.write(str(last))
            os.replace(live_path + ".tmp", live_path)
        await asyncio.sleep(0.05)


async def serve(
    host: str,
    port: int,
    stats_path: str,
    live_path: str | None,
    refuse: bytes | None = None,
    save: Path | None = None,
) -> None:
    stats = Stats()
    server = await asyncio.start_server(lambda r, w: handle(r, w, stats, refuse, save), host, port)
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
    parser.add_argument("--refuse", help="answer 550 to recipients containing this text")
    parser.add_argument("--save", type=Path, help="write each message to a file in this folder")
    args = parser.parse_args()
    refuse = args.refuse.encode() if args.refuse else None
    asyncio.run(serve(args.host, args.port, args.stats, args.live, refuse, args.save))


if __name__ == "__main__":
    main()

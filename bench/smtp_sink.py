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


class Session(asyncio.Protocol):
    """One SMTP connection, parsed straight from the bytes received.

    Replies to pipelined commands go out together, once everything received so far is
    answered (as Postfix does): one write per batch of commands instead of one per reply, and
    the client reads them in one go.
    """

    def __init__(
        self, stats: Stats, refuse: bytes | None, save: Path | None, delay: float = 0.0
    ) -> None:
        self.stats, self.refuse, self.save = stats, refuse, save
        # Seconds before answering a message's end of data (a relay across a network, which
        # takes a few milliseconds per message; 0: answer at once, as on loopback).
        self.delay = delay
        self.accepted = 0
        self.buffer = bytearray()
        self.rcpts: list[str] = []
        self.chunks: list[bytes] = []
        self.pending = 0  # bytes of a BDAT chunk still to come
        self.last = False
        self.in_data = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.stats.connections += 1
        transport.write(b"220 sink ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        replies: list[bytes] = []
        while self.transport is not None:
            if self.pending:
                # A chunk's bytes are taken as they come (kept only to be saved).
                take = min(self.pending, len(self.buffer))
                if self.save is not None:
                    self.chunks.append(bytes(self.buffer[:take]))
                del self.buffer[:take]
                self.pending -= take
                if self.pending:
                    break
                if self.last:
                    replies.append(self.accept(b"".join(self.chunks)))
                    self.rcpts, self.chunks = [], []
                else:
                    replies.append(b"250 chunk received\r\n")
                continue
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    break
                message = bytes(self.buffer[: end + 2])
                del self.buffer[: end + 5]
                self.in_data = False
                if self.save is not None:  # undo the dot-stuffing
                    message = b"\r\n".join(
                        ln[1:] if ln.startswith(b".") else ln for ln in message.split(b"\r\n")
                    )
                replies.append(self.accept(message))
                self.rcpts = []
                continue
            end = self.buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(self.buffer[: end + 1])
            del self.buffer[: end + 1]
            replies.append(self.command(line))
        if replies and self.transport is not None:
            if self.delay and self.accepted:
                # The client waits for this answer before its next transaction.
                self.accepted = 0
                asyncio.get_running_loop().call_later(
                    self.delay, self.transport.write, b"".join(replies)
                )
            else:
                self.transport.write(b"".join(replies))

    def command(self, line: bytes) -> bytes:
        verb = line[:4].upper()
        if verb in (b"EHLO", b"HELO"):
            return (
                b"250-sink\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-8BITMIME\r\n"
                b"250 SIZE 33554432\r\n"
            )
        if verb == b"MAIL":
            self.rcpts, self.chunks = [], []
            return b"250 OK\r\n"
        if verb == b"RCPT":
            address = line.split(b":", 1)[1].strip().strip(b"<>").split(b">")[0]
            if self.refuse is not None and self.refuse in address:
                return b"550 5.1.1 no such user\r\n"
            self.rcpts.append(address.decode(errors="replace"))
            return b"250 OK\r\n"
        if verb == b"DATA":
            if not self.rcpts:
                return b"554 5.5.1 no valid recipients\r\n"
            self.in_data = True
            return b"354 go ahead\r\n"
        if verb == b"BDAT":
            # RFC 3030: read exactly the chunk; the last one completes the message.
            parts = line.split()
            self.pending = int(parts[1])
            self.last = len(parts) > 2 and parts[2].upper() == b"LAST"
            # The reply comes once the chunk is in (at once for an empty one).
            return b"" if self.pending else self.empty_chunk()
        if verb == b"QUIT":
            assert self.transport is not None
            self.transport.write(b"221 bye\r\n")
            self.transport.close()
            self.transport = None
            return b""
        # RSET, NOOP, anything else
        self.rcpts = []
        return b"250 OK\r\n"

    def empty_chunk(self) -> bytes:
        if self.last:
            reply = self.accept(b"".join(self.chunks))
            self.rcpts, self.chunks = [], []
            return reply
        return b"250 chunk received\r\n"

    def accept(self, data: bytes) -> bytes:
        self.accepted += 1
        return accept(self.stats, self.rcpts, data, self.save)


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
    delay: float = 0.0,
) -> None:
    stats = Stats()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Session(stats, refuse, save, delay), host, port)
    stop = asyncio.Event()
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
    parser.add_argument(
        "--delay-ms", type=float, default=0.0, help="milliseconds before answering each message"
    )
    args = parser.parse_args()
    refuse = args.refuse.encode() if args.refuse else None
    asyncio.run(
        serve(args.host, args.port, args.stats, args.live, refuse, args.save, args.delay_ms / 1000)
    )


if __name__ == "__main__":
    main()

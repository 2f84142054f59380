"""An SMTP server for fault tests: PIPELINING and CHUNKING (BDAT) like Postfix and Exim, that
can drop a connection at a chosen step of a chosen transaction, answer slowly, and counts
what it took. It runs an asyncio loop in a thread of the test process, on a loopback port.

Faults, by transaction number (1, 2, ... in the order MAIL commands arrive):
- "drop-at-data": the connection closes when the DATA command arrives, before any answer to
  the transaction: nothing was taken, and the client knows the message did not go out.
- "drop-after-end": the message is taken (counted as received), then the connection closes
  before the final answer (after the dot, or after BDAT LAST): the client cannot know.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Taken:
    recipients: list[str]
    data: bytes


@dataclass
class FaultySMTP:
    host: str
    port: int
    chunking: bool = True
    pipelining: bool = True
    fault: Callable[[int], str | None] | None = None
    # Seconds before the final answer to each message (a slow or rate-limiting relay).
    delay: float = 0.0
    taken: list[Taken] = field(default_factory=list)
    transactions: int = 0
    connections: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.AbstractServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    def counts(self) -> Counter[str]:
        with self.lock:
            return Counter(r for t in self.taken for r in t.recipients)

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)

            async def serve() -> None:
                self._server = await loop.create_server(
                    lambda: _Session(self), self.host, self.port
                )
                ready.set()

            loop.run_until_complete(serve())
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="faulty-smtp", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fault SMTP server did not start")

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def close() -> None:
            server.close()

        asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)


class _Session(asyncio.Protocol):
    def __init__(self, sink: FaultySMTP) -> None:
        self.sink = sink
        self.buffer = bytearray()
        self.rcpts: list[str] = []
        self.chunks: list[bytes] = []
        self.pending = 0
        self.last = False
        self.in_data = False
        self.fault: str | None = None
        self.transport: asyncio.Transport | None = None
        self.waiting = False  # a delayed answer is due: nothing else is read meanwhile

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        with self.sink.lock:
            self.sink.connections += 1
        transport.write(b"220 faulty ESMTP\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.process()

    def process(self) -> None:
        replies: list[bytes] = []
        while self.transport is not None and not self.waiting:
            if self.pending:
                take = min(self.pending, len(self.buffer))
                self.chunks.append(bytes(self.buffer[:take]))
                del self.buffer[:take]
                self.pending -= take
                if self.pending:
                    break
                if self.last:
                    self.end_of_message(b"".join(self.chunks), replies)
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
                message = b"\r\n".join(
                    ln[1:] if ln.startswith(b".") else ln for ln in message.split(b"\r\n")
                )
                self.end_of_message(message, replies)
                continue
            end = self.buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(self.buffer[: end + 1])
            del self.buffer[: end + 1]
            reply = self.command(line)
            if reply is None:  # dropped
                return
            replies.append(reply)
        if replies and self.transport is not None:
            self.transport.write(b"".join(replies))

    def drop(self, why: str) -> None:
        with self.sink.lock:
            self.sink.drops[why] += 1
        if self.transport is not None:
            self.transport.abort()
            self.transport = None

    def command(self, line: bytes) -> bytes | None:
        verb = line[:4].upper()
        if verb in (b"EHLO", b"HELO"):
            extensions = b"250-faulty\r\n"
            if self.sink.pipelining:
                extensions += b"250-PIPELINING\r\n"
            if self.sink.chunking:
                extensions += b"250-CHUNKING\r\n"
            return extensions + b"250 8BITMIME\r\n"
        if verb == b"MAIL":
            self.rcpts, self.chunks = [], []
            with self.sink.lock:
                self.sink.transactions += 1
                number = self.sink.transactions
            self.fault = self.sink.fault(number) if self.sink.fault else None
            return b"250 OK\r\n"
        if verb == b"RCPT":
            address = line.split(b":", 1)[1].strip().strip(b"<>").split(b">")[0]
            self.rcpts.append(address.decode(errors="replace"))
            return b"250 OK\r\n"
        if verb == b"DATA":
            if self.fault == "drop-at-data":
                self.drop("at DATA")
                return None
            self.in_data = True
            return b"354 go ahead\r\n"
        if verb == b"BDAT":
            if self.fault == "drop-at-data":
                self.drop("at BDAT")
                return None
            parts = line.split()
            self.pending = int(parts[1])
            self.last = len(parts) > 2 and parts[2].upper() == b"LAST"
            return b""
        if verb == b"QUIT":
            if self.transport is not None:
                self.transport.write(b"221 bye\r\n")
                self.transport.close()
                self.transport = None
            return None
        self.rcpts = []  # RSET, NOOP
        return b"250 OK\r\n"

    def end_of_message(self, data: bytes, replies: list[bytes]) -> None:
        with self.sink.lock:
            self.sink.taken.append(Taken(list(self.rcpts), data))
        self.rcpts, self.chunks = [], []
        if self.fault == "drop-after-end":
            if self.transport is not None and replies:
                self.transport.write(b"".join(replies))  # MAIL/RCPT answers, not the last
            replies.clear()
            self.drop("after the end of data")
            return
        if self.sink.delay > 0 and self.transport is not None:
            # Answer later; read nothing more meanwhile (the client waits for it anyway).
            if replies:
                self.transport.write(b"".join(replies))
                replies.clear()
            self.waiting = True
            loop = asyncio.get_running_loop()
            loop.call_later(self.sink.delay, self.answer_late)
            return
        replies.append(b"250 accepted\r\n")

    def answer_late(self) -> None:
        self.waiting = False
        if self.transport is not None:
            self.transport.write(b"250 accepted\r\n")
            self.process()

"""The sender interface every mailer implements, and the one error they raise."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

from digest.render import Mail


class DeliveryError(Exception):
    """A message could not be handed over, or its fate is unknown."""

    def __init__(
        self,
        message: str,
        *,
        permanent: bool,
        code: int | None = None,
        unreachable: bool = False,
        unconfirmed: bool = False,
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.code = code
        self.unreachable = unreachable
        self.unconfirmed = unconfirmed


class Connection(Protocol):
    def send(self, message: Mail) -> None: ...


class Mailer(Protocol):
    """`with mailer.connect() as conn: conn.send(msg)` – one connection for a batch."""

    def connect(self) -> AbstractContextManager[Connection]: ...

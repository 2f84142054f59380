"""What the broker holds: the delivery ids that a queued task, or one a worker took lately,
carries. The sweeper leaves those alone and queues again the planned rows nobody carries (a
flushed Redis, a dropped task), within a minute or two instead of a long grace.

Read straight from kombu's Redis layout (its documented keys): the queue's lists (one per
priority step) and the `unacked` hash of messages delivered to a worker, with the time each
was delivered in `unacked_index` (shared by every queue on the database: filtered by the
message's routing key, which is the queue's name). A message a worker took longer ago than a
lease counts as lost: a live worker would have claimed its rows by then, and a duplicate task
is harmless (the rows are claimed once) while a wrongly trusted one would hold digests back.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import redis

SEND_TASK = "workers.tasks.send_batch"
# kombu.transport.redis: Channel.sep, PRIORITY_STEPS, unacked_key, unacked_index_key.
_SEP = "\x06\x16"
_PRIORITIES = (0, 3, 6, 9)


def carried_delivery_ids(redis_url: str, queue: str, *, held_for: float) -> set[int]:
    """Delivery ids in send tasks waiting in `queue`, or taken by a worker within `held_for`
    seconds."""
    client = redis.Redis.from_url(redis_url)
    try:
        ids: set[int] = set()
        for priority in _PRIORITIES:
            name = queue if priority == 0 else f"{queue}{_SEP}{priority}"
            waiting: list[Any] = client.lrange(name, 0, -1)  # type: ignore[assignment]
            for raw in waiting:
                ids |= _send_ids(raw)
        tags: list[Any] = list(
            client.zrangebyscore("unacked_index", time.time() - held_for, "+inf")  # type: ignore[arg-type]
        )
        if tags:
            held: list[Any] = client.hmget("unacked", tags)  # type: ignore[assignment]
            for raw in held:
                if raw:
                    ids |= _held_for_queue(raw, queue)
        return ids
    finally:
        client.close()


def _held_for_queue(raw: Any, queue: str) -> set[int]:
    """The delivery ids of an unacknowledged message, if it came from `queue`: the `unacked`
    hash is shared by every queue (and deployment) on this Redis database."""
    try:
        payload, _exchange, routing_key = json.loads(raw)
    except (ValueError, TypeError):
        return set()
    return _send_ids(payload) if routing_key == queue else set()


def _send_ids(raw: Any) -> set[int]:
    """The delivery ids of one kombu message, if it is a send task; nothing otherwise."""
    try:
        message = json.loads(raw) if isinstance(raw, bytes | str) else raw
        if message.get("headers", {}).get("task") != SEND_TASK:
            return set()
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return {int(i) for i in args[0]}
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return set()  # not ours, or a format we do not know: never trusted to carry a row

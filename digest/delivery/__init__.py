"""Delivery: plan who is due, claim, rank in batches, render, send exactly once, retry, sweep.

The rooms, in the order a digest goes through them:

- `planner`: who is due now; a planned delivery row (the unique claim) for each of them.
- `state`: the one definition of claimable and stuck rows, and the statements that claim,
  renew, mark sent and set any other state, each fenced by the claim's token.
- `store`: those statements run the fast way on PostgreSQL, the portable way on SQLite.
- `corpus_cache`: the day's prepared candidate corpus, shared by batches and processes.
- `compose`: claimed deliveries + the corpus -> outgoing messages.
- `lease`: a claim's lease kept alive while its sender works; may this row still be sent?
- `transmit`: outgoing messages -> the mailer -> outcomes recorded (unconfirmed included).
- `send`: claim -> compose -> record -> transmit; `digest send`'s synchronous path.
- `report`: run summaries and records, deliveries by state, `digest why`.
"""

from digest.delivery.compose import Outgoing
from digest.delivery.context import Progress, SendContext
from digest.delivery.corpus_cache import (
    CorpusCache,
    read_shared,
    release_freed_memory,
    write_shared,
)
from digest.delivery.outcomes import Claim
from digest.delivery.planner import Plan, plan_deliveries, status_reason, window_of
from digest.delivery.report import (
    SendSummary,
    count_reasons,
    delivery_counts,
    describe_delivery,
    record_batch,
    record_plan,
    record_task_failure,
    why,
)
from digest.delivery.send import batches, send_deliveries, send_due_digests
from digest.delivery.state import backoff, release_unconfirmed, stuck_deliveries
from digest.delivery.store import DeliveryStore, delivery_store

__all__ = [
    "Claim",
    "CorpusCache",
    "DeliveryStore",
    "Outgoing",
    "Plan",
    "Progress",
    "SendContext",
    "SendSummary",
    "backoff",
    "batches",
    "count_reasons",
    "delivery_counts",
    "delivery_store",
    "describe_delivery",
    "plan_deliveries",
    "read_shared",
    "record_batch",
    "record_plan",
    "record_task_failure",
    "release_unconfirmed",
    "release_freed_memory",
    "send_deliveries",
    "send_due_digests",
    "status_reason",
    "stuck_deliveries",
    "why",
    "window_of",
    "write_shared",
]

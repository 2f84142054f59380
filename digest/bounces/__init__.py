"""Bounces that come back by mail: `detect` reads one (pure: which recipients failed, hard or
soft, why, and the token of the delivery it is about), `process` ties each to its delivery,
marks it failed and counts hard bounces towards suppression, once per message."""

from digest.bounces.detect import Failure, Findings, MalformedBounce, read_bounce
from digest.bounces.process import BounceRun, Outcome, process_bounces

__all__ = [
    "BounceRun",
    "Failure",
    "Findings",
    "MalformedBounce",
    "Outcome",
    "process_bounces",
    "read_bounce",
]

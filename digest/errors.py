"""The project's error hierarchy: one base, so callers catch ours and let real bugs through."""

from __future__ import annotations


class DigestError(Exception):
    """Base of every error this package raises on purpose."""


class UserError(DigestError):
    """Bad input from a person: the message is shown to them as is.

    Not a ValueError: an `except UserError` catches what we refused on purpose, never a bug."""

"""Errors every layer may raise, at the bottom of the house: a user's bad input is a ValueError subclass
(one line, exit code 2, EXIT_USER); anything else is a bug (exit code 1)."""

from __future__ import annotations

EXIT_USER = 2  # bad arguments, model, input, plan: the user can fix it
EXIT_BUG = 1  # anything else


class UsageError(ValueError):
    """Bad arguments."""


class ModelError(ValueError):
    """A model we cannot run: unsupported op or attribute, bad shape, bad weights."""


class PartitionError(ValueError):
    """No valid partition for this strategy, rank count, speeds and model size."""


class InputError(ValueError):
    """A user-supplied input is unusable; the message is one line naming the file."""


class HostfileError(ValueError):
    """An unreadable or malformed hostfile."""


class PeerTimeout(TimeoutError):
    """A peer did not answer within --timeout: a link is down or a board froze."""


class PeerLost(ConnectionError):
    """MPI reported a peer's request failed: the rank died or its link broke (where the launcher lets the
    other ranks see it before it ends the job)."""


class JobError(Exception):
    """An error that every rank has met identically: rank 0 reports it, all exit with code."""

    def __init__(self, message: str, code: int = EXIT_USER) -> None:
        super().__init__(message)
        self.code = code

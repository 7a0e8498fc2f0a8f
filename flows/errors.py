"""The runtime's root exception: what a caller of the runtime needs to know of a failure.

A run's errors end in two places, Prefect's state and the SyncJob row the admin reads (the flow's
hooks write the message there, without the exception's name: flows/hooks.py). `RunError` says
both things a caller decides on: whether trying the same work again may succeed (`retriable`),
and the text the row gets (`row_text`). The runtime's exceptions subclass it, each keeping the
built-in base its callers catch (`StepFailed(RunError, RuntimeError)`).
"""

from __future__ import annotations

from typing import ClassVar


class RunError(Exception):
    """A failure of the runtime's own, as its callers see it."""

    # Trying the same work again may succeed (a script that failed, Prefect away for a while),
    # as opposed to a verdict that another try repeats (a required step failed, a disabled script).
    retriable: ClassVar[bool] = False

    @property
    def row_text(self) -> str:
        """What the SyncJob row's error says of this failure (flows/row_texts.py), when it ends
        the run: its message."""
        return str(self)

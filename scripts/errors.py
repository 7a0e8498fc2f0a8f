"""The operations layer's root exception: a command that cannot do what it was asked.

`exit_code` is what the command exits with: 2 when it refused before changing anything (a bad
value, a pool of another type, a name the catalog does not know), 1 when it tried and failed (an
event not sent, a database that does not answer). The message is the line the operator reads.
"""

from __future__ import annotations

from typing import ClassVar


class OperationError(Exception):
    """A command's failure, as the operator sees it."""

    exit_code: ClassVar[int] = 1

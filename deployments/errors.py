"""The core's root exception: a request the catalog refuses.

Everything the core raises on purpose is a refusal of what a request names, before anything
starts: a script or group the catalog does not know (`catalog.UnknownTarget`), a flag it does not
allow (`flags.FlagError`). Its message is the refusal as it is shown (the row's error, the shim's
reason, the CLI's line), so callers print it as it is. Each subclass keeps the built-in base its
callers catch (`FlagError(CoreError, ValueError)`).
"""

from __future__ import annotations


class CoreError(Exception):
    """A run request the catalog refuses; its message says why."""

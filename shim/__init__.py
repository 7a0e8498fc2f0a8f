"""Inngest-compatible event shim (see issue 3)."""

"""Intake layer: the Inngest Event API. Events are validated, committed to the outbox, then
turned into flow runs by the dispatcher, exactly once. Imports only the core.

The protocol: docs/event-api-protocol.md. Which module owns what, and where to change what:
docs/architecture.md (kept true by tests/test_architecture_doc.py).
"""

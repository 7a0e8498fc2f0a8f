"""Intake layer: the Inngest Event API. Events are validated, committed to the outbox, then
turned into flow runs. Imports only the core.

    wire      reply shapes           intake     POST /e/{key}, framework-free
    events    body validation        outbox     the shim's tables
    ids       seeded ULIDs           dispatcher outbox -> flow runs, exactly once
    mapping   event -> deployment    app        FastAPI routes (python -m shim)

See docs/inngest-wire.md for the protocol and docs/architecture.md for the layers.
"""

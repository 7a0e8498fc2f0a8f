"""Intake layer: the Inngest Event API. Events are validated, committed to the outbox, then
turned into flow runs. Imports only the core.

    replies    reply shapes           intake     POST /e/{key}, framework-free
    events     body validation        outbox     the shim's tables
    jsonvalues JSON as Go reads it    dispatcher outbox -> flow runs, exactly once
    ids        seeded ULIDs           app        FastAPI routes (python -m shim)
    mapping    event -> deployment    body       request bodies within the limits
    text, logs safe log lines         server     uvicorn with connection limits

See docs/event-api-protocol.md for the protocol and docs/architecture.md for the layers.
"""

"""Runtime layer: the Prefect flows and everything inside a flow run, and the recovery of runs
whose process died or got stuck. Imports only the core.

The flows are `sync_script` and `sync_group`; a run is `execution`, its steps `steps` and
`script_runner`; its rows' texts `row_texts`; recovery is `recovery/`. Which module owns what,
and where to change what: docs/architecture.md (kept true by tests/test_architecture_doc.py).
"""

"""Core layer: the catalog (what runs), deployment specs (how it is deployed), the project's
settings and the SyncJob repository. Imports nothing else of the project.

Which module owns what, and where to change what: docs/architecture.md (kept true by
tests/test_architecture_doc.py).
"""

"""Operations layer: the processes an operator starts and the commands they type (the
`poligraph-jobs` CLI, the `poligraph` worker type, setup, the local stack, the reconciler's
process). May import every other layer; starts and configures what they define.

Which module owns what, and where to change what: docs/architecture.md (kept true by
tests/test_architecture_doc.py).
"""

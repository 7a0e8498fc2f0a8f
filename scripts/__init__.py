"""Operations layer: what an operator runs. May import every other layer.

    cli (poligraph-jobs): trigger, follow, listing, cancel
    serve      every deployment served + the reconciler     local_stack   make up
    setup, limits   production set-up                        reconcile     repairs rows and runs

See docs/architecture.md for the layers and who owns what.
"""

"""`python -m scripts.reconcile`: the reconciler's process, a child of each machine's worker
(which keeps it alive: scripts/reconciler_process.py).

What it does is the runtime's recovery (flows/recovery/: cancels, dead and stuck runs, rows whose
run ended badly, slot waits); this module only starts it: its logging, and the alert sender of a
long-lived process (flows/alerts.py), which delivers what runs queued, even after they exited.
"""

from __future__ import annotations

import logging

from flows.alerts import start_spool_sender
from flows.recovery import Reconciler


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    alerts = start_spool_sender()
    try:
        Reconciler().run_forever()
    finally:
        if alerts:
            alerts.stop()


if __name__ == "__main__":
    main()

"""Recovery: keep SyncJob rows and flow runs in agreement, whatever happened to the processes.

A run writes its own row and its hooks cover its failures, but a process can die at any moment
(a service stop, a reboot, the OOM killer, the Prefect server away when it had something to
report) and leave a row RUNNING and a run unfinished for ever. The passes below repair that. They
run in the reconciler, `python -m scripts.reconcile`, a child process of each machine's worker
(which keeps it alive: scripts/reconciler_process.py), every POLIGRAPH_RECONCILE_INTERVAL_SECONDS:

* cancels (`cancels.py`): a row the admin (or `poligraph-jobs cancel`) flipped to FAILED with the
  cancel message while its flow run still runs → the flow run is cancelled in Prefect, which stops
  the process and its scripts. A run still Cancelling after CANCEL_FALLBACK_SECONDS (its runner
  stopped watching: docs/prefect.md, "serve") is stopped here when its process runs on this
  machine: SIGTERM, SIGKILL after the grace, then Cancelled;
* dead local runs (`dead_runs.py`): a run whose process died on this machine (its run file stays
  behind) → the flow run is marked Crashed, its row FAILED, and every process it left (tagged
  with its flow-run id, detached or not) is killed;
* stuck runs (`stuck_runs.py`): a run left Pending (its process died before the flow began) or
  Cancelling (its process was stopped but nobody could say so) for POLIGRAPH_STUCK_RUN_SECONDS,
  whose process is not on this machine → Crashed (its row FAILED) or Cancelled. Both happen when
  the Prefect server is away at that moment: the runner cannot report it and gives up. So does a
  run left Running whose process died between Prefect's Running and the first line of its flow
  body (killed with its service: no run file yet), once two passes UNBEGUN_CONFIRM_SECONDS apart
  find that its SyncJob row still does not name it (the body names its run first thing, on any
  machine). Left alone, such a run keeps its deployment's slot (a Running one for ever) and stays
  unfinished for ever;
* states (`ended_runs.py`): an active row whose flow run is Crashed, Cancelled, Failed or gone
  (found by the run id the flow wrote in it, or by the run's job_id when it ended before its flow
  began) → FAILED with the reason;
* slot waits (`slot_waits.py`): runs waiting for a concurrency slot longer than a bound are logged.

What they share: `isolation.py` (one item's failure kept to itself, an outage ending the pass,
failures logged at a bounded rate), `rows.py` (a row failed only while active, with the alert of
a critical script), and `reconciler.py` (the passes in turn, and the loop). The texts they write
in rows are the runtime's, beside the hooks' (flows/row_texts.py); a run's states and its cancel
are flows/run_states.py.
"""

from flows.recovery.reconciler import Reconciler as Reconciler

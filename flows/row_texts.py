"""Every text the runtime writes in a SyncJob row's `error` for the admin, in one place.

The admin reads why a job failed in its row, whoever wrote it: the run's own body (a step, the
required steps), its hooks (a failure, a crash, a cancel), or the recovery passes (a run whose
process died, never started, ended badly or vanished: flows/recovery/). Written side by side they
say the same thing the same way. The run-level texts are in French, the admin's language; a
step's are in the terms of its script and its output (English), as they always were. The admin's
own cancel text is the core's (`CANCEL_MESSAGE`, deployments/syncjob.py).
"""

from __future__ import annotations

import re
from typing import Any

from prefect.client.schemas.objects import StateType
from prefect.states import State

from deployments.plans import PlannedStep
from deployments.safe_text import safe_text
from flows.script_runner import ProcessOutcome, shorten

# --- the run's own: its steps (flows/steps.py, flows/execution.py) ------------------------------
STDERR_LINES_IN_ERROR = 15
ERROR_LINE_CHARS = 2000  # characters of one output line in a step's error (the row keeps 2000 in all)


def step_failure(step: PlannedStep, outcome: ProcessOutcome, attempt: int) -> str:
    """Which step, which attempt, why, and the last stderr lines (or output lines)."""
    why = (
        f"timed out after {int(step.timeout_seconds)}s (process group killed)"
        if outcome.timed_out
        else f"exit code {outcome.exit_code}"
    )
    lines = outcome.stderr_tail[-STDERR_LINES_IN_ERROR:] or outcome.tail[-STDERR_LINES_IN_ERROR:]
    detail = "\n".join(shorten(line, ERROR_LINE_CHARS) for line in lines)
    return f"step {step.name} ({step.script}) failed on attempt {attempt}/{step.retries + 1}: {why}" + (
        f"\n{detail}" if detail else ""
    )


def script_disabled(step: PlannedStep) -> str:
    """A one-script run of a disabled script."""
    return f"{step.script} is disabled: {step.disabled}"


def required_steps_failed(names: list[str]) -> str:
    """A continue-on-failure run whose required steps failed."""
    return f"required step(s) failed: {', '.join(names)}"


# --- the run's end as its hooks see it (flows/hooks.py) -----------------------------------------
_EXCEPTION_PREFIX = "Flow run encountered an exception:"
_EXCEPTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*: ")


def run_failure(state: State[Any]) -> str:
    """A failed, crashed or cancelled run's final state, as its row says it."""
    message = safe_text(state.message or "").strip()  # it may carry a script's output
    if state.is_cancelled() or state.name in ("Cancelling", "Cancelled"):
        return "Annulé : le run Prefect a été annulé." + (f" {message}" if message else "")
    if state.is_crashed():
        return f"Le run Prefect a planté (Crashed) : {message or 'raison inconnue'}"
    if message.startswith(_EXCEPTION_PREFIX):
        # "Flow run encountered an exception: StepFailed: step x ..." -> "step x ..."
        message = _EXCEPTION_NAME.sub("", message[len(_EXCEPTION_PREFIX) :].strip(), count=1)
    return message or f"Run {state.name}"


# --- what the recovery passes find (flows/recovery/) ---------------------------------------------
PROCESS_DIED = (
    "Le processus qui exécutait ce run est mort (service arrêté, machine redémarrée ou mémoire épuisée)."
)
NEVER_STARTED = (
    "Le run n'a jamais démarré : son processus est mort avant le début du flow (serveur "
    "Prefect injoignable ou service arrêté à ce moment-là)."
)
# the final states a row's run may have ended in badly, and how a row says each
ENDED_BADLY = {
    StateType.CRASHED: "a planté (Crashed)",
    StateType.CANCELLED: "a été annulé",
    StateType.FAILED: "a échoué",
}


def run_gone(run_id: str) -> str:
    """The row's flow run no longer exists."""
    return f"Le run Prefect {run_id} n'existe plus."


def run_ended_badly(state: State[Any]) -> str:
    """The row's flow run ended in one of ENDED_BADLY's states (its hook never wrote the row)."""
    return f"Le run Prefect {ENDED_BADLY[state.type]} : {state.message or state.name}"


def ended_before_starting(state: State[Any]) -> str:
    """The row's flow run ended in one of ENDED_BADLY's states before its flow began."""
    return f"Le run Prefect {ENDED_BADLY[state.type]} avant de démarrer : {state.message or state.name}"

"""Start everything on one machine: a Prefect server (SQLite, UI), every deployment served, and
the Inngest-compatible Event API (shim) on :8288.

    python -m scripts.local_stack          (what `make up` runs)

Ctrl-C stops both. Local state lives in POLIGRAPH_HOME (default ~/.poligraph-jobs): the Prefect
database under prefect/ unless PREFECT_HOME is set, and the SQLite SyncJob table unless
DATABASE_URL is set.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

from deployments.settings import get_settings

HOST = "127.0.0.1"
STARTUP_TIMEOUT = 90.0


def stack_environment(port: int) -> dict[str, str]:
    settings = get_settings()
    env = dict(os.environ)
    env.setdefault("PREFECT_HOME", str(settings.home / "prefect"))
    os.makedirs(env["PREFECT_HOME"], exist_ok=True)
    env["PREFECT_API_URL"] = f"http://{HOST}:{port}/api"
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Poll for new runs every second so a run starts within about 2 s of being created.
    env.setdefault("PREFECT_RUNNER_POLL_FREQUENCY", "1")
    # A queued run of a busy deployment re-checks its slot every 5 s, not 30 s.
    env.setdefault("PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS", "5")
    return env


def wait_healthy(api_url: str, server: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {server.returncode}")
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"prefect server not healthy after {timeout:.0f}s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> int:
    port = int(os.environ.get("POLIGRAPH_PREFECT_PORT", "4200"))
    env = stack_environment(port)
    api_url = env["PREFECT_API_URL"]
    print(f"Prefect server on http://{HOST}:{port} (home {env['PREFECT_HOME']})", flush=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)],
        env=env,
    )
    serve: subprocess.Popen[bytes] | None = None
    shim: subprocess.Popen[bytes] | None = None
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        wait_healthy(api_url, server, STARTUP_TIMEOUT)
        serve = subprocess.Popen([sys.executable, "-m", "scripts.serve"], env=env)
        shim = subprocess.Popen([sys.executable, "-m", "shim"], env=env)
        print(
            f"\nUI: http://{HOST}:{port}   API: {api_url}\n"
            f"Inngest Event API (shim): http://127.0.0.1:{env.get('POLIGRAPH_SHIM_PORT', '8288')}\n"
            f"Operators: export PREFECT_API_URL={api_url}\n",
            flush=True,
        )
        while not stopping and all(p.poll() is None for p in (server, serve, shim)):
            time.sleep(0.5)
    finally:
        for proc in (shim, serve):
            if proc is not None:
                stop(proc)
        stop(server)
    if stopping:
        return 0
    print("a stack process exited unexpectedly", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

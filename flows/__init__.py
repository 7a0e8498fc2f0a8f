"""Runtime layer: the Prefect flows and everything inside a flow run. Imports only the core.

    sync_script, sync_group   the flows                execution   one run and its SyncJob row
    steps, step_results       one step (a task)        script_runner, process_tree   processes
    progress, progress_tracker, progress_writer   PROGRESS lines -> row (in the background)
    hooks, missed, run_files, alerts

See docs/architecture.md for the layers and who owns what.
"""

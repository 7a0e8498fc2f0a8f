"""Prefect flows and the pieces they run: the script runner, SyncJob rows, settings."""

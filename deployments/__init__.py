"""The catalog of scripts, groups, events and schedules, and how deployments are served."""

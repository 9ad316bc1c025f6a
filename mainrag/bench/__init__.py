"""``mainrag bench``: the QA benchmark runner (datasets, metrics, systems, runner, report)."""

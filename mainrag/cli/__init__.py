"""The ``mainrag`` command line. Each sub-module adds its commands to ``app``."""

from __future__ import annotations

from mainrag.cli import bench, doctor, filtering, models, store  # noqa: F401  (register commands)
from mainrag.cli.app import app, main

__all__ = ["app", "main"]

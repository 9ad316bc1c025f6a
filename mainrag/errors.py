"""Errors a user can act on. The CLI prints their message, never a traceback."""

from __future__ import annotations


class MainRAGError(Exception):
    """Base class: the message names the problem and what to do about it."""


class InputError(MainRAGError):
    """Bad user input: a file, a record, an argument."""


class ConfigError(MainRAGError):
    """Inconsistent or incomplete configuration."""


class ModelNotInstalledError(MainRAGError):
    """A model preset's packages or joined file are missing."""


class BackendError(MainRAGError):
    """A backend could not answer (server unreachable, model missing, bad reply)."""


class JudgeError(MainRAGError):
    """Every judge failed, so no document could be scored."""

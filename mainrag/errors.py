"""Errors a user can act on. The CLI prints their message, never a traceback."""

from __future__ import annotations

from mainrag.redact import redact


class MainRAGError(Exception):
    """Base class: the message names the problem and what to do about it.

    Messages are redacted when the error is made (URL credentials, API keys,
    tokens), so no str(), repr(), traceback, log line or result that shows the
    error can carry a secret.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


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


class EndpointError(BackendError):
    """An HTTP endpoint failed. ``endpoint`` is the URL asked (credentials removed),
    ``cause`` what went wrong, ``status`` the last HTTP status if any and
    ``attempts`` how many requests were made."""

    def __init__(
        self, message: str, *, endpoint: str, cause: str, status: int | None = None, attempts: int = 1
    ) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.cause = cause
        self.status = status
        self.attempts = attempts

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only fields would be lost by the default (args-only) pickling.
        return (_rebuild, (type(self), str(self), self.endpoint, self.cause, self.status, self.attempts))


class EndpointUnreachableError(EndpointError):
    """No connection could be made (refused, DNS, connect timeout), retries included."""


class EndpointTimeoutError(EndpointError):
    """The endpoint did not answer in full within the request timeout, retries included."""


class EndpointStatusError(EndpointError):
    """The endpoint kept answering 429 or 5xx until the retries ran out."""


class RequestRejectedError(EndpointError):
    """The endpoint refused the request itself (a 4xx other than 429): not retried."""


class BadReplyError(EndpointError):
    """The reply is unusable: not JSON, cut short, or missing what was asked (choices, logprobs)."""


def _rebuild(
    cls: type[EndpointError], message: str, endpoint: str, cause: str, status: int | None, attempts: int
) -> EndpointError:
    return cls(message, endpoint=endpoint, cause=cause, status=status, attempts=attempts)

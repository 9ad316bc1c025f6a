"""Keeping credentials out of everything mainrag shows: errors, logs, CLI output, run files.

Three kinds of secret are masked as ``***``:

* the userinfo of any URL (``http://user:pass@host`` -> ``http://user:***@host``,
  ``http://token@host`` -> ``http://***@host``) and key-like query parameters;
* the values of the secret environment variables (``MAINRAG_API_KEY``,
  ``OPENAI_API_KEY``, ``MAINRAG_CHROMA_TOKEN`` and any other ``MAINRAG_*``
  variable whose name says KEY, TOKEN, SECRET or PASSWORD), wherever they appear;
* values registered with :func:`register_secret`: the password of every base
  URL a backend is built with (and its Basic-auth form), so that it is masked
  even where the URL is shown without its scheme (``user:pass@host`` in a
  backend name) or a server quotes the request's header back.

Values shorter than :data:`MIN_SECRET_LEN` are masked only inside URLs: masking
every ``"a"`` of a report would make it unreadable and protect nothing.
"""

from __future__ import annotations

import base64
import logging
import os
import re
from urllib.parse import unquote

__all__ = ["MASK", "RedactingFilter", "protect_logs", "redact", "redact_url", "register_secret", "register_url"]

MASK = "***"
MIN_SECRET_LEN = 4
SECRET_ENV = ("MAINRAG_API_KEY", "OPENAI_API_KEY", "MAINRAG_CHROMA_TOKEN")
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD")
# scheme://userinfo@ : greedy to the authority's last "@", as URL parsers split it
# (a password may hold an unencoded "@"); the path, query or a space ends it.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/\s?#\"'<>]*)@")
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&](?:api[_-]?key|key|token|access_token|auth|password|secret)=)[^&\s#\"'<>]+", re.IGNORECASE
)
# Replaced, never changed in place: redact() in another thread reads a whole set.
_registered: frozenset[str] = frozenset()


def register_secret(value: str | None) -> None:
    """Mask ``value`` (and its percent-decoded form) in everything redacted from now on."""
    global _registered
    _registered = _registered | {f for f in (value or "", unquote(value or "")) if len(f) >= MIN_SECRET_LEN}


def register_url(url: str) -> None:
    """Register the credentials inside ``url``, if any."""
    match = _URL_USERINFO.search(url)
    if match is None:
        return
    userinfo = match.group("userinfo")
    user, sep, password = userinfo.partition(":")
    register_secret(password if sep else user)  # a lone userinfo is usually a token
    # HTTP clients send it as Basic auth, and servers may quote that header back in an error.
    register_secret(base64.b64encode(unquote(userinfo).encode()).decode())


def _env_secrets() -> set[str]:
    names = {*SECRET_ENV, *(n for n in os.environ if n.startswith("MAINRAG_") and _SECRET_NAME.search(n))}
    return {v for n in names if len(v := os.environ.get(n, "")) >= MIN_SECRET_LEN}


def _mask_userinfo(match: re.Match[str]) -> str:
    user, sep, _ = match.group("userinfo").partition(":")
    # Keep a user name beside a password (it helps to see who); a lone userinfo is usually a token.
    return f"{match.group('scheme')}{user + ':' if sep and user else ''}{MASK}@"


def redact(text: str) -> str:
    """``text`` with every credential this module knows of masked."""
    if not text:
        return text
    text = _URL_USERINFO.sub(_mask_userinfo, text)
    text = _QUERY_SECRET.sub(lambda m: m.group("key") + MASK, text)
    for secret in sorted(_registered | _env_secrets(), key=len, reverse=True):  # longest first: no partial leftovers
        text = text.replace(secret, MASK)
    return text


def redact_url(url: str) -> str:
    """A URL fit to show: its credentials masked."""
    return redact(url)


class RedactingFilter(logging.Filter):
    """Masks credentials in a log record's message and traceback before any handler sees it.

    Add it to your own handlers (``handler.addFilter(RedactingFilter())``) to
    cover loggers that :func:`protect_logs` does not know of.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


# Loggers that can print URLs or server replies: mainrag's own ("mainrag" for the
# engine, the HTTP backend's retry warnings) and httpx, whose INFO line shows the
# request URL with its userinfo.
_URL_LOGGERS = ("mainrag", "mainrag.backends.openai", "mainrag.chroma", "httpx", "httpcore")
_FILTER = RedactingFilter()


def protect_logs() -> None:
    """Attach the redacting filter to the loggers that can carry URLs (idempotent).

    A logger's filters see only the records logged on that logger itself, so
    each is named here; CLI processes also filter their stderr handler.
    """
    for name in _URL_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)

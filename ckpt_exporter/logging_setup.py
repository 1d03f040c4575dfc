"""Logging: text, logfmt or JSON lines on stderr, with secrets redacted from every record.

The API key is kept out of log calls in the first place; the redacting filter is defence in depth.
It sits on the root handler, so it sees every record that is written, from any library (httpx,
httpcore, aiohttp, asyncio) and at any level, and it scrubs the message, its arguments, the
exception text and the stack. Redacted are: every key registered with `register_secret` (the
KeySource registers each key it reads, rotated ones included), and anything shaped like a key
(`Bearer ...`, `api-key: ...`, `sk-...`, JSON Web Tokens `eyJ...`).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from logfmter import Logfmter

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 6  # shorter strings would redact ordinary words

_PATTERNS = (
    # Authorization: Bearer KEY (any scheme's token after "Bearer")
    (re.compile(r"(?i)(bearer\s+)(?!\[REDACTED\])[^\s'\",;})\]>]{8,}"), r"\1" + REDACTED),
    # Azure's api-key header, in headers dumps, reprs and JSON alike (not the api_key setting's name)
    (re.compile(r"(?i)(api-key['\"]?\s*[:=]\s*['\"]?)(?!\[REDACTED\])[A-Za-z0-9_\-.]{8,}"), r"\1" + REDACTED),
    # OpenAI key shapes: sk-..., sk-proj-..., sk-svcacct-..., sk-admin-...
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{6,}"), REDACTED),
    # JSON Web Tokens (Entra ID access tokens, federated assertions): header.payload.signature
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{6,}\.[A-Za-z0-9_\-]{6,}\.[A-Za-z0-9_\-]*"), REDACTED),
)

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()  # longest first, so that a key containing another goes whole


def register_secret(secret: str | None) -> None:
    """Redact this string from every log record from now on."""
    global _secrets
    if not secret or len(secret) < MIN_SECRET_LENGTH:
        return
    with _lock:
        if secret not in _secrets:
            _secrets = tuple(sorted({*_secrets, secret}, key=len, reverse=True))


def forget_secret(secret: str) -> None:
    """Stop looking for this string (an expired token: the list must not grow without end)."""
    global _secrets
    with _lock:
        _secrets = tuple(known for known in _secrets if known != secret)


def redact(text: str) -> str:
    """The text with registered secrets and key-shaped strings replaced by [REDACTED]."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


# Every character str.splitlines (and so many log readers) breaks a line at.
_LINE_BREAKS = {c: c.encode("unicode_escape").decode() for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}
_LINE_BREAK_TABLE = str.maketrans(_LINE_BREAKS)


def one_line(text: str) -> str:
    r"""The text with its line breaks escaped, so that a string from the API cannot forge a record.

    >>> one_line("a\nb\r# c\u2028")
    'a\\nb\\r# c\\u2028'
    """
    return text.translate(_LINE_BREAK_TABLE)


class RedactingFilter(logging.Filter):
    """Renders each record's message, exception and stack once, redacted, before any formatter;
    the message on one line (tracebacks keep theirs)."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: log what we have rather than fail the caller
            message = f"{record.msg!s} {record.args!r}"
        record.msg, record.args = one_line(redact(message)), None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact(self._formatter.formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info or record.exc_text:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry)


class LogfmtFormatter(Logfmter):
    """logfmt as the exporter-toolkit's `--log.format=logfmt` writes it: time, level, logger, msg.

    Only the redacted message, exception and stack are written: a record's other attributes (what
    a library passed as `extra`) have not been through the redacting filter.
    """

    def __init__(self) -> None:
        super().__init__(
            keys=["time", "level", "logger"],
            mapping={"time": "asctime", "level": "levelname", "logger": "name"},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
        )

    @classmethod
    def get_extra(cls, record: logging.LogRecord) -> dict[str, Any]:
        return {}


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "logfmt":
        return LogfmtFormatter()
    return logging.Formatter(TEXT_FORMAT)


def setup_logging(level: str, fmt: str, secrets: Iterable[str | None] = ()) -> None:
    """One stderr handler on the root logger, redacting; uncaught exceptions go through it too.

    fmt is text, logfmt or json; level a logging level name (DEBUG, INFO, WARNING, ERROR).
    """
    for secret in secrets:
        register_secret(secret)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(fmt))
    handler.addFilter(RedactingFilter())
    logging.getLogger().handlers[:] = [handler]
    set_level(level)
    logging.captureWarnings(True)
    # Tracebacks that nothing caught are written by hooks that bypass logging: route them through it.
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def set_level(level: str) -> None:
    """The least severe level written (at start, and when a reload changes log_level)."""
    logging.getLogger().setLevel(level)
    # The HTTP libraries log every request at INFO; keep that for DEBUG.
    for noisy in ("httpx", "httpcore", "apscheduler", "aiohttp"):
        logging.getLogger(noisy).setLevel(level if level == "DEBUG" else "WARNING")
    # azure-identity logs every token request at INFO and each failure as a multi-line WARNING;
    # the exporter logs one line per cause itself (entra.py).
    for noisy in ("azure", "msal"):
        logging.getLogger(noisy).setLevel(level if level == "DEBUG" else "ERROR")


def _log_uncaught(exc_type: type[BaseException], exc: BaseException, traceback: TracebackType | None) -> None:
    logging.getLogger("ckpt_exporter").critical("uncaught exception", exc_info=(exc_type, exc, traceback))


def _log_uncaught_in_thread(args: Any) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("ckpt_exporter").error(
        "uncaught exception in thread %s", name, exc_info=(args.exc_type, args.exc_value, args.exc_traceback)
    )

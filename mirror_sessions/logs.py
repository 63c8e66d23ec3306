"""Structured JSON logs: one object per line on stdout (CloudWatch Logs keeps them as sent)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOGGER_NAME = "mirror_sessions"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            out["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return json.dumps(out, default=str, separators=(",", ":"))


class StdoutHandler(logging.Handler):
    """Writes to whatever ``sys.stdout`` is at the time (the Lambda runtime's, or a test's)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record) + "\n")
            sys.stdout.flush()
        except Exception:
            self.handleError(record)


def get_logger() -> logging.Logger:
    log = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(h, StdoutHandler) for h in log.handlers):
        h = StdoutHandler()
        h.setFormatter(JsonFormatter())
        log.addHandler(h)
        log.propagate = False
        log.setLevel(logging.INFO)
    return log


def event(level: int, msg: str, **fields: Any) -> None:
    """Log ``msg`` with structured ``fields``."""
    get_logger().log(level, msg, extra={"fields": fields})


def info(msg: str, **fields: Any) -> None:
    event(logging.INFO, msg, **fields)


def warning(msg: str, **fields: Any) -> None:
    event(logging.WARNING, msg, **fields)


def error(msg: str, **fields: Any) -> None:
    event(logging.ERROR, msg, **fields)


def now_ms() -> int:
    return int(time.time() * 1000)

"""Structured logs: one JSON object per line on stderr (or plain text for a terminal).

Structured fields travel in ``extra={"fields": {...}}``. Secrets never reach the output:
any field whose name looks like a credential (token, password, secret, key, credential,
authorization, sasl) is replaced by ``"[redacted]"``, also inside nested dicts, and strings
registered with :func:`register_secret` are masked wherever they appear in a message.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import Any, TextIO

import orjson

SECRET_KEY = re.compile(r"(token|passw|secret|credential|authori[sz]ation|sasl|api[_-]?key|private)", re.I)
REDACTED = "[redacted]"
_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Mask ``value`` in every later log line (values shorter than 4 characters are ignored)."""
    if value and len(value) >= 4:
        _secrets.add(value)


def redact(value: Any, key: str = "") -> Any:
    if key and SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return mask(value)
    return value


def mask(text: str) -> str:
    for s in _secrets:
        if s in text:
            text = text.replace(s, REDACTED)
    return text


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": mask(record.getMessage()),
            "pid": record.process,
        }
        if self.worker is not None:
            out["worker"] = self.worker
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for k, v in redact(fields).items():
                out.setdefault(k, v)
        if record.exc_info:
            out["exc"] = mask(self.formatException(record.exc_info))
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        t = time.strftime("%H:%M:%S", time.localtime(record.created))
        who = f"w{self.worker}" if self.worker is not None else "main"
        line = f"{t} {record.levelname.lower():7s} {who:4s} {mask(record.getMessage())}"
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            line += " " + " ".join(f"{k}={v}" for k, v in redact(fields).items())
        if record.exc_info:
            line += "\n" + mask(self.formatException(record.exc_info))
        return line


def setup(level: str = "info", fmt: str = "json", worker: int | None = None, stream: TextIO | None = None) -> None:
    """Configure the root logger of this process (called again in each worker)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(worker) if fmt == "json" else TextFormatter(worker))
    root.addHandler(handler)
    root.setLevel(os.environ.get("VXMIRROR_LOG_LEVEL", level).upper())

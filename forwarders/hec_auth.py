"""Secrets for the sinks: read from a file or the environment, never printed."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

HEC_TOKEN_ENV = "VXMIRROR_HEC_TOKEN"


class Secret:
    """A string that does not show itself in reprs, str() or f-strings."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "***"


def read_secret_file(path: str | Path) -> Secret:
    p = Path(path)
    try:
        st = p.stat()
        text = p.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ValueError(f"cannot read {p}: {e.strerror}") from None
    if not text:
        raise ValueError(f"{p} is empty")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("secret file %s is readable by group or others; chmod 600 it", p)
    return Secret(text)


def load_token(token_file: str | None, env: str = HEC_TOKEN_ENV) -> Secret:
    """The HEC token from ``token_file`` or, failing that, the environment variable ``env``."""
    if token_file:
        return read_secret_file(token_file)
    value = os.environ.get(env, "").strip()
    if value:
        return Secret(value)
    raise ValueError(f"no HEC token: set token_file or the {env} environment variable")

"""Count vxmirror events in Splunk over its REST API (splunk-sdk): the library half of
``vxmirror splunk check``, to compare with what a forwarder says it sent."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .hec_auth import Secret, read_secret_file

SPLUNK_TOKEN_ENV = "VXMIRROR_SPLUNK_TOKEN"
SPLUNK_PASSWORD_ENV = "VXMIRROR_SPLUNK_PASSWORD"


@dataclass
class CheckQuery:
    url: str  # management API, e.g. https://splunk.example:8089
    index: str | None = None
    sourcetype: str = "vxmirror:flow"
    host: str | None = None
    earliest: str = "-1h"  # Splunk time: epoch seconds or a relative modifier
    latest: str = "now"
    verify_tls: bool = True
    ca_file: str | None = None


def _quote(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def search_string(q: CheckQuery) -> str:
    terms = [f"index={_quote(q.index) if q.index else '*'}", f"sourcetype={_quote(q.sourcetype)}"]
    if q.host:
        terms.append(f"host={_quote(q.host)}")
    return "search " + " ".join(terms) + " | stats count"


def credentials(
    token_file: str | None, username: str | None, password_file: str | None
) -> dict[str, Any]:
    """splunk-sdk auth arguments: a token (file or $VXMIRROR_SPLUNK_TOKEN) or user and password."""
    if token_file:
        return {"splunkToken": read_secret_file(token_file)}
    if username:
        if password_file:
            return {"username": username, "password": read_secret_file(password_file)}
        pw = os.environ.get(SPLUNK_PASSWORD_ENV)
        if not pw:
            raise ValueError(f"--username needs --password-file or ${SPLUNK_PASSWORD_ENV}")
        return {"username": username, "password": Secret(pw)}
    tok = os.environ.get(SPLUNK_TOKEN_ENV)
    if tok:
        return {"splunkToken": Secret(tok)}
    raise ValueError(f"no Splunk credentials: --token-file, ${SPLUNK_TOKEN_ENV}, or --username")


def count_events(q: CheckQuery, auth: dict[str, Any]) -> int:
    """Run ``search ... | stats count`` over [earliest, latest) and return the count."""
    import splunklib.client as client
    import splunklib.results as results

    parts = urlsplit(q.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected https://host:port of the management API, got {q.url!r}")
    kw: dict[str, Any] = {
        "host": parts.hostname,
        "port": parts.port or 8089,
        "scheme": parts.scheme,
        "verify": q.verify_tls,
        "autologin": True,
    }
    if parts.scheme == "https" and q.verify_tls:
        kw["context"] = ssl.create_default_context(cafile=q.ca_file)
    for k, v in auth.items():
        kw[k] = v.reveal() if isinstance(v, Secret) else v
    service = client.connect(**kw)
    stream = service.jobs.oneshot(
        search_string(q), earliest_time=q.earliest, latest_time=q.latest, output_mode="json", count=0
    )
    for item in results.JSONResultsReader(stream):
        if isinstance(item, dict) and "count" in item:
            return int(item["count"])
        if isinstance(item, results.Message) and item.type in ("FATAL", "ERROR"):
            raise RuntimeError(f"Splunk search failed: {item.message}")
    raise RuntimeError("Splunk search returned no count")

"""Splunk HEC replies: what each status and JSON ``code`` means for a sender.

From Splunk's HEC reply-code table: 0 success; 1 token disabled, 2 token required,
3 invalid authorization, 4 invalid token (401/403: no later request can succeed);
5 no data, 6 invalid data format, 7 incorrect index, 10 channel missing, 11 invalid
channel, 12 event field required, 13 event field blank, 14 ack disabled, 15 indexed
fields error (400: the data or the request is wrong, resending will not help);
8 internal error (500), 9 server busy (503), 18-20 HEC unhealthy (503): transient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

AUTH_CODES = frozenset({1, 2, 3, 4})
RETRYABLE_CODES = frozenset({8, 9, 18, 19, 20})


@dataclass(frozen=True)
class HecReply:
    status: int
    code: int | None
    text: str
    ack_id: int | None = None
    invalid_event_number: int | None = None

    @classmethod
    def parse(cls, status: int, body: bytes) -> HecReply:
        doc: Any = None
        try:
            doc = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            doc = None
        if not isinstance(doc, dict):
            snippet = body[:200].decode("utf-8", "replace").strip()
            return cls(status, None, snippet or f"HTTP {status}")
        code = doc.get("code")
        ack = doc.get("ackId")
        bad = doc.get("invalid-event-number")
        return cls(
            status,
            code if isinstance(code, int) else None,
            str(doc.get("text", "")),
            ack if isinstance(ack, int) else None,
            bad if isinstance(bad, int) else None,
        )

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300 and self.code in (None, 0, 17)

    @property
    def auth_failure(self) -> bool:
        return self.status in (401, 403) or self.code in AUTH_CODES

    @property
    def retryable(self) -> bool:
        if self.auth_failure:
            return False
        if self.code in RETRYABLE_CODES:
            return True
        if self.status == 429:
            return True
        return 500 <= self.status < 600 and self.status != 501

    def describe(self) -> str:
        parts = [f"HTTP {self.status}"]
        if self.code is not None:
            parts.append(f"code {self.code}")
        if self.text:
            parts.append(repr(self.text))
        if self.invalid_event_number is not None:
            parts.append(f"invalid-event-number {self.invalid_event_number}")
        return " ".join(parts)

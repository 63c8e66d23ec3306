"""CloudWatch metrics in Embedded Metric Format (EMF): JSON lines on stdout that CloudWatch Logs
turns into metrics, no PutMetricData calls.

Metrics (unit Count), dimension ``Function``: ``SessionsCreated``, ``SessionsDeleted``,
``Failures``, ``EventsIgnored``; ``SessionsSkipped`` also per ``Reason``.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from typing import Any, TextIO

TOTALS = ("SessionsCreated", "SessionsDeleted", "SessionsSkipped", "Failures", "EventsIgnored")


class Metrics:
    def __init__(self, namespace: str, function: str = "mirror-sessions") -> None:
        self.namespace = namespace
        self.function = function
        self.counts: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()

    def add(self, name: str, n: int = 1) -> None:
        if name not in TOTALS:
            raise ValueError(f"unknown metric {name!r}")
        self.counts[name] += n

    def skip(self, reason: str, n: int = 1) -> None:
        self.counts["SessionsSkipped"] += n
        self.skipped[reason] += n

    def documents(self, now: float | None = None) -> list[dict[str, Any]]:
        ts = int((time.time() if now is None else now) * 1000)
        docs: list[dict[str, Any]] = []
        doc: dict[str, Any] = {
            "_aws": {
                "Timestamp": ts,
                "CloudWatchMetrics": [
                    {
                        "Namespace": self.namespace,
                        "Dimensions": [["Function"]],
                        "Metrics": [{"Name": n, "Unit": "Count"} for n in TOTALS],
                    }
                ],
            },
            "Function": self.function,
        }
        for n in TOTALS:
            doc[n] = self.counts.get(n, 0)
        docs.append(doc)
        for reason, count in sorted(self.skipped.items()):
            docs.append(
                {
                    "_aws": {
                        "Timestamp": ts,
                        "CloudWatchMetrics": [
                            {
                                "Namespace": self.namespace,
                                "Dimensions": [["Function", "Reason"]],
                                "Metrics": [{"Name": "SessionsSkipped", "Unit": "Count"}],
                            }
                        ],
                    },
                    "Function": self.function,
                    "Reason": reason,
                    "SessionsSkipped": count,
                }
            )
        return docs

    def flush(self, out: TextIO | None = None) -> None:
        """Write the EMF documents (one JSON line each) and reset the counters."""
        stream = out if out is not None else sys.stdout
        for d in self.documents():
            stream.write(json.dumps(d, separators=(",", ":")) + "\n")
        stream.flush()
        self.counts.clear()
        self.skipped.clear()

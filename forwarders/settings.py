"""Keys shared by every forwarder table: queueing, batching, retry and spooling.

They are defined once here and accepted in every ``[forwarders.<kind>]`` table
next to the sink's own keys (see docs/forwarders.md). The registry splits a
table into these and the sink's ``config_class`` keys; a sink may declare a
field of the same name too (it then receives the same value).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from receiver.config.schema import opt

MiB = 1024 * 1024


@dataclass
class RunnerSettings:
    batch_max_records: int = opt(500, "records per batch handed to the sink (record forwarders)", min=1)
    batch_max_bytes: int = opt(
        1 * MiB, "serialised JSON bytes per batch before it is cut (record forwarders)", min=256
    )
    batch_interval: float = opt(
        1.0, "seconds a partial batch waits for more records before it is sent", min=0.001, max=3600
    )
    queue_max: int = opt(
        100_000,
        "queued records (record forwarders; beyond: spooled) or frames (packet forwarders; beyond: dropped)",
        min=1,
    )
    queue_max_bytes: int = opt(
        256 * MiB, "queued frame bytes (packet forwarders); beyond: dropped", min=65536
    )
    retry_backoff_min: float = opt(0.1, "first retry delay ceiling, seconds (full jitter)", min=0.0)
    retry_backoff_max: float = opt(30.0, "largest retry delay ceiling, seconds", min=0.0)
    max_retries: int = opt(5, "retries of one batch before it is spooled and the sink marked down", min=0)
    spool_max_bytes: int = opt(
        1024 * MiB,
        "disk spool bound per forwarder (records beyond the queue or that cannot be sent); past it, or 0 "
        "(no spool): dropped",
        min=0,
    )
    probe_interval: float = opt(
        30.0, "seconds between health probes of a sink that failed fatally (e.g. bad token)", min=0.01
    )

    def validate(self) -> tuple[str, str] | None:
        if self.retry_backoff_max < self.retry_backoff_min:
            return ("retry_backoff_max", "must be >= retry_backoff_min")
        return None


RUNNER_KEYS: frozenset[str] = frozenset(f.name for f in fields(RunnerSettings))

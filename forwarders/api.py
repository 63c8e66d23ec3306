"""The forwarder interface every sink implements (see docs/architecture.md).

A *record sink* turns a batch of FlowRecords (a RecordBatch: the records already
encoded as JSON lines, with the columns sinks key on) into one payload (``encode``)
and delivers it (``send``). A *packet sink* writes blocks of frames. Queues,
batching, retry with backoff and jitter, disk spooling, dead-lettering and the
counters live once in ``forwarders.runner`` and wrap every sink alike; a sink
only knows its own protocol.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from receiver.flows.recordbatch import RecordBatch


class SendError(Exception):
    """Raised by ``RecordSink.send``.

    ``retryable`` errors are retried with backoff, then spooled to disk;
    the others go to the dead-letter file with ``reason``. ``accepted``: the
    first ``accepted`` records of the batch were delivered (counted as sent;
    only the rest is retried, spooled or dead-lettered). ``rejected`` (with a
    non-retryable error): the ``rejected`` records after the accepted ones are
    refused for good and dead-lettered, and the rest of the batch is sent again
    (Splunk's ``invalid-event-number``: one bad event must not take its
    neighbours to the dead-letter file). ``fatal_for_sink``
    means no later batch can succeed either (an invalid token): the runner
    logs it once, marks the sink unhealthy and stops hammering the server.
    """

    def __init__(
        self,
        reason: str,
        *,
        retryable: bool,
        fatal_for_sink: bool = False,
        accepted: int = 0,
        rejected: int = 0,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.fatal_for_sink = fatal_for_sink
        self.accepted = accepted
        self.rejected = rejected


class Pending(abc.ABC):
    """A batch a sink is still delivering (``RecordSink.start``)."""

    @abc.abstractmethod
    def wait(self, timeout: float) -> bool:
        """True once every record of the batch is delivered; False if some are still in flight
        after ``timeout`` seconds (0: only look); raises SendError, as ``send`` would, once the
        batch is settled and not every record was delivered."""


class _Delivered(Pending):
    def wait(self, timeout: float) -> bool:
        return True


DELIVERED: Pending = _Delivered()


@dataclass
class Health:
    ok: bool
    detail: str = ""


@dataclass
class SinkContext:
    """What the service tells a sink about where it runs."""

    name: str  # unique forwarder name, e.g. "splunk_hec" or "splunk_hec.cluster2"
    data_dir: Path  # base data directory (spool, dead letters, default outputs)
    worker: int = 0  # worker process index (file names must not collide across workers)
    workers: int = 1  # worker processes of the service (worker 0 adopts the spools of the others)
    vni_names: Any = None  # optional callable: vni -> str | None (pcapng interface names)
    extra: dict[str, Any] = field(default_factory=dict)


class RecordSink(abc.ABC):
    kind: ClassVar[str]
    config_class: ClassVar[type]
    #: batches the runner may hand to ``start`` before the oldest is delivered (1: one at a time,
    #: through ``send``); a sink that sets it higher implements ``start``
    max_in_flight: int = 1

    def __init__(self, config: Any, context: SinkContext) -> None:
        self.config = config
        self.context = context

    def health_check(self) -> Health:
        return Health(True)

    def stats(self) -> dict[str, int]:
        """The sink's own counters, shown beside the forwarder's (e.g. files removed by retention)."""
        return {}

    @abc.abstractmethod
    def encode(self, batch: RecordBatch) -> bytes:
        """One batch as the bytes ``send`` delivers.

        ``batch.data`` holds the records as JSON lines (exactly ``orjson.dumps(record)`` and a
        newline each), ``batch.line(i)`` / ``batch.lines()`` give one record's JSON, and the
        columns ``community_id``, ``vni``, ``ts_start``, ``ts_end`` (or ``batch.column(name)``
        for any field) give what a sink keys on, without decoding the records. Iterating the
        batch gives dicts (decoded once, on demand: a slow path, for sinks that need them).

        The runner spools and dead-letters the records themselves (the JSON lines),
        so a batch is re-encoded when it is replayed or partially accepted.
        """

    @abc.abstractmethod
    def send(self, payload: bytes, count: int) -> None:
        """Deliver one encoded batch of ``count`` records, or raise SendError."""

    def start(self, payload: bytes, count: int) -> Pending:
        """Begin delivering one encoded batch and return without waiting for it; the runner
        counts it as sent once ``wait`` says so (used when ``max_in_flight`` > 1, with up to that
        many batches in flight, settled oldest first). May raise SendError at once. The default
        delivers the batch with ``send`` before returning."""
        self.send(payload, count)
        return DELIVERED

    def reopen(self) -> None:  # noqa: B027 - optional hook (SIGHUP)
        """Reopen output files (SIGHUP)."""

    def tick(self, now: float) -> None:  # noqa: B027 - optional hook
        """Called about once a second from the runner's thread (time-based rotation)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources after the runner has flushed."""


@dataclass
class FrameBlock:
    """Frames to write, already copied out of the listener's ring.

    ``data`` holds the frames back to back; frame ``i`` is
    ``data[offset[i]:offset[i]+caplen[i]]`` with original length ``wirelen[i]``,
    arrival time ``ts[i]`` (epoch seconds, float64) and VNI ``vni[i]`` (-1: none).
    """

    data: bytes | Any  # bytes, or a 1-D uint8 numpy array (what frame_block makes)
    offset: Any  # numpy int64 [n]
    caplen: Any  # numpy uint32 [n]
    wirelen: Any  # numpy uint32 [n]
    ts: Any  # numpy float64 [n]
    vni: Any  # numpy int64 [n]
    skipped: int = 0  # packets of the source batch left out (not decapsulable, encapsulation not kept)
    # planned by the engine's capture policy (receiver/pcapkeep): each frame's file number, the
    # files' names, and each frame's flow key (a numpy record array, forwarders/pcap_index.py)
    seq: Any = None
    names: dict[int, str] | None = None
    keys: Any = None
    close_file: bool = False  # (an empty block) close the open file: the plan moved on


    @property
    def count(self) -> int:
        return len(self.offset)

    @classmethod
    def close_mark(cls) -> FrameBlock:
        """No frames: the writer closes its open file (the engine's file plan moved on)."""
        e = np.zeros(0, np.int64)
        return cls(b"", e, e.astype(np.uint32), e.astype(np.uint32), e.astype(np.float64), e, close_file=True)


class PacketSink(abc.ABC):
    kind: ClassVar[str]
    config_class: ClassVar[type]

    def __init__(self, config: Any, context: SinkContext) -> None:
        self.config = config
        self.context = context

    def health_check(self) -> Health:
        return Health(True)

    def stats(self) -> dict[str, int]:
        """The sink's own counters, shown beside the forwarder's (e.g. files removed by retention)."""
        return {}

    @abc.abstractmethod
    def write(self, block: FrameBlock) -> None:
        """Write frames (called from the sink's own thread)."""

    def reopen(self) -> None:  # noqa: B027
        """Start new files (SIGHUP)."""

    def tick(self, now: float) -> None:  # noqa: B027 - optional hook
        """Called about once a second from the writer's thread (time-based rotation)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush and close; closed files get their final names."""

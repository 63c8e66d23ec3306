"""RecordBatch: flow records as they travel from the engine to the forwarders.

A batch is the records already encoded, one JSON line each (exactly ``orjson.dumps(record)``
plus a newline, see docs/flowrecord.md), back to back in one ``bytes``, with the end offset of
each line and the few columns sinks key on (community_id, VNI, times). The engine builds it in
one native call from its flow-table columns (``receiver.flows.encode``); a sink writes the bytes
(JSON lines), slices them (Kafka: one message a record, keyed by community_id) or wraps the
slices (Splunk HEC: the event envelope). Nothing on that path makes a Python dict per record:
``records()`` decodes the lines for a caller that wants dicts (tests, plugins), once.

    batch = engine.process(packets).records     # a RecordBatch
    len(batch); batch.line(0); batch.data        # the JSON of record 0 (no newline); every line
    batch.community_id[0]                        # b"1:..." (numpy S30)
    batch[0]["src_ip"]; list(batch)             # dicts, decoded on demand
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

import numpy as np
import orjson

from ..packets import F64, I64
from .record import FlowRecord

CID_BYTES = 30  # "1:" and the base64 of a SHA-1 digest
CID_DTYPE = f"S{CID_BYTES}"


class RecordBatch(Sequence[FlowRecord]):
    """Encoded flow records (see module doc). ``ends[i]`` is where line ``i`` ends, its newline
    included; line ``i`` starts where line ``i - 1`` ends (0 for the first)."""

    __slots__ = ("_records", "community_id", "data", "ends", "ts_end", "ts_start", "vni")

    def __init__(self, data: bytes, ends: I64, community_id: np.ndarray, vni: I64, ts_start: F64, ts_end: F64) -> None:
        self.data = data
        self.ends = ends
        self.community_id = community_id
        self.vni = vni  # -1: none (plain, not encapsulated traffic)
        self.ts_start = ts_start
        self.ts_end = ts_end
        self._records: list[FlowRecord] | None = None

    # -- making ---------------------------------------------------------------------------
    @classmethod
    def empty(cls) -> RecordBatch:
        return cls(b"", np.zeros(0, np.int64), np.zeros(0, CID_DTYPE), np.zeros(0, np.int64),
                   np.zeros(0, np.float64), np.zeros(0, np.float64))

    @classmethod
    def from_records(cls, records: Iterable[FlowRecord]) -> RecordBatch:
        """A batch of records given as dicts (the Python builder, a spool replay, a test)."""
        recs = list(records)
        lines = [orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in recs]
        batch = cls._of_lines(lines, recs)
        batch._records = recs
        return batch

    @classmethod
    def from_lines(cls, lines: Sequence[bytes]) -> RecordBatch:
        """A batch of encoded records (JSON lines, with or without their newline). Raises
        ``orjson.JSONDecodeError`` (a ValueError) for a line that is not JSON."""
        whole = [ln if ln.endswith(b"\n") else ln + b"\n" for ln in lines]
        recs = [orjson.loads(ln) for ln in whole]
        batch = cls._of_lines(whole, recs)
        batch._records = recs
        return batch

    @classmethod
    def _of_lines(cls, lines: list[bytes], recs: list[FlowRecord]) -> RecordBatch:
        n = len(lines)
        ends = np.cumsum(np.fromiter(map(len, lines), np.int64, n)) if n else np.zeros(0, np.int64)
        cid = np.array([r.get("community_id", "").encode() for r in recs], CID_DTYPE) if n else np.zeros(0, CID_DTYPE)
        vni = np.fromiter((-1 if r.get("vni") is None else r["vni"] for r in recs), np.int64, n)
        ts_start = np.fromiter((r.get("ts_start", 0.0) for r in recs), np.float64, n)
        ts_end = np.fromiter((r.get("ts_end", 0.0) for r in recs), np.float64, n)
        return cls(b"".join(lines), ends, cid, vni, ts_start, ts_end)

    @staticmethod
    def concat(batches: Sequence[RecordBatch]) -> RecordBatch:
        """One batch of the records of ``batches``, in order."""
        parts = [b for b in batches if len(b)]
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return RecordBatch.empty()
        shift = np.cumsum([0] + [len(b.data) for b in parts[:-1]])
        out = RecordBatch(
            b"".join(b.data for b in parts),
            np.concatenate([b.ends + s for b, s in zip(parts, shift.tolist())]),
            np.concatenate([b.community_id for b in parts]),
            np.concatenate([b.vni for b in parts]),
            np.concatenate([b.ts_start for b in parts]),
            np.concatenate([b.ts_end for b in parts]),
        )
        if all(b._records is not None for b in parts):
            out._records = [r for b in parts for r in b._records or ()]
        return out

    def __add__(self, other: RecordBatch) -> RecordBatch:
        if not isinstance(other, RecordBatch):
            return NotImplemented
        return RecordBatch.concat([self, other])

    # -- reading --------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.ends.shape[0])

    def __bool__(self) -> bool:
        return bool(self.ends.shape[0])

    def start(self, i: int) -> int:
        return int(self.ends[i - 1]) if i else 0

    def line(self, i: int) -> bytes:
        """Record ``i``'s JSON, without its newline."""
        return self.data[self.start(i) : int(self.ends[i]) - 1]

    def lines(self) -> list[bytes]:
        """Every record's JSON, without newlines."""
        if not len(self):
            return []
        return self.data[:-1].split(b"\n")

    def records(self) -> list[FlowRecord]:
        """The records as dicts (decoded once, then kept)."""
        if self._records is None:
            self._records = [orjson.loads(ln) for ln in self.lines()]
        return self._records

    @overload
    def __getitem__(self, i: int) -> FlowRecord: ...
    @overload
    def __getitem__(self, i: slice) -> RecordBatch: ...
    def __getitem__(self, i: int | slice) -> FlowRecord | RecordBatch:
        if isinstance(i, slice):
            lo, hi, step = i.indices(len(self))
            if step != 1:
                raise ValueError("a RecordBatch slice takes every record (step 1)")
            return self.slice(lo, hi)
        return self.records()[i]

    def __iter__(self) -> Iterator[FlowRecord]:
        return iter(self.records())

    def slice(self, lo: int, hi: int) -> RecordBatch:
        """Records ``lo`` to ``hi`` (exclusive) as a batch of their own."""
        hi = max(lo, hi)
        if lo == 0 and hi >= len(self):
            return self
        a = self.start(lo)
        out = RecordBatch(
            self.data[a : self.start(hi)], self.ends[lo:hi] - a, self.community_id[lo:hi], self.vni[lo:hi],
            self.ts_start[lo:hi], self.ts_end[lo:hi],
        )
        if self._records is not None:
            out._records = self._records[lo:hi]
        return out

    def column(self, name: str) -> list[Any]:
        """One field of every record (``None`` where a record lacks it), from the columns the batch
        carries when it has them, else from the decoded records."""
        if name == "community_id":
            return [c.decode() for c in self.community_id.tolist()]
        if name == "vni":
            return [None if v < 0 else v for v in self.vni.tolist()]
        if name in ("ts_start", "ts_end"):
            return getattr(self, name).tolist()
        return [r.get(name) for r in self.records()]

    def __repr__(self) -> str:
        return f"RecordBatch({len(self)} records, {len(self.data)} bytes)"

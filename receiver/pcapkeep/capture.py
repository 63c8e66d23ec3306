"""The engine's side of packet capture: which frames of a batch are written, cut, and where.

``Capture`` holds the policy (rules, receiver/pcapkeep/policy.py), the file plan
(receiver/pcapkeep/plan.py) and how the pcap sink shapes frames (encapsulation kept or not,
snaplen, record sizes). The engine fills a ``CaptureMarks`` per batch; the forwarders build
the pcap sink's frames from it (forwarders/frames.py ``frame_block``), and the flow table counts
per flow the frames written, skipped by the policy and dropped (the writer had no room), and the
first and last file numbers (the record's ``pcap`` object).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..decode.columns import Decoded
from ..packets import PacketBatch
from .plan import FilePlan
from .policy import Policy


@dataclass
class CaptureMarks:
    keep: np.ndarray  # bool per packet: the policy writes it (whole, or cut where cut >= 0)
    cut: np.ndarray  # int64 per packet: buffer offset where the frame is cut (its headers only); -1: whole
    seq: np.ndarray  # int32 per packet: the file it goes to (0: not written)
    caplen: np.ndarray  # int64 per packet: the captured length of its frame, as planned (0: not written)
    names: dict[int, str]  # file number -> name (the plan's)
    decoded: Decoded
    open: bool = True  # the writer had room when the batch began (else nothing is planned: dropped)
    indexed: bool = True  # the writer indexes its files (the frames need their flow keys)

    @classmethod
    def new(cls, n: int, names: dict[int, str], decoded: Decoded, open: bool, indexed: bool) -> CaptureMarks:
        return cls(np.ones(n, bool), np.full(n, -1, np.int64), np.zeros(n, np.int32), np.zeros(n, np.int64), names,
                   decoded, open, indexed)

    def flow_keys(self, pos: np.ndarray) -> np.ndarray:
        """Index entries (forwarders/pcap_index.py) of packets ``pos``: proto 0 for those in no flow."""
        from forwarders.pcap_index import flow_keys

        d = self.decoded
        proto = np.where(d.status[pos] == 0, d.proto[pos], 0)
        return flow_keys(d.vni[pos], proto, d.ipver[pos], d.src_hi[pos], d.src_lo[pos], d.dst_hi[pos],
                         d.dst_lo[pos], d.sport[pos], d.dport[pos])


# (batch, inner_start, positions, cut) -> the captured length of each packet's frame
Caplens = Callable[[PacketBatch, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


class Capture:
    """What the engine needs to decide and plan the pcap sink's frames."""

    def __init__(
        self, policy: Policy, plan: FilePlan, past_limit: Literal["skip", "headers"], keep_encapsulation: bool,
        caplens: Caplens, record_sizes: Callable[[np.ndarray], np.ndarray], indexed: bool = True,
    ) -> None:
        self.policy = policy
        self.plan = plan
        self.headers_past_limit = past_limit == "headers"
        self.keep_encapsulation = keep_encapsulation
        self.caplens = caplens  # the frames' lengths, as the writer's frame_block makes them
        self.record_sizes = record_sizes  # a frame's bytes in the file, from its length
        self.indexed = indexed
        self.open = True  # the writer has room for this batch (else its frames count as dropped)
        self.marks: CaptureMarks | None = None  # of the batch being processed

    def begin(self, batch: PacketBatch, d: Decoded) -> CaptureMarks:
        self.marks = CaptureMarks.new(batch.count, self.plan.names, d, self.open, self.indexed)
        return self.marks

    def plan_range(self, batch: PacketBatch, d: Decoded, lo: int, hi: int, now: float) -> np.ndarray:
        """Assign files to the frames written of packets ``lo:hi`` (in order); returns their
        positions. Packets that cannot become a frame (not decapsulated, encapsulation not kept)
        get none."""
        m = self.marks
        assert m is not None
        if not self.open or hi <= lo:
            return np.zeros(0, np.int64)
        sel = m.keep[lo:hi]
        if not self.keep_encapsulation:
            sel = sel & (d.inner_start[lo:hi] >= 0)
        pos = lo + np.flatnonzero(sel)
        if pos.size:
            caplen = self.caplens(batch, d.inner_start, pos, m.cut)
            m.caplen[pos] = caplen  # (the frames are cut to these lengths: computed once)
            m.seq[pos] = self.plan.assign(self.record_sizes(caplen), now)
        return pos

"""ForwarderSet: every configured forwarder of one worker, fed from the data path.

    fs = ForwarderSet.from_specs(specs, data_dir, worker=0, vni_names=None)
    fs.submit(result, batch)   # records to every record forwarder, frames to every packet forwarder
    fs.counters()              # {"pcap": {"received": .., "sent": .., ...}, "jsonl": {...}}
    fs.close(timeout=10)       # {"jsonl": {"delivered": .., "spooled": .., "dropped": ..}, ...}

``submit`` never blocks: each forwarder has its own bounded queue and thread,
so a slow or dead forwarder only fills its own queue (and then its own spool, for
record forwarders, or drops, for packet forwarders). Frames
are copied out of the batch here (the listener reuses its buffers), once per
distinct (keep_encapsulation, snaplen) pair among the packet forwarders.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from receiver.packets import PacketBatch

from .api import FrameBlock, Health, PacketSink, RecordSink, SinkContext
from .frames import frame_block
from .pcap import PcapSink, sink_options
from .registry import ForwarderSpec
from .runner import PacketForwarder, RecordForwarder, Records, as_batch

if TYPE_CHECKING:  # the engine imports much; the data path only needs the two attributes
    from receiver.engine import BatchResult
    from receiver.pcapkeep.capture import Capture

Forwarder = RecordForwarder | PacketForwarder


class ForwarderSet:
    def __init__(self, forwarders: Sequence[Forwarder]) -> None:
        self.forwarders = list(forwarders)
        self.record = [f for f in self.forwarders if isinstance(f, RecordForwarder)]
        self.packet = [f for f in self.forwarders if isinstance(f, PacketForwarder)]
        self._options = {id(f): sink_options(f.sink.config) for f in self.packet}
        # the pcap forwarder whose frames the engine plans (capture policy, record pcap objects)
        self.planned = next((f for f in self.packet if isinstance(f.sink, PcapSink)), None)

    @classmethod
    def from_specs(
        cls,
        specs: Sequence[ForwarderSpec],
        data_dir: str | Path,
        worker: int = 0,
        vni_names: Callable[[int], str | None] | None = None,
        workers: int = 1,
    ) -> ForwarderSet:
        """``worker`` of ``workers``: each worker's files and spools are its own."""
        built: list[Forwarder] = []
        try:
            for spec in specs:
                ctx = SinkContext(name=spec.name, data_dir=Path(data_dir), worker=worker, workers=workers,
                                  vni_names=vni_names)
                sink = spec.sink_class(spec.config, ctx)
                if isinstance(sink, PacketSink):
                    built.append(PacketForwarder(sink, spec.settings))
                elif isinstance(sink, RecordSink):
                    built.append(RecordForwarder(sink, spec.settings))
                else:  # pragma: no cover - the registry checks the class
                    raise TypeError(f"{spec.name}: not a sink")
        except BaseException:
            for f in built:
                f.close(1.0)
            raise
        return cls(built)

    def submit(self, result: BatchResult, batch: PacketBatch) -> None:
        """Hand one processed batch to every forwarder (never blocks)."""
        if result.records and self.record:
            records = as_batch(result.records)  # encoded once for every record forwarder
            for rf in self.record:
                rf.put(records)
        if not self.packet or batch.count == 0:
            return
        blocks: dict[tuple[bool, int], FrameBlock] = {}
        marks = getattr(result, "capture", None)
        for pf in self.packet:
            if pf is self.planned and marks is not None:
                if marks.open:  # (else the engine counted the frames dropped in the records)
                    opts = self._options[id(pf)]
                    pf.put(frame_block(batch, result.decap, opts[0], opts[1], marks), planned=True)
                else:
                    pf.drop("queue_full", batch.count)
                continue
            if not pf.has_room():
                pf.drop("queue_full", batch.count)  # do not copy frames nobody can take
                continue
            opts = self._options[id(pf)]
            block = blocks.get(opts)
            if block is None:
                block = frame_block(batch, result.decap, opts[0], opts[1])
                blocks[opts] = block
            pf.count_skipped(block.skipped)
            pf.put(block)

    def capture(self, labeler: Callable[[int], dict[str, Any] | None] | None = None) -> Capture | None:
        """The engine's side of the planned pcap forwarder (None without one)."""
        if self.planned is None:
            return None
        assert isinstance(self.planned.sink, PcapSink)
        return self.planned.sink.capture(labeler)

    @property
    def capture_open(self) -> bool:
        """Whether the planned pcap forwarder takes the next batch's frames (the worker tells the
        engine before the batch: frames it cannot take count as dropped in the records)."""
        return self.planned is not None and self.planned.has_room()

    def end_capture_file(self, capture: Capture) -> None:
        """Close the open pcap file of the plan (rotation by age while quiet, SIGHUP)."""
        if self.planned is not None and capture.plan.advance():
            self.planned.put(FrameBlock.close_mark(), planned=True)

    def submit_records(self, records: Records) -> None:
        """Records without packets (engine.tick / engine.finish): a RecordBatch (or a list of dicts)."""
        if records and self.record:
            batch = as_batch(records)
            for rf in self.record:
                rf.put(batch)

    def reopen(self) -> None:
        for f in self.forwarders:
            f.request_reopen()

    def close(self, timeout: float = 10.0) -> dict[str, dict[str, int]]:
        """Flush every forwarder within ``timeout`` overall (they flush in parallel); returns each
        one's totals (what its last log line says: delivered, spooled, dead-lettered, dropped)."""
        deadline = time.monotonic() + timeout
        totals: dict[str, dict[str, int]] = {}

        def close(f: Forwarder) -> None:
            totals[f.name] = f.close(timeout)

        threads = [threading.Thread(target=close, args=(f,), name=f"close-{f.name}") for f in self.forwarders]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()) + 6.0)
        return {f.name: totals[f.name] for f in self.forwarders if f.name in totals}

    def counters(self) -> dict[str, dict[str, int]]:
        return {f.name: f.counters() for f in self.forwarders}

    def health(self) -> dict[str, Health]:
        return {f.name: f.health() for f in self.forwarders}

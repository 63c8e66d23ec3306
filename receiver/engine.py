"""The engine: decapsulation, decoding and the flow table behind one call per batch.

    engine = Engine(EngineConfig())
    result = engine.process(batch)      # -> BatchResult(records, decap)
    records = engine.tick(now)          # wall-clock expiry (live service)
    records = engine.finish("shutdown") # every open flow, end_reason as given
    engine.counters()                   # {"packets": .., "decoded": .., "drop_<reason>": .., ...}

(Implementation in progress: the signatures are the contract.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .flows.record import EndReason, FlowRecord
from .packets import Decapsulated, PacketBatch
from .settings import EngineConfig


@dataclass
class BatchResult:
    records: list[FlowRecord]  # flows that ended (or interim records) while processing the batch
    decap: Decapsulated  # where each packet's inner frame starts, and its VNI (for packet sinks)


class Engine:
    def __init__(
        self,
        config: EngineConfig | None = None,
        labeler: Callable[[int], dict[str, Any] | None] | None = None,
        sensor: str | None = None,
    ) -> None:
        raise NotImplementedError

    def process(self, batch: PacketBatch) -> BatchResult:
        raise NotImplementedError

    def tick(self, now: float) -> list[FlowRecord]:
        raise NotImplementedError

    def finish(self, reason: EndReason) -> list[FlowRecord]:
        raise NotImplementedError

    def counters(self) -> dict[str, int]:
        raise NotImplementedError

"""Decoding: the numpy fast path for whole batches, the slow path for the rest."""

from __future__ import annotations

import numpy as np

from ..config.engine import EngineConfig
from ..packets import PacketBatch
from .columns import Decoded, Frag, Status
from .fast import decode_fast
from .slow import decode_one, decode_slow

__all__ = ["Decoded", "Frag", "Status", "decode", "decode_fast", "decode_one", "decode_slow"]


def decode(
    batch: PacketBatch, config: EngineConfig, common: tuple[Decoded, np.ndarray] | None = None
) -> tuple[Decoded, int]:
    """Decode a batch; returns the columns and how many packets took the slow path. ``common``:
    see ``decode_fast``."""
    out = decode_fast(batch, config, common=common)
    slow = np.flatnonzero(out.status == Status.SLOW_PATH)
    for i in slow:
        s = int(batch.start[i])
        out.assign(int(i), _blank_row() | decode_one(batch.buf, s, s + int(batch.caplen[i]), batch.layer, config))
    return out, int(slow.size)


def _blank_row() -> dict[str, int]:
    return {k: 0 for k in Decoded.__dataclass_fields__} | {"vni": -1, "inner_start": -1}

"""Copy the frames of a PacketBatch out of the listener's buffers, for packet sinks.

``frame_block`` is vectorized (numpy; see forwarders.gather): decapsulated
frames run from ``decap.inner_start`` to the packet end; with
``keep_encapsulation`` each packet is written whole, and packets that do not
start with Ethernet get a synthesized link header so that the file stays a
readable Ethernet capture:

- ``Layer.VXLAN`` / ``Layer.GENEVE`` (UDP payloads from the live listener):
  Ethernet + IPv4 + UDP, source address from ``batch.src_addr``, destination
  port ``batch.dst_port`` (4789 / 6081 when unknown), destination address
  0.0.0.0 and source port 0 (the listener does not record them), IPv4 header
  checksum computed, UDP checksum 0 (none);
- ``Layer.RAW_IP``: an Ethernet header with the ethertype of the IP version;
- ``Layer.LINUX_SLL`` / ``Layer.LINUX_SLL2``: the cooked header (16 or 20
  bytes) is replaced by an Ethernet header carrying its protocol field.

Synthesized MAC addresses are zero. ``snaplen`` truncates every frame.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from receiver.decode import ethernet
from receiver.packets import Decapsulated, Layer, PacketBatch

from .api import FrameBlock

if TYPE_CHECKING:
    from receiver.pcapkeep.capture import CaptureMarks
from .gather import copy_ranges, put_rows

ETH_LEN = 14
OUTER_LEN = 14 + 20 + 8  # Ethernet + IPv4 + UDP
COOKED = ethernet.COOKED_LAYERS
DEFAULT_PORT = {Layer.VXLAN: 4789, Layer.GENEVE: 6081}


def _be16(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint32)
    return np.stack([(x >> 8) & 0xFF, x & 0xFF], axis=-1).astype(np.uint8)


def _be32(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint32)
    return np.stack([(x >> 24) & 0xFF, (x >> 16) & 0xFF, (x >> 8) & 0xFF, x & 0xFF], axis=-1).astype(np.uint8)


def outer_headers(src_addr: np.ndarray, dst_port: np.ndarray, payload_len: np.ndarray) -> np.ndarray:
    """[n, 42] Ethernet/IPv4/UDP headers for UDP payloads of ``payload_len`` bytes."""
    n = payload_len.shape[0]
    h = np.zeros((n, OUTER_LEN), np.uint8)
    h[:, 12:14] = (0x08, 0x00)
    ip = h[:, 14:34]
    ip[:, 0] = 0x45
    ip[:, 2:4] = _be16(np.minimum(20 + 8 + payload_len, 0xFFFF))
    ip[:, 6] = 0x40  # DF
    ip[:, 8] = 64  # TTL
    ip[:, 9] = 17  # UDP
    ip[:, 12:16] = _be32(src_addr)
    words = ip.reshape(n, 10, 2).astype(np.uint32)
    total = (words[:, :, 0] << 8 | words[:, :, 1]).sum(axis=1)
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    ip[:, 10:12] = _be16(~total & 0xFFFF)
    udp = h[:, 34:42]
    udp[:, 2:4] = _be16(dst_port)
    udp[:, 4:6] = _be16(np.minimum(8 + payload_len, 0xFFFF))
    return h


def _column(arr: np.ndarray, n: int, default: int, dtype: type) -> np.ndarray:
    return arr.astype(dtype) if arr.shape[0] == n else np.full(n, default, dtype)


def frame_block(
    batch: PacketBatch, decap: Decapsulated, keep_encapsulation: bool, snaplen: int, marks: CaptureMarks | None = None
) -> FrameBlock:
    """The frames of ``batch`` to write, copied out of its buffer (see module doc). With the
    engine's capture ``marks``: only the packets it planned into a file (``marks.seq > 0``),
    each cut where ``marks.cut`` says (headers only), with their file numbers and flow keys."""
    if marks is not None:
        return _planned_block(batch, decap, keep_encapsulation, snaplen, marks)
    n = batch.count
    start = batch.start.astype(np.int64)
    caplen = batch.caplen.astype(np.int64)
    wirelen = batch.wirelen.astype(np.int64)
    vni = _column(decap.vni, n, -1, np.int64)
    inner = _column(decap.inner_start, n, -1, np.int64)
    skipped = 0
    header: np.ndarray | None = None
    if keep_encapsulation:
        body_start, body_len, body_wire, ts = start, caplen, wirelen, batch.ts
        layer = batch.layer
        if layer in (Layer.VXLAN, Layer.GENEVE):
            src = _column(batch.src_addr, n, 0, np.uint32)
            port = _column(batch.dst_port, n, DEFAULT_PORT[layer], np.uint32)
            port[port == 0] = DEFAULT_PORT[layer]
            header = outer_headers(src, port, wirelen)
        elif layer == Layer.RAW_IP:
            header = np.zeros((n, ETH_LEN), np.uint8)
            first = batch.buf[start[caplen > 0]] >> 4 if n else np.zeros(0, np.uint8)
            etype = np.full(n, 0x0800, np.uint32)
            etype[np.flatnonzero(caplen > 0)[first == 6]] = 0x86DD
            header[:, 12:14] = _be16(etype)
        elif layer in COOKED:
            cooked = COOKED[layer]
            header = np.zeros((n, ETH_LEN), np.uint8)
            has = caplen >= cooked.size
            idx = start[has] + cooked.off("proto")
            header[has, 12] = batch.buf[idx]
            header[has, 13] = batch.buf[idx + 1]
            cut = np.minimum(caplen, cooked.size)
            body_start, body_len, body_wire = start + cut, caplen - cut, np.maximum(wirelen - cut, 0)
    else:
        keep = inner >= 0
        skipped = int(n - np.count_nonzero(keep))
        if skipped:
            start, caplen, wirelen, inner, vni = start[keep], caplen[keep], wirelen[keep], inner[keep], vni[keep]
            ts = batch.ts[keep]
        else:
            ts = batch.ts
        body_start = inner
        outer = np.clip(inner - start, 0, caplen)
        body_len = caplen - outer
        body_wire = np.maximum(wirelen - outer, body_len)
    hlen = 0 if header is None else header.shape[1]
    snap = max(int(snaplen), hlen)
    out_cap = np.minimum(hlen + body_len, snap)
    out_wire = np.maximum(hlen + body_wire, out_cap)
    offset = np.zeros(out_cap.shape[0], np.int64)
    if offset.shape[0] > 1:
        np.cumsum(out_cap[:-1], out=offset[1:])
    total = int(out_cap.sum())
    rect = _slot_rectangle(batch, start, body_start, out_cap, total) if header is None else None
    if rect is not None:
        data, offset = rect
    else:
        data = np.empty(total, np.uint8)
        if header is not None and header.shape[0]:
            put_rows(data, offset, header.reshape(-1, hlen))
        copy_ranges(batch.buf, body_start, data, offset + hlen, out_cap - hlen)
    return FrameBlock(
        data=data,  # the frames' own copy; no second copy into bytes
        offset=offset,
        caplen=out_cap.astype(np.uint32),
        wirelen=np.minimum(out_wire, 0xFFFFFFFF).astype(np.uint32),
        ts=np.asarray(ts, np.float64).copy(),
        vni=vni.copy(),
        skipped=skipped,
    )


def _slot_rectangle(
    batch: PacketBatch, start: np.ndarray, body_start: np.ndarray, out_cap: np.ndarray, total: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """The live listener's batches sit in fixed-size slots: copy the rows' leading rectangle in
    one numpy copy (a memcpy per row in C) instead of range by range, and point each frame into
    it. Only when the rectangle wastes at most half of what it copies (a jumbo frame among small
    ones makes it too wide)."""
    n = int(start.shape[0])
    if n < 2 or batch.count < 2:
        return None
    slot = int(batch.start[1] - batch.start[0])
    if slot <= 0 or int(batch.start[0]) != 0 or int(batch.start[-1]) != (batch.count - 1) * slot:
        return None
    if not np.array_equal(batch.start, np.arange(batch.count, dtype=np.int64) * slot):
        return None
    if batch.buf.shape[0] < batch.count * slot:
        return None
    rel = body_start - start  # where each frame starts inside its slot
    width = int((rel + out_cap).max())
    if width <= 0 or n * width > 2 * total:
        return None
    rows = start // slot
    grid = batch.buf[: batch.count * slot].reshape(batch.count, slot)
    data = grid[rows, :width] if n != batch.count else grid[:, :width].copy()
    return data.reshape(-1), np.arange(n, dtype=np.int64) * width + rel


def _body(
    batch: PacketBatch, inner: np.ndarray, pos: np.ndarray, keep_encapsulation: bool
) -> tuple[np.ndarray, np.ndarray, int]:
    """(body start, body length, synthesized header length) of packets ``pos`` as frame_block
    writes them: the inner frame, or with ``keep_encapsulation`` the whole packet (a cooked
    header replaced)."""
    start = batch.start[pos].astype(np.int64)
    caplen = batch.caplen[pos].astype(np.int64)
    if not keep_encapsulation:
        outer = np.clip(inner[pos] - start, 0, caplen)
        return start + outer, caplen - outer, 0
    layer = batch.layer
    if layer in (Layer.VXLAN, Layer.GENEVE):
        return start, caplen, OUTER_LEN
    if layer == Layer.RAW_IP:
        return start, caplen, ETH_LEN
    if layer in COOKED:
        cut = np.minimum(caplen, COOKED[layer].size)
        return start + cut, caplen - cut, ETH_LEN
    return start, caplen, 0


def frame_caplens(
    batch: PacketBatch, inner: np.ndarray, pos: np.ndarray, keep_encapsulation: bool, snaplen: int,
    cut_end: np.ndarray,
) -> np.ndarray:
    """The captured length of the frames that packets ``pos`` become (what frame_block writes),
    each cut at buffer offset ``cut_end`` (its headers only) where that is >= 0: the engine plans
    the files with these (receiver/pcapkeep/plan.py) before the frames are copied."""
    body_start, body_len, hlen = _body(batch, inner, pos, keep_encapsulation)
    cut = cut_end[pos]
    body_len = np.where(cut >= 0, np.clip(cut - body_start, 0, body_len), body_len)
    return np.minimum(hlen + body_len, max(int(snaplen), hlen))


def _planned_block(
    batch: PacketBatch, decap: Decapsulated, keep_encapsulation: bool, snaplen: int, marks: CaptureMarks
) -> FrameBlock:
    pos = np.flatnonzero(marks.seq > 0)
    n = batch.count
    inner = _column(decap.inner_start, n, -1, np.int64)
    if pos.size == n:  # (every packet: the batch as it is, its slots copied at once)
        block = frame_block(batch, decap, keep_encapsulation, snaplen)
    else:
        sub = batch.select(pos)
        block = frame_block(sub, Decapsulated(inner[pos], _column(decap.vni, n, -1, np.int64)[pos]),
                            keep_encapsulation, snaplen)
    assert block.count == pos.size  # (the engine plans only frames that can be written)
    block.caplen = marks.caplen[pos].astype(np.uint32)  # (as the engine planned them: frame_caplens)
    block.wirelen = np.maximum(block.wirelen, block.caplen)
    block.seq = marks.seq[pos]
    block.names = marks.names
    block.keys = marks.flow_keys(pos) if marks.indexed else None
    return block

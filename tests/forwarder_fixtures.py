"""Shared helpers for the forwarder tests: VXLAN packets with markers, tshark reading."""

from __future__ import annotations

import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from receiver.packets import Decapsulated, Layer, PacketBatch


@dataclass
class Result:
    """Duck-typed receiver.engine.BatchResult (records, decap) for tests independent of the engine."""

    records: list[Any]
    decap: Decapsulated


OUTER = 14 + 20 + 8 + 8  # outer Ethernet + IPv4 + UDP + VXLAN in front of the inner frame


def _ipv4(src: bytes, dst: bytes, proto: int, payload_len: int, ident: int) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, ident, 0, 64, proto, 0, src, dst)
    s = sum(struct.unpack("!10H", hdr))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return hdr[:10] + struct.pack("!H", ~s & 0xFFFF) + hdr[12:]


def inner_frame(seq: int, size: int) -> bytes:
    """Ethernet/IPv4/UDP frame of ``size`` bytes whose UDP payload starts with b"PKT<seq:08d>"."""
    payload_len = max(size - 14 - 28, 11)
    marker = f"PKT{seq:08d}".encode()
    payload = (marker + bytes(range(256)) * (payload_len // 256 + 1))[:payload_len]
    udp = struct.pack("!HHHH", 40000 + seq % 1000, 80, 8 + payload_len, 0) + payload
    ip = _ipv4(bytes([10, 1, 0, 1]), bytes([10, 1, 0, 2]), 17, len(udp), seq & 0xFFFF)
    return b"\x02\0\0\0\0\x01" + b"\x02\0\0\0\0\x02" + b"\x08\x00" + ip + udp


def vxlan_payload(vni: int, inner: bytes) -> bytes:
    return struct.pack("!II", 0x08000000, vni << 8) + inner


def outer_frame(vni: int, inner: bytes) -> bytes:
    vx = vxlan_payload(vni, inner)
    udp = struct.pack("!HHHH", 51000, 4789, 8 + len(vx), 0) + vx
    ip = _ipv4(bytes([127, 0, 0, 9]), bytes([127, 0, 0, 1]), 17, len(udp), 0)
    return b"\x02\0\0\0\0\x03" + b"\x02\0\0\0\0\x04" + b"\x08\x00" + ip + udp


def make_batch(
    first_seq: int, n: int, vnis: tuple[int, ...] = (100, 200, 300), seed: int = 0, undecodable: int = 0
) -> tuple[PacketBatch, Decapsulated, list[tuple[int, int, int]]]:
    """A batch of VXLAN-in-Ethernet frames and its decapsulation, plus (seq, inner_len, vni) per packet.

    Every ``undecodable``-th packet (if > 0) is marked not decapsulable (inner_start -1).
    """
    rng = np.random.default_rng(seed + first_seq)
    sizes = rng.integers(60, 1400, n)
    frames, expect, vni_col, inner_col = [], [], [], []
    for i in range(n):
        seq = first_seq + i
        vni = vnis[seq % len(vnis)]
        inner = inner_frame(seq, int(sizes[i]))
        frames.append(outer_frame(vni, inner))
        expect.append((seq, len(inner), vni))
        vni_col.append(vni)
    ts = 1_700_000_000.0 + (first_seq + np.arange(n)) * 0.001
    batch = PacketBatch.from_frames(frames, ts=ts)
    inner_col = batch.start + OUTER
    vni_arr = np.asarray(vni_col, np.int64)
    if undecodable:
        bad = (np.arange(n) + first_seq) % undecodable == 0
        inner_col = np.where(bad, -1, inner_col)
        vni_arr = np.where(bad, -1, vni_arr)
    return batch, Decapsulated(inner_start=inner_col.astype(np.int64), vni=vni_arr), expect


def live_batch(
    first_seq: int, n: int, layer: Layer = Layer.VXLAN, slot: int = 2048
) -> tuple[PacketBatch, Decapsulated, list[tuple[int, int, int]]]:
    """Like a listener batch: UDP payloads (VXLAN header first) in fixed-size slots."""
    slots = np.zeros((n, slot), np.uint8)
    lengths = np.zeros(n, np.uint32)
    expect = []
    for i in range(n):
        seq = first_seq + i
        inner = inner_frame(seq, 60 + (seq * 37) % 1300)
        p = vxlan_payload(7000 + seq % 2, inner)
        slots[i, : len(p)] = np.frombuffer(p, np.uint8)
        lengths[i] = len(p)
        expect.append((seq, len(inner), 7000 + seq % 2))
    ts = 1_700_000_000.0 + np.arange(n) * 0.5
    src = np.full(n, (127 << 24) | 5, np.uint32)
    port = np.full(n, 4789, np.uint16)
    batch = PacketBatch.from_slots(slots, lengths, ts, layer, src_addr=src, dst_port=port)
    decap = Decapsulated(
        inner_start=(batch.start + 8).astype(np.int64), vni=np.asarray([e[2] for e in expect], np.int64)
    )
    return batch, decap, expect


def tshark(path: Path, *fields: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    args = ["tshark", "-n", "-r", str(path), *extra]
    if fields:
        args += ["-T", "fields", "-E", "separator=|"]
        for f in fields:
            args += ["-e", f]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def stderr_problems(stderr: str) -> str:
    """tshark's stderr without the harmless 'running as root' notice."""
    return "\n".join(line for line in stderr.splitlines() if line.strip() and "Running as user" not in line).strip()


def markers(payload_hex: str) -> int:
    """The sequence number in a UDP payload given as hex (tshark udp.payload)."""
    raw = bytes.fromhex(payload_hex.replace(":", "")[:22])
    assert raw[:3] == b"PKT", raw
    return int(raw[3:11])

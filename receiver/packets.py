"""PacketBatch: the unit of work on the data path.

A batch is a flat uint8 buffer plus per-packet columns. Packet ``i`` occupies
``buf[start[i] : start[i] + caplen[i]]``. The flat layout serves both producers
without copies: the live listener's preallocated ``[slots, slot_size]`` block is
viewed flat with ``start = arange(n) * slot_size``, and the capture reader maps
a pcap file and points ``start`` at each record's data.

``layer`` says where each packet begins: a full Ethernet frame (captures,
possibly with outer IP/UDP/VXLAN inside), or a UDP payload received on a
tunnel port (the live listener: the VXLAN or GENEVE header comes first).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]
U16 = npt.NDArray[np.uint16]
U32 = npt.NDArray[np.uint32]
I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]


class Layer(enum.IntEnum):
    """What the first byte of each packet in a batch is."""

    ETHERNET = 1  # DLT_EN10MB: Ethernet II (maybe VLAN-tagged, maybe carrying a tunnel)
    RAW_IP = 2  # DLT_RAW / LINKTYPE_IPV4 / LINKTYPE_IPV6: an IP header
    LINUX_SLL = 3  # LINKTYPE_LINUX_SLL: 16-byte cooked header
    VXLAN = 4  # UDP payload from a VXLAN socket: the 8-byte VXLAN header
    GENEVE = 5  # UDP payload from a GENEVE socket: the GENEVE header
    LINUX_SLL2 = 6  # LINKTYPE_LINUX_SLL2: 20-byte cooked header (tcpdump -i any since 4.99)


@dataclass
class PacketBatch:
    """A batch of packets sharing one buffer. Column arrays have length ``count``."""

    buf: U8  # flat bytes; never written by consumers
    start: I64  # offset of each packet in ``buf``
    caplen: U32  # bytes captured (available in ``buf``)
    wirelen: U32  # bytes on the wire (pcap orig_len; live: datagram length)
    ts: F64  # arrival time, epoch seconds
    layer: Layer
    # Outer sender of each datagram (live listener; IPv4 as uint32 host order, 0 if unknown)
    src_addr: U32 = field(default_factory=lambda: np.zeros(0, np.uint32))
    # UDP port the datagram arrived on (live listener; 0 if unknown)
    dst_port: U16 = field(default_factory=lambda: np.zeros(0, np.uint16))

    @property
    def count(self) -> int:
        return int(self.start.shape[0])

    def frame(self, i: int) -> bytes:
        """Bytes of packet ``i`` (a copy; for slow paths and tests)."""
        s = int(self.start[i])
        return self.buf[s : s + int(self.caplen[i])].tobytes()

    def select(self, mask: B | I64) -> PacketBatch:
        """A batch of the chosen packets, sharing this batch's buffer."""
        return PacketBatch(
            buf=self.buf,
            start=self.start[mask],
            caplen=self.caplen[mask],
            wirelen=self.wirelen[mask],
            ts=self.ts[mask],
            layer=self.layer,
            src_addr=self.src_addr[mask] if self.src_addr.shape[0] else self.src_addr,
            dst_port=self.dst_port[mask] if self.dst_port.shape[0] else self.dst_port,
        )

    @classmethod
    def from_frames(
        cls,
        frames: list[bytes],
        ts: list[float] | F64 | None = None,
        layer: Layer = Layer.ETHERNET,
        wirelen: list[int] | None = None,
    ) -> PacketBatch:
        """Build a batch from byte strings (tests, slow producers)."""
        lens = np.fromiter((len(f) for f in frames), np.uint32, len(frames))
        start = np.zeros(len(frames), np.int64)
        if len(frames) > 1:
            np.cumsum(lens[:-1], out=start[1:])
        buf = np.frombuffer(b"".join(frames), np.uint8) if frames else np.zeros(0, np.uint8)
        tsa = np.asarray(ts if ts is not None else np.zeros(len(frames)), np.float64)
        wl = np.asarray(wirelen, np.uint32) if wirelen is not None else lens.copy()
        return cls(buf=buf, start=start, caplen=lens, wirelen=wl, ts=tsa, layer=layer)

    @classmethod
    def from_slots(
        cls,
        slots: U8,
        lengths: U32,
        ts: F64,
        layer: Layer,
        src_addr: U32 | None = None,
        dst_port: U16 | None = None,
        wirelen: U32 | None = None,
    ) -> PacketBatch:
        """View a listener's ``[n, slot_size]`` block as a batch (no copy of packet bytes)."""
        n, slot = slots.shape
        return cls(
            buf=slots.reshape(-1),
            start=np.arange(n, dtype=np.int64) * slot,
            caplen=np.minimum(lengths, slot).astype(np.uint32),
            wirelen=(wirelen if wirelen is not None else lengths).astype(np.uint32),
            ts=ts,
            layer=layer,
            src_addr=src_addr if src_addr is not None else np.zeros(0, np.uint32),
            dst_port=dst_port if dst_port is not None else np.zeros(0, np.uint16),
        )


@dataclass
class Decapsulated:
    """Where the innermost Ethernet frame of each packet of a batch starts.

    ``inner_start[i]`` is an absolute offset into ``batch.buf`` (-1: the packet
    was not a decodable tunnel/Ethernet frame); the inner frame runs to the end
    of the packet. ``vni[i]`` is the innermost tunnel's VNI (-1: none).
    """

    inner_start: I64
    vni: I64

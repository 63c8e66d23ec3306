"""Rolling pcap / pcapng packet sink (kind ``pcap``).

Frames arrive as FrameBlocks (see forwarders.frames); each block is encoded
in one vectorized pass and written with one ``write``. Files rotate by size
and age, are written as ``.part`` and renamed when closed (forwarders.rolling).
A block that would overflow ``rotate_bytes`` is split at a frame boundary.
After a crash, the ``.part`` left behind holds every record written before it,
possibly followed by one cut record; the next start trims it to its whole
records and gives it its final name.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from receiver.config.schema import opt
from receiver.pcapkeep.capture import Capture
from receiver.pcapkeep.plan import FilePlan
from receiver.pcapkeep.policy import KeepRule, Policy

from . import pcap_classic, pcap_index, pcapng
from .api import FrameBlock, Health, PacketSink, SinkContext
from .frames import frame_caplens
from .rolling import RetentionConfig, RollingFile, RollingOutput, RollPolicy

MiB = 1024 * 1024


@dataclass
class PcapConfig(RetentionConfig):
    directory: str = opt("", "output directory (default: <data_dir>/pcap)")
    format: Literal["pcap", "pcapng"] = opt(
        "pcap", "pcap: classic with nanosecond timestamps; pcapng: one interface per VNI"
    )
    rotate_bytes: int = opt(256 * MiB, "start a new file before this size is exceeded", min=4096)
    rotate_seconds: float = opt(300.0, "start a new file after this many seconds (0: never by age)", min=0)
    retain_free_percent: float = opt(  # (packets give way to records and the spool)
        5.0, "delete the oldest closed files while the file system has less than this % free (0: no limit)",
        min=0, max=99,
    )
    snaplen: int = opt(65535, "bytes kept of each frame", min=64, max=262144)
    keep_encapsulation: bool = opt(False, "write whole packets with their outer headers (forensics)")
    prefix: str = opt("vxmirror", "file name prefix")
    fsync: bool = opt(True, "fsync each file before it gets its final name")
    keep: list[KeepRule] | None = opt(
        None, "capture policy rules, first match decides (see docs/capture.md); unset: the default policy, "
        "[]: every frame"
    )
    past_limit: Literal["skip", "headers"] = opt(
        "skip", "frames past a rule's limit: not written, or written cut to their headers"
    )
    index: bool = opt(True, "write an index beside each file (flow -> frame positions, for vxmirror extract)")


class PcapSink(RollingOutput, PacketSink):
    kind = "pcap"
    config_class = PcapConfig

    def __init__(self, config: PcapConfig, context: SinkContext) -> None:
        super().__init__(config, context)
        self.directory = Path(config.directory) if config.directory else Path(context.data_dir) / "pcap"
        self.ng = config.format == "pcapng"
        self._ifaces: dict[int, int] = {}
        self._log: pcap_index.IndexLog | None = None
        self._indexer = pcap_index.Finisher()
        policy = RollPolicy.of(config)
        self.files = RollingFile(
            self.directory,
            config.prefix,
            "pcapng" if self.ng else "pcap",
            context.worker,
            policy,
            header=self._header,
            recover=self._recover,
            fsync=config.fsync,
            on_closed=self._index_closed,
        )
        self._header_len = 0
        self._seq = 0  # the open file's number in the engine's plan (0: not planned)
        self.planned = False  # the engine plans this sink's files (Capture made)

    def capture(self, labeler: Callable[[int], dict[str, Any] | None] | None = None) -> Capture:
        """The engine's side: this sink's policy, file plan and frame sizes. From then on the
        files rotate where the plan says (the writer follows the blocks' file numbers)."""
        cfg = self.config
        self.planned = True
        fmt = pcapng if self.ng else pcap_classic
        plan = FilePlan(cfg.prefix, self.context.worker, "pcapng" if self.ng else "pcap", self.files.next_seq,
                        cfg.rotate_bytes, cfg.rotate_seconds, len(self._header()))
        keep_encap, snaplen = self.keep_encapsulation, self.snaplen

        def caplens(batch: Any, inner: np.ndarray, pos: np.ndarray, cut: np.ndarray) -> np.ndarray:
            return frame_caplens(batch, inner, pos, keep_encap, snaplen, cut)

        return Capture(Policy(cfg.keep, labeler), plan, cfg.past_limit, keep_encap, caplens, fmt.record_sizes_of,
                       cfg.index)

    @property
    def keep_encapsulation(self) -> bool:
        return bool(self.config.keep_encapsulation)

    @property
    def snaplen(self) -> int:
        return int(self.config.snaplen)

    def _header(self) -> bytes:
        self._ifaces = {}
        if self.ng:
            hdr = pcapng.section_header()
        else:
            hdr = pcap_classic.file_header(self.config.snaplen)
        self._header_len = len(hdr)
        return hdr

    def _recover(self, path: Path) -> int:
        data = path.read_bytes()
        if self.ng:
            return pcapng.whole_blocks_end(data)[0]
        return pcap_classic.whole_records_end(data)[0]

    def interface_name(self, vni: int) -> str:
        fn = self.context.vni_names
        name = None
        if vni >= 0 and callable(fn):
            try:
                name = fn(vni)
            except Exception:
                name = None
        if name:
            return str(name)
        return f"vni-{vni}" if vni >= 0 else "no-vni"

    def _interfaces(self, vni: np.ndarray) -> tuple[bytes, np.ndarray]:
        """IDBs for VNIs new to this file, and each frame's interface id."""
        uniq, inverse = np.unique(vni, return_inverse=True)
        idbs = []
        ids = np.empty(uniq.shape[0], np.uint32)
        for j, v in enumerate(uniq.tolist()):  # one per distinct VNI, not per packet
            if v not in self._ifaces:
                self._ifaces[v] = len(self._ifaces)
                desc = f"VNI {v}" if v >= 0 else "no tunnel (VNI unknown)"
                idbs.append(pcapng.interface_block(self.interface_name(v), desc, self.config.snaplen))
            ids[j] = self._ifaces[v]
        return b"".join(idbs), ids[inverse.ravel()]

    def write(self, block: FrameBlock) -> None:
        if block.seq is not None or block.close_file:
            self._write_planned(block)
            return
        n = block.count
        if n == 0:
            return
        sizes = pcapng.record_sizes(block) if self.ng else pcap_classic.record_sizes(block)
        limit = self.config.rotate_bytes
        lo = 0
        while lo < n:
            if self.files.due():
                self.files.close()
            if not self.files.is_open:
                self.files.open()
            room = limit - self.files.size
            cum = np.cumsum(sizes[lo:])
            k = int(np.searchsorted(cum, room, side="right"))
            if k == 0:
                if self.files.size > self._header_len:
                    self.files.close()
                    continue
                k = 1  # a frame larger than a whole file: it gets a file of its own
            hi = lo + k
            if self.ng:
                known = dict(self._ifaces)
                idbs, iface = self._interfaces(np.asarray(block.vni[lo:hi], np.int64))
                body = pcapng.encode(block, iface, lo, hi)
                try:
                    self.files.write(idbs + body.tobytes() if idbs else body.data)
                except OSError:  # (disk full) the write, its interface blocks with it, was undone
                    self._ifaces = known
                    raise
            else:
                self.files.write(pcap_classic.encode(block, lo, hi).data)
            lo = hi
            if lo < n:
                self.files.close()

    def _write_planned(self, block: FrameBlock) -> None:
        """Frames whose files the engine planned: a new file number closes the open file and
        opens the next under its planned name; each frame of a flow goes to the file's index log."""
        if block.close_file:
            self._close_file()
            return
        seq = np.asarray(block.seq)
        names = block.names or {}
        cuts = np.flatnonzero(seq[1:] != seq[:-1]) + 1
        bounds = [0, *cuts.tolist(), seq.size]
        for lo, hi in itertools.pairwise(bounds):
            q = int(seq[lo])
            if q != self._seq or not self.files.is_open:
                self._close_file()
                self.files.open(name=names.get(q))
                self._seq = q
                if self.config.index:
                    assert self.files.path is not None
                    self._log = pcap_index.IndexLog(self.files.path)
            known = dict(self._ifaces)
            if self.ng:
                idbs, iface = self._interfaces(np.asarray(block.vni[lo:hi], np.int64))
                body = pcapng.encode(block, iface, lo, hi)
                data = idbs + body.tobytes() if idbs else body.data
                sizes = pcapng.record_sizes_of(np.asarray(block.caplen[lo:hi], np.int64))
                first = self.files.size + len(idbs)
            else:
                data = pcap_classic.encode(block, lo, hi).data
                sizes = pcap_classic.record_sizes_of(np.asarray(block.caplen[lo:hi], np.int64))
                first = self.files.size
            try:
                self.files.write(data)  # (undone whole if it fails: disk full)
            except OSError:
                self._ifaces = known  # (interfaces whose blocks were not written)
                raise
            if self._log is not None and block.keys is not None:
                entries = block.keys[lo:hi].copy()
                pos = np.empty(hi - lo, np.int64)
                pos[0] = first
                if hi - lo > 1:
                    np.cumsum(sizes[:-1], out=pos[1:])
                    pos[1:] += first
                entries["pos"] = pos
                entries["ts"] = block.ts[lo:hi]
                self._log.append(entries[entries["proto"] != 0])

    def _close_file(self) -> None:
        self.files.close()  # (its index is made in _index_closed, before compression and retention)

    def _index_closed(self, final: Path) -> Path:
        """A file got its final name (closed, or recovered after a crash): its index log becomes
        its index."""
        log = pcap_index.log_path(final.with_name(final.name + ".part"))
        if self._log is not None and self._log.path == log:
            self._log.close()
            self._log = None
        if log.exists():
            self._indexer.submit(log, final, final.stat().st_size)
        return final

    def tick(self, now: float) -> None:
        if not self.planned:  # (planned: rotation by age is the plan's, see FilePlan.due)
            super().tick(now)

    def reopen(self) -> None:
        if not self.planned:  # (planned: the worker ends the plan's file, in order with the frames)
            super().reopen()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._indexer.wait()

    def health_check(self) -> Health:
        return Health(True, str(self.directory))


def sink_options(config: Any) -> tuple[bool, int]:
    """(keep_encapsulation, snaplen) a packet sink wants its FrameBlocks built with."""
    return bool(getattr(config, "keep_encapsulation", False)), int(getattr(config, "snaplen", 65535))

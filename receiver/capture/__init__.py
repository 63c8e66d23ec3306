"""Reading capture files into PacketBatches.

    with open_capture("trace.pcap.gz") as cap:
        for batch in cap.batches(8192):
            ...
        cap.counters   # {"records": .., "truncated_records": .., "unsupported_linktype": .., ...}

Formats are recognised by their magic number, never by the file name: classic
pcap (microsecond 0xa1b2c3d4 and nanosecond 0xa1b23c4d, either byte order),
pcapng, and either of them gzip-compressed.

An uncompressed file is memory-mapped and every batch's ``buf`` is the whole
mapping (``start`` points at record data): nothing is copied. A gzip file and a
stream (a pipe, a FIFO or standard input, path ``-``: ``aws s3 cp
s3://bucket/x.pcap.gz - | vxmirror read -``) are read as they come, in pieces of
``STREAM_CHUNK`` bytes (a record or block cut by a piece's end moves to the next
piece): a capture of any size takes a few pieces of memory.

Link types: 1 Ethernet, 101/228/229 raw IP (also 12 and 14, the DLT_RAW values some
systems write), 113 and 276 Linux cooked (SLL and SLL2: captures on the ``any`` device; tcpdump
writes SLL2 there since 4.99). Packets of any other link type are counted
under ``unsupported_linktype`` and skipped, with one warning per capture and link type.

Errors: a file that cannot be opened, is not a capture, or ends inside the file
header raises :class:`CaptureError` (naming the file). A final record cut short
is counted (``truncated_records``); a record header with an impossible length
stops reading and is counted (``bad_records``); malformed pcapng blocks are
counted (``bad_blocks``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import select
import stat
import struct
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal, Protocol

import numpy as np

from .. import native
from ..packets import F64, I64, U8, U32, Layer, PacketBatch
from . import cloops, mapguard
from . import pcap as capture_pcap
from . import pcapng as capture_pcapng

_Records = tuple[I64, U32, U32, F64]  # data offsets, caplen, wirelen, time of some records

log = logging.getLogger(__name__)

STDIN = "-"  # the path that reads standard input
STREAM_CHUNK = 64 << 20  # bytes of a gzip file or a stream held at once (at least; records are whole)
READ_SIZE = 1 << 20  # bytes read, or decompressed, at a time (a gzip bomb too comes out this much at once)

LINKTYPE_LAYERS: dict[int, Layer] = {
    1: Layer.ETHERNET,
    101: Layer.RAW_IP,
    228: Layer.RAW_IP,
    229: Layer.RAW_IP,
    12: Layer.RAW_IP,
    14: Layer.RAW_IP,
    113: Layer.LINUX_SLL,
    276: Layer.LINUX_SLL2,
}

# first four bytes as written (big-endian reading) -> (format, big_endian, nanoseconds)
_PCAP_MAGICS: dict[bytes, tuple[bool, bool]] = {
    bytes.fromhex("a1b2c3d4"): (True, False),
    bytes.fromhex("d4c3b2a1"): (False, False),
    bytes.fromhex("a1b23c4d"): (True, True),
    bytes.fromhex("4d3cb2a1"): (False, True),
}
_PCAPNG_MAGIC = bytes.fromhex("0a0d0d0a")
_GZIP_MAGIC = b"\x1f\x8b"


class CaptureError(Exception):
    """The file cannot be read as a capture. The message names the file and the problem."""


COUNTER_NAMES = (
    "records",  # packets delivered in batches
    "truncated_records",  # a record (or block) cut short at the end of the file
    "bad_records",  # a record header with an impossible length (reading stopped there)
    "bad_blocks",  # pcapng blocks that are malformed
    "skipped_blocks",  # pcapng blocks of types that carry no packets (name resolution, stats, ...)
    "unsupported_linktype",  # packets skipped because of their link type
    "gzip_truncated",  # the compressed stream ended early (what came before is read)
    "gzip_corrupt",  # the compressed stream turned corrupt part-way (what came before is read)
)


class Capture:
    """One open capture file. Use :func:`open_capture`."""

    def __init__(
        self,
        path: str,
        data: mmap.mmap | bytes | bytearray | np.ndarray,
        compressed: bool,
        counters: dict[str, int],
        more: _Pieces | None = None,
        source: BinaryIO | None = None,
    ) -> None:
        """``data``: the file (mapped or in memory), or with ``more`` its first piece, the rest
        to come from ``more`` (a gzip file or a stream, read from ``source``, closed with this)."""
        self.path = path
        self.compressed = compressed
        self.counters = counters
        self._more, self._source = more, source
        self._data: mmap.mmap | bytes | bytearray | np.ndarray | None = data
        self._arr: U8 = np.frombuffer(data, np.uint8)
        self._scan_buffers: dict[str, np.ndarray] = {}  # the C record scan's work arrays, kept across windows
        head = bytes(self._arr[:4])
        self.format: Literal["pcap", "pcapng"]
        self.big_endian = False
        self.nanoseconds = False
        self.linktype: int | None = None  # classic pcap only (pcapng: per interface)
        self.snaplen = 0
        if head in _PCAP_MAGICS:
            self.format = "pcap"
            self.big_endian, self.nanoseconds = _PCAP_MAGICS[head]
            if self._arr.shape[0] < capture_pcap.HEADER_LEN:
                raise CaptureError(f"{path}: file ends inside the pcap file header")
            e = ">" if self.big_endian else "<"
            _maj, _min, _zone, _sig, self.snaplen, network = struct.unpack_from(e + "HHiIII", self._arr.data, 4)
            self.linktype = network & 0xFFFF
        elif head == _PCAPNG_MAGIC:
            self.format = "pcapng"
            if self._arr.shape[0] < 28:
                raise CaptureError(f"{path}: file ends inside the pcapng section header")
        else:
            raise CaptureError(f"{path}: not a pcap or pcapng capture (starts with {head.hex() or 'nothing'})")
        self._warned: set[int] = set()
        if isinstance(data, mmap.mmap):  # shrinking while read: zeros past the new end, not SIGBUS
            mapguard.guard(data)

    # -- API -------------------------------------------------------------------------------

    def batches(self, batch_size: int = 8192) -> Iterator[PacketBatch]:
        """Every packet of the file, in order, as batches of at most ``batch_size``."""
        for batch, _ in self.batches_made(batch_size):
            yield batch

    def batches_made(
        self, batch_size: int = 8192, runner: capture_pcapng.Runner | None = None
    ) -> Iterator[tuple[PacketBatch, object]]:
        """``batches``, each with what ``runner`` made of it if the runner read it (the runs of a
        pcapng's enhanced packet blocks it takes: ``capture_pcapng.walk``), else None."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.format == "pcap":
            items: Iterator[tuple[PacketBatch, object]] = ((b, None) for b in self._pcap_batches(batch_size))
        else:
            items = self._pcapng_batches(batch_size, runner)
        for batch, made in items:
            if batch.count and (cut := self.cut_under(batch)) is not None:
                kept, error = cut
                if kept.count:
                    yield kept, None
                raise error
            yield batch, made

    def close(self) -> None:
        """Release the file. Batches already handed out keep the mapping alive until dropped."""
        source, self._source, self._more = self._source, None, None
        if source is not None and source is not sys.stdin.buffer:
            source.close()
        data, self._data = self._data, None
        if isinstance(data, mmap.mmap):
            # BufferError: numpy views still exist; the mapping closes when they are collected
            with contextlib.suppress(BufferError):
                data.close()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Capture({self.path!r}, format={self.format}, compressed={self.compressed})"

    def shrunk_to(self) -> int | None:
        """The file's size now, if it is shorter than when it was mapped (truncated or rewritten
        while being read: what lies past that reads as zeros); None if it is not."""
        if not isinstance(self._data, mmap.mmap):
            return None
        try:
            size = self._data.size()  # (fstat of the mapped file)
        except (OSError, ValueError):
            return None
        return size if size < self._arr.shape[0] else None

    def cut_under(self, batch: PacketBatch) -> tuple[PacketBatch, CaptureError] | None:
        """None while the mapped file is whole. Once it was cut short under ``batch`` (see
        ``shrunk_to``): the packets of the batch wholly before the cut, and the error to raise
        after them (what lies past the cut reads as zeros, or is already another capture's)."""
        size = self.shrunk_to()
        if size is None:
            return None
        whole = batch.start + batch.caplen.astype(np.int64) <= size
        k = batch.count if whole.all() else int(np.argmin(whole))  # (records are in file order)
        at = int(batch.start[k - 1]) + int(batch.caplen[k - 1]) if k else int(batch.start[0]) - 16
        kept = PacketBatch(batch.buf, batch.start[:k], batch.caplen[:k], batch.wirelen[:k], batch.ts[:k], batch.layer)
        return kept, CaptureError(f"{self.path}: the file shrank to {size} bytes while being read (truncated or "
                                  f"overwritten); reading stopped at byte {at}")

    def vanished_pages(self) -> int:
        """Pages of the mapped file read as zeros because the file had shrunk under them."""
        return mapguard.faults(self._data) if isinstance(self._data, mmap.mmap) else 0

    # for the readers in receiver.capture.readahead and receiver.capture.reader

    def count(self, name: str, n: int) -> None:
        """Add ``n`` to counter ``name`` (one of COUNTER_NAMES)."""
        self.counters[name] = self.counters.get(name, 0) + n

    def scan_stopped(self, at: int, bad: bool) -> None:
        """The pcap record scan stopped at offset ``at``: at a record cut short, or (``bad``) at a
        record header with an impossible length. Counted and logged."""
        if bad:
            self.count("bad_records", 1)
            log.warning("%s: record header at offset %d has an impossible length; reading stopped", self.path, at)
        else:
            self.count("truncated_records", 1)
            log.warning("%s: the last record is cut short at offset %d", self.path, at)

    def pcap_layer(self) -> Layer | None:
        """What the records of a classic pcap hold (None: a link type not supported, or pcapng)."""
        return LINKTYPE_LAYERS.get(self.linktype) if self.format == "pcap" and self.linktype is not None else None

    @property
    def streamed(self) -> bool:
        """Whether the file comes in pieces (from gzip or a stream): ``data`` is then only its
        first piece, and ``batches`` the way to read it."""
        return self._more is not None

    @property
    def data(self) -> U8:
        """The whole file as bytes (mapped, or decompressed); its first piece when ``streamed``."""
        return self._arr

    # -- internals -------------------------------------------------------------------------

    def _unsupported(self, linktype: int, n: int) -> None:
        self.count("unsupported_linktype", n)
        if linktype not in self._warned:
            self._warned.add(linktype)
            log.warning("%s: link type %d is not supported; its packets are skipped", self.path, linktype)

    def _pcap_batches(self, batch_size: int) -> Iterator[PacketBatch]:
        """The records as batches, a window at a time. A file from gzip or a stream comes in
        pieces of at least ``STREAM_CHUNK`` bytes: a record that runs past a piece's end starts
        the next piece (which the batches after it then view)."""
        assert self.linktype is not None
        layer = LINKTYPE_LAYERS.get(self.linktype)
        refill = self._refill()
        arr, pos = self._arr, capture_pcap.HEADER_LEN
        while True:
            truncated = False
            while pos < arr.shape[0]:
                records, nxt, truncated, bad = self._pcap_scan(arr, pos, batch_size)
                for start, cap, wire, ts in records:
                    if layer is None:
                        self._unsupported(self.linktype, int(start.shape[0]))
                        continue
                    self.count("records", int(start.shape[0]))
                    yield PacketBatch(buf=arr, start=start, caplen=cap, wirelen=wire, ts=ts, layer=layer)
                if bad:
                    self.scan_stopped(nxt, bad)
                    return
                if truncated:  # the record at nxt is cut by the end of arr
                    pos = nxt
                    break
                if nxt <= pos:  # pragma: no cover - defensive: a window holds at least one record
                    return
                pos = nxt
            more = refill(pos) if refill is not None else None
            if more is None:
                if truncated:  # by the end of the file
                    self.scan_stopped(pos, False)
                return
            arr, pos = more, 0  # the next piece, from the cut record on

    def _refill(self) -> Callable[[int], U8 | None] | None:
        """For a file read in pieces (None otherwise): a function that, given where in the last
        piece reading stopped (a cut record or block, or the piece's end), returns the next
        piece: the bytes from there on, topped up from the file to ``STREAM_CHUNK`` bytes (at
        least one byte more), or None when the file has nothing more."""
        more = self._more
        if more is None:
            return None
        last = [self._arr]

        def refill(pos: int) -> U8 | None:
            rest = last[0][pos:]
            have = rest.shape[0]
            piece = np.empty(max(STREAM_CHUNK, have + 1), np.uint8)  # new: batches handed out keep viewing theirs
            piece[:have] = rest
            n = more.fill(piece, have)
            if n == have:
                return None
            last[0] = piece[:n]
            return last[0]

        return refill

    def _pcap_scan(self, arr: U8, pos: int, batch_size: int) -> tuple[Iterable[_Records], int, bool, bool]:
        """Records of ``arr`` from header ``pos`` on (a window's worth) as column chunks of at
        most ``batch_size``, where scanning stopped, and whether it stopped at a truncated or a
        bad record."""
        frac_lim = 1_000_000_000 if self.nanoseconds else 1_000_000
        if native.available():
            stop = min(arr.shape[0], pos + capture_pcap.WINDOW_LEN)
            offs, nxt, status = cloops.pcap_scan(
                arr, pos, stop, self.big_endian, capture_pcap.MAX_RECORD_LEN, frac_lim, buffers=self._scan_buffers
            )
            truncated, bad, columns = status == cloops.SCAN_TRUNCATED, status == cloops.SCAN_BAD, cloops.pcap_columns
        else:
            res = capture_pcap.scan(arr, pos, arr.shape[0], self.big_endian, frac_lim)
            offs, nxt, truncated, bad = res.offsets, res.next_pos, res.truncated, res.bad
            columns = capture_pcap.record_columns
        chunks = (
            columns(arr, offs[i : i + batch_size], self.big_endian, self.nanoseconds)
            for i in range(0, offs.shape[0], batch_size)
        )
        return chunks, nxt, truncated, bad

    def _pcapng_batches(
        self, batch_size: int, runner: capture_pcapng.Runner | None
    ) -> Iterator[tuple[PacketBatch, object]]:
        """Batches of at most ``batch_size`` packets of one layer each, cut where the layer
        changes; with what the runner made of those it read."""
        arr = self._arr
        parts: list[tuple[I64, U32, U32, F64]] = []  # the pending batch, in pieces
        singles: list[capture_pcapng.Packet] = []  # ... its last piece, packet by packet
        pending = 0
        layer: Layer | None = None

        def close_singles() -> None:
            if singles:
                parts.append(capture_pcapng.packet_arrays(singles))
                singles.clear()

        def must_flush(next_layer: Layer) -> bool:  # before adding packets of next_layer
            return bool(pending) and (pending >= batch_size or next_layer != layer)

        def flush() -> tuple[PacketBatch, None]:
            nonlocal pending
            assert layer is not None
            close_singles()
            start, cap, wire, ts = (np.concatenate(c) if len(parts) > 1 else c[0] for c in zip(*parts))
            self.count("records", pending)
            parts.clear()
            pending = 0
            return PacketBatch(buf=arr, start=start, caplen=cap, wirelen=wire, ts=ts, layer=layer), None

        try:
            for item in capture_pcapng.walk(arr, arr.shape[0], self.count, self.path, self._refill(), runner):
                if isinstance(item, capture_pcapng.Buffer):  # the next piece: the batch so far views the last
                    if pending:
                        yield flush()
                    arr = item.arr
                    continue
                if isinstance(item, capture_pcapng.Taken):  # a whole batch (of a supported link type)
                    if pending:
                        yield flush()
                    self.count("records", item.start.shape[0])
                    yield PacketBatch(buf=arr, start=item.start, caplen=item.caplen, wirelen=item.wirelen, ts=item.ts,
                                      layer=LINKTYPE_LAYERS[item.linktype]), item.made
                    continue
                if isinstance(item, capture_pcapng.Packet):
                    lt = item.iface.linktype
                    if lt not in LINKTYPE_LAYERS:
                        self._unsupported(lt, 1)
                        continue
                    if must_flush(LINKTYPE_LAYERS[lt]):
                        yield flush()
                    layer = LINKTYPE_LAYERS[lt]
                    singles.append(item)
                    pending += 1
                    continue
                # a run of packets (arrays): the same, a stretch of one link type at a time
                close_singles()
                linktypes = np.array([i.linktype for i in item.ifaces], np.int64)[item.iface]
                cuts = np.flatnonzero(linktypes[1:] != linktypes[:-1]) + 1
                for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), linktypes.shape[0]]):
                    lt = int(linktypes[lo])
                    if lt not in LINKTYPE_LAYERS:
                        self._unsupported(lt, hi - lo)
                        continue
                    while lo < hi:
                        if must_flush(LINKTYPE_LAYERS[lt]):
                            yield flush()
                        layer = LINKTYPE_LAYERS[lt]
                        take = min(hi - lo, batch_size - pending)
                        parts.append((item.start[lo : lo + take], item.caplen[lo : lo + take],
                                      item.wirelen[lo : lo + take], item.ts[lo : lo + take]))
                        pending += take
                        lo += take
        except capture_pcapng.PcapngError as exc:
            log.warning("%s; reading stopped", exc)
        if pending:
            yield flush()


class _Pieces:
    """The bytes of a file read in pieces (a stream, or gzip): ``fill(buf, have)`` tops ``buf``
    (which holds ``have`` bytes) up from the file and returns how many it holds then (``have``:
    the file has nothing more)."""

    def fill(self, buf: U8, have: int) -> int:
        raise NotImplementedError


class _ReadsInto(Protocol):
    def readinto1(self, b: memoryview, /) -> int: ...

    def fileno(self) -> int: ...


class _Reads(_Pieces):
    """A stream, read straight into the piece (no copies in between, none to grow a buffer). A
    stream that goes quiet for ``QUIET`` seconds (a live source: ``tcpdump -w - | vxmirror read
    -``) has the piece so far read then, not once the piece is full."""

    QUIET = 0.1
    MIN_PIECE = 64  # bytes a piece holds at least before it may end early (the file headers)

    def __init__(self, f: _ReadsInto, head: bytes) -> None:
        self.f, self.head = f, head

    def fill(self, buf: U8, have: int) -> int:
        start = have
        if self.head:
            buf[have : have + len(self.head)] = np.frombuffer(self.head, np.uint8)
            have += len(self.head)
            self.head = b""
        view = memoryview(buf)  # type: ignore[arg-type]
        while have < buf.shape[0]:
            if have > start and have >= self.MIN_PIECE and not self._ready():
                break
            n = self.f.readinto1(view[have:])
            if not n:
                break
            have += n
        return have

    def _ready(self) -> bool:
        """Whether more comes within ``QUIET`` seconds (or the end of the stream)."""
        try:
            return bool(select.select([self.f], [], [], self.QUIET)[0])
        except (OSError, ValueError):  # (not selectable: read on, as for a file)
            return True


class _Copies(_Pieces):
    """Pieces made of the chunks an iterator yields (decompressed data): copied in; what does not
    fit is kept for the next piece."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.rest = memoryview(b"")

    def fill(self, buf: U8, have: int) -> int:
        while have < buf.shape[0]:
            if not self.rest:
                chunk = next(self.chunks, None)
                if chunk is None:
                    break
                self.rest = memoryview(chunk)
            take = min(len(self.rest), buf.shape[0] - have)
            buf[have : have + take] = np.frombuffer(self.rest[:take], np.uint8)
            self.rest = self.rest[take:]
            have += take
        return have


def _chunks(f: BinaryIO, first: bytes) -> Iterator[bytes]:
    """``first``, then the rest of ``f`` in pieces of ``READ_SIZE``."""
    yield first
    while chunk := f.read(READ_SIZE):
        yield chunk


def _bigger_pipe(f: BinaryIO) -> None:
    """A pipe or FIFO we read holds 1 MiB instead of 64 KiB: the writer and we wake each other
    16 times less often (the unprivileged limit; left as it is where that fails)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        if stat.S_ISFIFO(os.fstat(f.fileno()).st_mode):
            fcntl.fcntl(f.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)


def _gunzip(chunks: Iterable[bytes], path: str, counters: dict[str, int]) -> Iterator[bytes]:
    """Decompress every gzip member, piece by piece; a stream cut short, or corrupt part-way,
    ends with what was decompressed (counted). Corrupt from the start raises CaptureError."""
    d = zlib.decompressobj(wbits=31)
    fed = False  # the current member has received input
    produced = 0  # bytes decompressed
    try:
        for chunk in chunks:
            while chunk:
                out = d.decompress(chunk, READ_SIZE)
                fed = True
                if d.eof:  # another member may follow
                    chunk = d.unused_data
                    d = zlib.decompressobj(wbits=31)
                    fed = False
                else:
                    chunk = d.unconsumed_tail
                if out:
                    produced += len(out)
                    yield out
        if rest := d.flush():
            yield rest
    except zlib.error as exc:
        if not produced:
            raise CaptureError(f"{path}: corrupt gzip data ({exc})") from None
        counters["gzip_corrupt"] = counters.get("gzip_corrupt", 0) + 1
        log.warning("%s: corrupt gzip data after %d bytes (%s); reading what was decompressed", path, produced, exc)
        return
    if fed and not d.eof:
        counters["gzip_truncated"] = counters.get("gzip_truncated", 0) + 1
        log.warning("%s: compressed stream ends early; reading what was decompressed", path)


def open_capture(path: str | os.PathLike[str], mapped: mmap.mmap | None = None) -> Capture:
    """Open a pcap or pcapng file (maybe gzip-compressed). Raises :class:`CaptureError`.

    ``mapped``: the file already mapped (by a :class:`receiver.capture.prefetch.Prefetcher`)."""
    p = os.fspath(path)
    counters = dict.fromkeys(COUNTER_NAMES, 0)
    data: mmap.mmap | bytes | bytearray
    if mapped is not None:
        data = mapped
    else:
        try:
            f = _open(p)
        except OSError as exc:
            raise CaptureError(f"{p}: cannot open ({exc.strerror or exc})") from None
        try:
            head = f.read(4)
            if not head:
                raise CaptureError(f"{p}: empty file, not a capture")
            gzipped = head[:2] == _GZIP_MAGIC
            if gzipped or is_stream(f):  # read as it comes (a pipe, FIFO or terminal cannot be mapped)
                _bigger_pipe(f)
                if gzipped:
                    more: _Pieces = _Copies(_gunzip(_chunks(f, head), p, counters))
                else:  # (typing's BinaryIO does not declare readinto1)
                    more = _Reads(f, head)  # type: ignore[arg-type]
                piece = np.empty(STREAM_CHUNK, np.uint8)
                first = piece[: more.fill(piece, 0)]
                if not first.shape[0]:
                    raise CaptureError(f"{p}: gzip file holds no data")
                return Capture(p, first, gzipped, counters, more, f)
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except BaseException as exc:
            if f is not sys.stdin.buffer:
                f.close()
            if isinstance(exc, OSError):
                raise CaptureError(f"{p}: cannot open ({exc.strerror or exc})") from None
            raise
        if f is not sys.stdin.buffer:
            f.close()  # (the mapping stays)
    try:
        return Capture(p, data, False, counters)
    except CaptureError:
        if isinstance(data, mmap.mmap):
            with contextlib.suppress(BufferError):
                data.close()
        raise


def _open(path: str) -> BinaryIO:
    """The file at ``path``; ``-`` is standard input."""
    return sys.stdin.buffer if path == STDIN else open(path, "rb")


def is_stream(f: BinaryIO) -> bool:
    """Whether ``f`` is not a regular file (a pipe, FIFO, socket or device: read once, not mapped)."""
    return not stat.S_ISREG(os.fstat(f.fileno()).st_mode)


def iter_captures(paths: Iterable[str | os.PathLike[str] | Path]) -> Iterator[Capture]:
    """Open each path in turn; each capture is closed when the consumer moves on to the next."""
    for path in paths:
        cap = open_capture(path)
        try:
            yield cap
        finally:
            cap.close()

"""Running the stateless half of the engine on a second thread, ahead of the first.

Reading a capture is a pipeline of two halves: finding the records, decoding them and keying
them (pure functions of each batch: ``engine.prepare``), then the flow table, the excerpts and
the application parsers (state kept across batches, mostly Python: ``Engine.process``).
:func:`prepared_batches` runs the first half on another thread so the two overlap on two cores;
the results are the same as running both in turn on one thread.

- A classic pcap, with the C library built: the C reading thread (``receiver.capture.reader``)
  does it all without the GIL, a few batches ahead. Packets of shapes the C decode does not
  take are finished here, on the consumer's thread.
- A pcapng file, with the C library built: the Python block walk (``capture_pcapng.walk``)
  hands each run of enhanced packet blocks whose section has interfaces of one supported link
  type to the C reading thread, as above; the few batches the walk makes itself (other blocks,
  interfaces of mixed link types) are prepared on the consumer's thread.
- Anything else (a capture from gzip or a stream, another link type, no C library):
  :func:`work_ahead` reads (and decompresses) the batches and calls ``engine.prepare`` on a
  Python thread (mostly C, numpy and zlib calls, which release the GIL).

The thread stays a bounded number of batches ahead. An exception in it (a capture error) is
raised in the consumer when it reaches that point; a consumer that stops early stops the thread.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from .. import native
from ..config.engine import EngineConfig
from ..decode import Decoded, decode
from ..decode import cloops as decode_loops
from ..engine import APP_TABLES, Prepared, prepare, prepare_decoded
from ..flows.keys import Keys
from ..packets import U8, Layer, PacketBatch
from . import LINKTYPE_LAYERS, Capture, cloops
from .pcap import HEADER_LEN, MAX_RECORD_LEN, WINDOW_LEN
from .pcapng import Interface, Taken

if TYPE_CHECKING:
    from .reader import PcapReader, Slot

T = TypeVar("T")
R = TypeVar("R")
DEPTH = 2


class _End:
    pass


def work_ahead(items: Iterator[T], work: Callable[[T], R], depth: int = DEPTH) -> Iterator[tuple[T, R]]:
    """``(item, work(item))`` for each item, in order; ``items`` is iterated and ``work`` called
    on a thread that runs up to ``depth`` items ahead of the consumer."""
    out: queue.Queue[tuple[T, R] | BaseException | _End] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[T, R] | BaseException | _End) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, work(item))):
                    return
            put(_End())
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="vxmirror-readahead", daemon=True)
    thread.start()
    try:
        while True:
            got = out.get()
            if isinstance(got, _End):
                return
            if isinstance(got, BaseException):
                raise got
            yield got
    finally:
        stop.set()
        thread.join()


def prepared_batches(
    cap: Capture, config: EngineConfig, batch_size: int
) -> Generator[tuple[PacketBatch, Prepared], None, None]:
    """Every batch of ``cap`` (as ``cap.batches(batch_size)``) with ``engine.prepare``'s result,
    computed ahead on another thread. A batch is valid until the next one is taken."""
    layer = cap.pcap_layer()
    if cap.format == "pcapng" and not cap.streamed and native.available():
        runner = _PcapngRunner(config, batch_size)
        for batch, made in cap.batches_made(batch_size, runner):
            yield batch, made if isinstance(made, Prepared) else prepare(batch, config)
        return
    if layer is None or cap.streamed or not native.available() or cap.data.shape[0] <= HEADER_LEN:
        yield from work_ahead(cap.batches(batch_size), lambda b: prepare(b, config))
        return
    reader = _c_reader(
        cap.data, HEADER_LEN, layer, config, batch_size, big_endian=cap.big_endian, nanos=cap.nanoseconds,
        max_len=MAX_RECORD_LEN, frac_lim=1_000_000_000 if cap.nanoseconds else 1_000_000, window=WINDOW_LEN,
    )
    with contextlib.closing(_slot_batches(reader, cap.data, layer)) as slots:
        for slot, batch in slots:
            cap.count("records", slot.n)
            if slot.n and (cut := cap.cut_under(batch)) is not None:  # as Capture.batches() does
                kept, error = cut
                if kept.count:
                    yield kept, prepare(kept, config)
                raise error
            yield batch, _prepared(batch, slot, config)
    if reader.status != cloops.SCAN_OK:
        cap.scan_stopped(reader.end_pos, bad=reader.status == cloops.SCAN_BAD)


class _PcapngRunner:
    """Reads the runs of a pcapng's enhanced packet blocks on the C reading thread (a
    ``capture_pcapng.Runner``): those of a section whose interfaces share one supported link
    type, at most ``MAX_RUNS`` a file (a thread each; a file whose runs are that short is read
    by the walk itself from then on)."""

    MAX_RUNS = 16

    def __init__(self, config: EngineConfig, batch_size: int) -> None:
        self.config, self.batch_size = config, batch_size
        self.runs = 0

    def __call__(self, arr: U8, pos: int, big_endian: bool, ifaces: list[Interface]) -> Iterator[Taken] | None:
        linktypes = {i.linktype for i in ifaces}
        if len(linktypes) != 1 or self.runs >= self.MAX_RUNS:
            return None
        linktype = linktypes.pop()
        if linktype not in LINKTYPE_LAYERS:
            return None
        self.runs += 1
        return self._run(arr, pos, big_endian, ifaces, linktype)

    def _run(self, arr: U8, pos: int, big_endian: bool, ifaces: list[Interface], linktype: int) -> Iterator[Taken]:
        layer = LINKTYPE_LAYERS[linktype]
        reader = _c_reader(arr, pos, layer, self.config, self.batch_size, big_endian=big_endian, nanos=False,
                           max_len=0, frac_lim=0, window=0, interfaces=ifaces)
        with contextlib.closing(_slot_batches(reader, arr, layer)) as slots:
            for slot, batch in slots:
                yield Taken(linktype, batch.start, batch.caplen, batch.wirelen, batch.ts, slot.next_pos,
                            _prepared(batch, slot, self.config))


def _c_reader(data: U8, pos: int, layer: Layer, config: EngineConfig, batch_size: int, **fmt: Any) -> PcapReader:
    """The C reading thread over ``data`` from ``pos`` with what the engine's config asks of it;
    ``fmt``: the capture format's part (``PcapReader``'s other arguments)."""
    from .reader import PcapReader

    return PcapReader(
        data, pos, layer=int(layer), vxlan_ports=tuple(config.vxlan_ports), geneve_ports=tuple(config.geneve_ports),
        max_depth=config.max_tunnel_depth, tables=APP_TABLES if config.app_metadata else None, batch=batch_size,
        **fmt,
    )


def _slot_batches(reader: PcapReader, data: U8, layer: Layer) -> Generator[tuple[Slot, PacketBatch], None, None]:
    """Each slot the thread fills, with its packets as a batch of ``data``; a slot is given back
    when the next one is asked for, and the thread stops when this is closed."""
    try:
        for slot in reader.slots():
            c = slot.cols
            yield slot, PacketBatch(buf=data, start=c["start"], caplen=c["caplen"], wirelen=c["wirelen"], ts=c["ts"],
                                    layer=layer)
            reader.release(slot)
    finally:
        reader.close()


def _prepared(batch: PacketBatch, slot: Slot, config: EngineConfig) -> Prepared:
    """``engine.prepare(batch, config)`` from what the C reading thread left in ``slot``."""
    from .reader import F_FRAGMENTS, F_PREPARED

    c = slot.cols
    d = Decoded(**{name: c[name] for name in decode_loops.DECODE_COLUMNS})
    if not slot.flags & F_PREPARED:  # packets of other shapes: decoded here, then the rest as prepare() does
        d, slow = decode(batch, config, common=(d, c["handled"]))
        return prepare_decoded(batch, d, slow, config)
    p = Prepared(d, 0, fragments=bool(slot.flags & F_FRAGMENTS))  # every packet decoded by the C pass: OK
    if not slot.n or p.fragments:
        return p
    keys = Keys(d.vni, **{name: c[f"key_{name}"] for name, _ in decode_loops.FLOW_KEY_OUTPUTS})
    first = c["first"][: slot.groups]
    p.keys, p.grouped = keys, (keys.hash[first], first, c["inv"], c["same"])
    if config.app_metadata:
        p.app_later, p.app_maybe = c["later"], c["maybe"]
    return p

"""Flow records built and serialised in bulk: one native call per batch of ending flows.

``encode_records`` gives the same records as ``records.build_records`` followed by
``orjson.dumps`` of each dict, byte for byte (tests/test_record_encode.py keeps the Python
builder as the oracle), without a dict per record: ``vxrecords.c`` (beside this file) writes
every field it can from the flow table's columns. Only what needs Python is made here, for the
flows that have it: the application metadata (``app``, from the parsers), the AWS labels
(``aws``, one lookup per VNI of the batch) and the sensor name, each handed to C as a ready
JSON fragment. With a redactor (receiver.redact), the credentials in the excerpts and in the
``app`` objects are masked first, and the count per record comes as a column (``redacted``).
Without the C library the Python builder does the work (same bytes, slower).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from ..decode.tcp import flag_letters
from ..process import nativelib
from .excerpts import ExcerptPool
from .record import EndReason
from .recordbatch import CID_BYTES, CID_DTYPE, RecordBatch
from .records import TRANSPORTS, build_records
from .table import FlowTable

if TYPE_CHECKING:
    from ..redact import Redactor

# the flow-table columns vx_encode_records reads, in its order (dtypes: flows.table.COLUMNS)
COLUMNS = (
    "orig", "kproto", "a_hi", "a_lo", "b_hi", "b_lo", "a_port", "b_port", "kvni", "pkts", "ipbytes", "paybytes",
    "tflags", "seg_start", "t_last", "hist", "hbits", "flipped", "trunc", "frags", "segments", "exc_len", "exc_row",
)
CHUNK = 262144  # records encoded per call (bounds the output buffer: about 1.4 kB a record)
LINE_MAX = 1024  # bytes of a line's fixed fields, at most (vxrecords.c checks it)
REDACTED_MAX = 32  # bytes of ``,"redacted":N``, at most (likewise)

_P = ctypes.c_void_p
_I64 = ctypes.c_int64


class _StrTab(ctypes.Structure):
    _fields_ = [("text", ctypes.c_char_p), ("off", _P)]


def _table(strings: list[bytes]) -> tuple[_StrTab, bytes, np.ndarray]:
    """A string table for C, and the objects that must live while it is used."""
    text = b"".join(strings)
    off = np.zeros(len(strings) + 1, np.int64)
    np.cumsum([len(s) for s in strings], out=off[1:])
    return _StrTab(text, off.ctypes.data), text, off


_TRANSPORTS = _table([orjson.dumps(TRANSPORTS.get(p) or str(p)) for p in range(256)])
_TCP_FLAGS = _table([flag_letters(f).encode() for f in range(256)])
_NO_AWS = _table([])  # (no labeler: no record has an aws object)


def _load() -> ctypes.CDLL | None:
    lib = nativelib.load()
    if lib is None:
        return None
    lib.vx_encode_records.restype = _I64
    lib.vx_encode_records.argtypes = [
        _P, _I64, _P, _P, _P, ctypes.c_char_p, _I64, ctypes.c_double, _P, _I64, ctypes.c_char_p, _P, _P, _P, _P,
        ctypes.c_char_p, _I64, _P, _I64, _P, _P, _P, _P, _P, _P, _P, _I64, _I64,
    ]
    lib.vx_format_floats.restype = _I64
    lib.vx_format_floats.argtypes = [_P, _I64, ctypes.c_int, _P, _P]
    return lib


_lib = _load()



def available() -> bool:
    """Whether records are built in C (else by ``records.build_records``)."""
    return _lib is not None


def encode_records(
    table: FlowTable,
    flows: np.ndarray,
    reason: EndReason,
    now: float | None,
    excerpts: ExcerptPool | None,
    app: dict[int, Any],
    labeler: Callable[[int], dict[str, Any] | None] | None,
    sensor: str | None,
    redactor: Redactor | None = None,
    pcap_names: dict[int, str] | None = None,
) -> RecordBatch:
    """The records of ``flows`` (table rows, in the order given), as ``build_records`` makes them
    (``redactor``: masks the credentials they would show, in place, first)."""
    if _lib is None:
        return RecordBatch.from_records(
            build_records(table, flows, reason, now, excerpts, app, labeler, sensor, redactor, pcap_names)
        )
    if not flows.size:
        return RecordBatch.empty()
    flows = np.ascontiguousarray(flows, np.int64)
    interim = reason == "active"  # the flow goes on (its parsers too)
    redacted = None
    if redactor is not None and excerpts is not None:
        redacted = redactor.excerpts(table, flows, excerpts)
    if app:
        app_text, app_off, redacted = _app_fragments(flows, app, interim, redactor, redacted)
    else:
        app_text, app_off = b"", np.zeros(flows.size + 1, np.int64)
    aws_idx, aws = _aws_fragments(table, flows, labeler)
    suffix = b',"sensor":' + orjson.dumps(sensor) if sensor else b""
    parts = []
    for lo in range(0, flows.size, CHUNK):
        hi = min(lo + CHUNK, flows.size)
        a, b = int(app_off[lo]), int(app_off[hi])
        parts.append(_encode(table, flows[lo:hi], reason, now, excerpts, app_text[a:b], app_off[lo : hi + 1] - a,
                             None if redacted is None else redacted[lo:hi], aws_idx[lo:hi], aws, suffix,
                             pcap_names))
    return RecordBatch.concat(parts)


def _app_fragments(
    flows: np.ndarray, app: dict[int, Any], interim: bool, redactor: Redactor | None, redacted: np.ndarray | None
) -> tuple[bytes, np.ndarray, np.ndarray | None]:
    """The ``app`` objects (JSON) of the records whose flow has application metadata, back to
    back, and where each record's starts (``n + 1`` offsets; an empty one for none); with a
    redactor, their credentials masked first and counted in ``redacted`` (made if None)."""
    states = list(map(app.get, flows.tolist()))
    lens = [0] * (flows.size + 1)  # (a list: a numpy element set per record costs more)
    parts = []
    dumps = orjson.dumps
    mask = redactor.app if redactor is not None else None
    for j, state in enumerate(states, 1):
        if state is None:
            continue
        meta = state if isinstance(state, dict) else state.to_record(copy=interim)
        if meta:
            if mask is not None and "http" in meta and (k := mask(meta)):
                if redacted is None:
                    redacted = np.zeros(flows.size, np.int64)
                redacted[j - 1] += k
            part = dumps(meta)
            parts.append(part)
            lens[j] = len(part)
    return b"".join(parts), np.cumsum(np.array(lens, np.int64)), redacted


def _aws_fragments(
    table: FlowTable, flows: np.ndarray, labeler: Callable[[int], dict[str, Any] | None] | None
) -> tuple[np.ndarray, tuple[_StrTab, bytes, np.ndarray]]:
    """Per record the entry of ``,"aws":{...}`` in the table returned (-1: none): one labeler
    call per VNI of the batch."""
    idx = np.full(flows.size, -1, np.int32)
    if labeler is None:
        return idx, _NO_AWS
    vni = table.cols["kvni"][flows]
    frags: list[bytes] = []
    uniq, inv = np.unique(vni, return_inverse=True)
    entry = np.full(uniq.size, -1, np.int32)
    for i, v in enumerate(uniq.tolist()):
        if v >= 0 and (labels := labeler(v)):
            entry[i] = len(frags)
            frags.append(b',"aws":' + orjson.dumps(labels))
    idx[:] = entry[inv.reshape(-1)]
    return idx, _table(frags)


def _encode(
    table: FlowTable, flows: np.ndarray, reason: str, now: float | None, excerpts: ExcerptPool | None,
    app_text: bytes, app_off: np.ndarray, redacted: np.ndarray | None, aws_idx: np.ndarray,
    aws: tuple[_StrTab, bytes, np.ndarray], suffix: bytes, pcap_names: dict[int, str] | None,
) -> RecordBatch:
    assert _lib is not None
    n = flows.size
    pcap_ptrs, names, base, name_max, pcap_room = _pcap_names(table, flows, pcap_names)
    app_off = np.ascontiguousarray(app_off, np.int64)
    aws_max = int(np.diff(aws[2]).max()) if aws[2].size > 1 else 0
    rows = excerpts.rows if excerpts is not None else None
    exc_b64 = 2 * 4 * ((excerpts.size + 2) // 3) if excerpts is not None else 0
    with_app = int(np.count_nonzero(np.diff(app_off)))
    cap = (n * (LINE_MAX + exc_b64 + REDACTED_MAX + aws_max + len(suffix)) + len(app_text) + 8 * with_app
           + pcap_room + 64)
    out = _scratch(cap)
    ends = np.empty(n, np.int64)
    cid = np.empty((n, CID_BYTES), np.uint8)
    vni = np.empty(n, np.int64)
    ts_start = np.empty(n, np.float64)
    ts_end = np.empty(n, np.float64)
    cols = table.cols
    arrays = [cols[name] for name in COLUMNS]
    assert all(a.flags.c_contiguous for a in arrays)
    ptrs = (ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays])
    if n and (int(flows.min()) < 0 or int(flows.max()) >= table.capacity):  # C reads at these rows
        raise IndexError("encode_records: a flow index is outside the table")
    quoted = orjson.dumps(reason)
    size = _lib.vx_encode_records(
        flows.ctypes.data, n, ptrs, ctypes.byref(_TRANSPORTS[0]), ctypes.byref(_TCP_FLAGS[0]), quoted, len(quoted),
        float("nan") if now is None else now, None if rows is None else rows.ctypes.data,
        0 if excerpts is None else excerpts.size, app_text, app_off.ctypes.data,
        None if redacted is None else redacted.ctypes.data, aws_idx.ctypes.data,
        ctypes.byref(aws[0]), suffix, len(suffix), out.ctypes.data, cap, ends.ctypes.data, cid.ctypes.data,
        vni.ctypes.data, ts_start.ctypes.data, ts_end.ctypes.data, pcap_ptrs,
        None if names is None else ctypes.byref(names[0]), base, name_max,
    )
    if size < 0:  # pragma: no cover - the capacity above is an upper bound
        raise RuntimeError("encode_records: output buffer too small")
    return RecordBatch(out[:size].tobytes(), ends, cid.view(CID_DTYPE).reshape(n), vni, ts_start, ts_end)


PCAP_COLUMNS = ("pc_kept", "pc_skip", "pc_drop", "pc_seq0", "pc_seq1")


def _pcap_names(
    table: FlowTable, flows: np.ndarray, pcap_names: dict[int, str] | None
) -> tuple[Any, tuple[_StrTab, bytes, np.ndarray] | None, int, int, int]:
    """For the ``pcap`` objects (None: records have none): the columns, the names of the files
    the records name (JSON strings, from number ``base``), the longest, and the room they take."""
    if pcap_names is None:
        return None, None, 0, 0, 0
    c = table.cols
    ptrs = (ctypes.c_void_p * len(PCAP_COLUMNS))(*[c[k].ctypes.data for k in PCAP_COLUMNS])
    s0, s1 = c["pc_seq0"][flows], c["pc_seq1"][flows]
    named = s0 > 0
    if not named.any():
        return ptrs, _table([]), 0, 0, 128 * flows.size
    base, top = int(s0[named].min()), int(s1[named].max())
    quoted = [orjson.dumps(pcap_names[q]) for q in range(base, top + 1)]
    name_max = max(map(len, quoted))
    files = int((s1[named] - s0[named] + 1).sum())
    return ptrs, _table(quoted), base, name_max, 128 * flows.size + files * (name_max + 1)


_SCRATCH: list[np.ndarray] = [np.empty(0, np.uint8)]


def _scratch(size: int) -> np.ndarray:
    """The output buffer, kept from one call to the next (its pages stay mapped: a new one each
    call cost a page fault every 4 kB), then copied to the batch's bytes. (Writing straight into
    a bytes object and shrinking it with CPython's _PyBytes_Resize saved the copy, but ctypes
    keeps its own pointer to the object it was given: under AddressSanitizer, whose realloc always
    moves, that pointer was freed memory.) Records are built on the engine's thread only."""
    if _SCRATCH[0].size < size:
        _SCRATCH[0] = np.empty(max(size, 2 * _SCRATCH[0].size), np.uint8)
    return _SCRATCH[0]


def format_floats(values: np.ndarray, round6: bool = False) -> list[bytes]:
    """Each float as the record encoder writes it (``round6``: after Python's ``round(x, 6)``):
    for tests against orjson."""
    assert _lib is not None
    x = np.ascontiguousarray(values, np.float64)
    out = np.empty(x.size * 32 + 8, np.uint8)
    ends = np.empty(x.size, np.int64)
    size = _lib.vx_format_floats(x.ctypes.data, x.size, int(round6), out.ctypes.data, ends.ctypes.data)
    data = out[:size].tobytes()
    starts = [0, *ends[:-1].tolist()]
    return [data[a:b] for a, b in zip(starts, ends.tolist())]

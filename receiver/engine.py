"""The engine: decapsulation, decoding and the flow table behind one call per batch.

    engine = Engine(EngineConfig())
    result = engine.process(batch)      # -> BatchResult(records, decap)
    records = engine.tick(now)          # wall-clock expiry (live service)
    records = engine.finish("shutdown") # every open flow, end_reason as given
    # records: a RecordBatch (receiver.flows.recordbatch): JSON lines and key columns
    engine.counters()                   # {"packets": .., "decoded": .., "<drop reason>": .., ...}

Per batch: decode (numpy fast path, slow path for the rest) -> attribute IP fragments ->
expire by packet time -> key and find flows (numpy hash table) -> count -> excerpts and
application metadata for the few packets that need them (Python, per packet, only there).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import native
from .appmeta import quic
from .appmeta import state as appstate
from .appmeta.state import DNS_TCP_PORTS, DNS_UDP_PORTS, START_BYTES, TCP, UDP, AppState, worth_parsing
from .config.engine import EngineConfig
from .decode import Decoded, Frag, Status, decode
from .decode import cloops as decode_loops
from .decode.apptables import AppTables
from .flows.encode import encode_records
from .flows.excerpts import ExcerptPool
from .flows.keys import Keys, make_keys
from .flows.record import EndReason
from .flows.recordbatch import RecordBatch
from .flows.records import talkers
from .flows.table import FlowTable, Grouped, group_keys
from .packets import I64, B, Decapsulated, PacketBatch
from .pcapkeep.capture import Capture, CaptureMarks
from .pcapkeep.policy import APP_CODE, PacketKeys
from .redact import Redactor

log = logging.getLogger("vxmirror.engine")

APP_FIRST_PACKETS = 4  # payload packets per direction always shown to the application parsers
APP_DONE = 255


def _lut(size: int, members: Iterable[int]) -> B:
    table = np.zeros(size, np.bool_)
    table[list(members)] = True
    return table


# Lookup tables for screening packets in bulk (indexed by port or by first payload byte):
_DNS_PORT = _lut(65536, (53, 5353, 5355))  # later packets on these ports are still shown (DNS)
_APP_UDP_PORT = _lut(65536, DNS_UDP_PORTS)  # worth_parsing: UDP by port
_APP_TCP_PORT = _lut(65536, DNS_TCP_PORTS)  # worth_parsing: TCP by port ...
_APP_START = _lut(256, START_BYTES)  # ... or by the first payload byte (a superset)
# first four payload bytes of an HTTP request or response
HTTP_WORDS = np.array(
    [int.from_bytes(w, "big") for w in (b"GET ", b"POST", b"HEAD", b"PUT ", b"DELE", b"OPTI", b"PATC", b"CONN",
                                        b"TRAC", b"HTTP")],
    np.int64,
)
_HTTP_FIRST = _lut(256, (w >> 24 for w in HTTP_WORDS.tolist()))
APP_TABLES = AppTables(_DNS_PORT, _APP_UDP_PORT, _APP_TCP_PORT, _APP_START, _HTTP_FIRST, HTTP_WORDS)
APP_BAD_LOG_INTERVAL = 60.0  # seconds between log lines about malformed payloads the parsers counted
FRAGMENT_MAP_MAX = 65536
BASE_COUNTERS = ("packets", "bytes", "decoded", "slow_path", "flows_created", "records")
# counters naming packets that did not reach a flow (every packet is either decoded or one of these)
DROP_REASONS = frozenset(
    {s.counter for s in Status if s not in (Status.OK, Status.SLOW_PATH)}
    | {"hash_collision", "flow_table_full", "fragment_without_first"}
)
# counters of things noticed on packets that were still decoded
NOTES = frozenset({"vxlan_reserved_bits", "capture_truncated_records", "capture_bad_records", "capture_bad_blocks",
                   "capture_unsupported_linktype", "capture_gzip_truncated", "capture_gzip_corrupt",
                   "capture_failed_files", "clock_restarts"})


@dataclass
class Prepared:
    """The stateless half of :meth:`Engine.process` for one batch: what depends on the batch and
    the config only, so another thread can compute it ahead (``receiver.capture.readahead``)."""

    decoded: Decoded
    slow: int  # packets that took the slow path
    fragments: bool = False  # some packet is an IP fragment (process() then attributes the later ones)
    # the flow keys of the whole batch and their grouping, when every packet decoded and none is an
    # IP fragment (a later fragment takes its ports from the engine's fragment map)
    keys: Keys | None = None
    grouped: Grouped | None = None
    # per packet, for the application parsers' screening (Engine._app; None: _app screens itself):
    # a packet to show them after its direction's first packets (DNS by port, or the start of an
    # HTTP message), and a packet that may start something they understand (a superset of
    # worth_parsing; on UDP exactly worth_parsing: a DNS port or a QUIC Initial)
    app_later: B | None = None
    app_maybe: B | None = None


@dataclass
class BatchResult:
    records: RecordBatch  # flows that ended (or interim records) while processing the batch
    decap: Decapsulated  # where each packet's inner frame starts, and its VNI (for packet sinks)
    capture: CaptureMarks | None = None  # the pcap sink's frames, planned (with Engine.capture)


class Engine:
    def __init__(
        self,
        config: EngineConfig | None = None,
        labeler: Callable[[int], dict[str, Any] | None] | None = None,
        sensor: str | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        self.labeler = labeler
        self.sensor = sensor
        self.table = FlowTable(self.config.max_flows)
        self.excerpts = ExcerptPool(self.config.excerpt_bytes) if self.config.excerpt_bytes else None
        cfg = self.config
        # credentials masked in what the records show (docs/privacy.md)
        self.redactor = Redactor(cfg.redact_headers, cfg.redact_params) if cfg.redact else None
        self.app: dict[int, AppState | dict[str, Any]] = {}  # per flow: a parser, or its final result
        self._counters: Counter[str] = Counter(dict.fromkeys(BASE_COUNTERS, 0))
        self._fragments: OrderedDict[tuple[int, ...], tuple[int, int]] = OrderedDict()
        self._next_expire: int | None = None  # number of the next grid point of packet time for the timeouts
        self._pending: list[RecordBatch] = []
        # live service only (0: off, the records do not depend on timing): the share of each second
        # the application parsers may take; past it, new flows go without them (``_shed``)
        self.app_budget = 0.0
        self._app_since = time.monotonic()
        self._app_spent = 0.0
        self._app_shed_window = 0
        # the pcap sink's policy and file plan (receiver/pcapkeep): None without one; the
        # records then have no pcap object
        self.capture: Capture | None = None
        self._planned_to = 0  # packets of the current batch planned into files
        self._flow_of = np.zeros(0, np.int64)  # the flow of each packet of the batch (-1: none)
        self._app_bad_logged = -math.inf  # when malformed payloads were last logged (monotonic)

    # -- public API ---------------------------------------------------------------------------
    def process(self, batch: PacketBatch, prepared: Prepared | None = None) -> BatchResult:
        """Take one batch; ``prepared``: ``prepare(batch, self.config)`` if the caller computed it
        already (on another thread: it needs no engine state)."""
        cfg = self.config
        if prepared is None:  # (the screening for the parsers is then done on the packets _app looks at only)
            prepared = prepare(batch, cfg, app_hints=False)
        d, slow = prepared.decoded, prepared.slow
        c = self._counters
        c["packets"] += batch.count
        c["bytes"] += int(batch.wirelen.sum())
        c["slow_path"] += slow
        reserved = int(np.count_nonzero(d.vxlan_reserved))
        if reserved:
            c["vxlan_reserved_bits"] += reserved
        for status, k in enumerate(np.bincount(d.status, minlength=len(Status)).tolist()):
            if k and status != Status.OK:
                c[Status(status).counter] += k
        ok = d.status == Status.OK
        if prepared.fragments and np.any(ok & (d.frag != Frag.NONE)):
            ok = self._attribute_fragments(d, ok)
        # every packet counted (the common case): slices, not gathers, of the columns
        counted: I64 | None = None if ok.all() else np.flatnonzero(ok)
        n = batch.count if counted is None else counted.size
        marks = None
        if self.capture is not None:
            marks = self.capture.begin(batch, d)
            self._planned_to = 0
            self._flow_of = np.full(batch.count, -1, np.int64)
        if n:
            self._count_in_time(batch, d, counted, n, prepared)
        if marks is not None:
            self._plan_through(batch, d, batch.count)
        return BatchResult(self._take_pending(), Decapsulated(d.inner_start, d.vni), marks)

    def _count_in_time(self, batch: PacketBatch, d: Decoded, counted: I64 | None, n: int, prepared: Prepared) -> None:
        """Count the packets (``counted``: their numbers, None: all), with timeouts checked at
        points of a fixed grid of packet time (multiples of ``expire_interval``): before the first
        packet at or past a grid point, flows due by that point end. So the records do not depend
        on where the batches fall (a flow that closed just before a batch boundary and one that
        closed just after it are treated alike)."""
        ts = batch.ts if counted is None else batch.ts[counted]
        cfg = self.config
        grid = cfg.expire_interval
        # a packet this far behind the clock means it went back (another capture, or a packet far in
        # the future had moved it): the clock restarts there rather than wait for the future
        horizon = max(cfg.tcp_idle_timeout, cfg.udp_idle_timeout, cfg.other_idle_timeout, cfg.active_timeout,
                      cfg.tcp_close_linger) + grid
        if self._next_expire is None:
            self._next_expire = self._grid_point(float(ts[0])) + 1
        lo = 0
        while lo < n:
            due = self._next_expire * grid
            ahead = ts[lo:]
            if float(ahead.max()) < due and float(ahead.min()) >= due - horizon:  # (the common case)
                break
            i = lo + int(np.flatnonzero((ahead >= due) | (ahead < due - horizon))[0])
            if i > lo:
                self._count(batch, d, slice(lo, i) if counted is None else counted[lo:i], prepared)
            if self.capture is not None:  # (frames before the timeouts run: the records name their files)
                self._plan_through(batch, d, i if counted is None else int(counted[i]))
            if ts[i] >= due:
                self._expire_through(self._grid_point(float(ts[i])))  # (after it the next point is past ts[i])
            else:
                self._counters["clock_restarts"] += 1
                log.warning("packet time went back %.0f s: timeouts restart from it", due - float(ts[i]))
                self._next_expire = self._grid_point(float(ts[i])) + 1
            lo = i
        rest = (slice(None) if lo == 0 else slice(lo, None)) if counted is None else counted[lo:]
        self._count(batch, d, rest, prepared)

    def _grid_point(self, t: float) -> int:
        """The number of the last grid point at or before packet time ``t`` (the point is that
        number times ``expire_interval``)."""
        grid = self.config.expire_interval
        k = math.floor(t / grid)
        while (k + 1) * grid <= t:  # (the division may round either way)
            k += 1
        while k * grid > t:
            k -= 1
        return k

    def _expire_through(self, last: int) -> None:
        """Run the timeouts at the grid points from the next one through number ``last`` at which
        some flow is due (at the others nothing would end: no packet comes between them)."""
        grid = self.config.expire_interval
        at = self._next_expire
        assert at is not None
        while at <= last:
            self._expire(at * grid)
            due = self._earliest_deadline(at * grid)
            if due == np.inf:
                break
            first = self._grid_point(due)  # the first grid point at or after due
            at = max(at + 1, first if first * grid >= due else first + 1)
        self._next_expire = last + 1  # (not further: packets to come may be due sooner)

    def tick(self, now: float) -> RecordBatch:
        """Expire flows by the wall clock (the live service calls this when traffic is quiet)."""
        self._expire(now)
        self._next_expire = self._grid_point(now) + 1
        return self._take_pending()

    def _take_pending(self) -> RecordBatch:
        """The records made since the last call, as one batch."""
        pending, self._pending = self._pending, []
        return RecordBatch.concat(pending)

    def finish(self, reason: EndReason) -> RecordBatch:
        """Emit every open flow with ``reason`` ("shutdown" or "end_of_input"). Flows whose timeout
        or TCP close linger ran out by the last packet end as that first, so the records do not
        depend on where the batches happened to fall (timeouts are checked once a batch)."""
        live = self.table.active_indices()
        if live.size:
            self._expire(float(self.table.cols["t_last"][live].max()))
        self._emit(self.table.active_indices(), reason, None)
        return self._take_pending()

    def top_talkers(self, n: int = 20) -> list[dict[str, Any]]:
        """The ``n`` open flows that moved the most IP bytes since they started (or since their
        last interim record), largest first: what ``vxmirror top`` shows."""
        live = self.table.active_indices()
        if not live.size or n <= 0:
            return []
        c = self.table.cols
        total = c["ipbytes"][live].sum(axis=1)
        k = min(n, live.size)
        pick = np.argpartition(-total, k - 1)[:k]
        pick = pick[np.argsort(-total[pick], kind="stable")]
        return talkers(self.table, live[pick])

    def counters(self) -> dict[str, int]:
        out = dict(self._counters)
        out["flows_active"] = self.table.n_used
        out["flow_table_capacity"] = self.table.capacity
        return out

    # -- steps --------------------------------------------------------------------------------
    def _count(self, batch: PacketBatch, d: Decoded, sel: I64 | slice, prepared: Prepared) -> None:
        proto, tcpflags, ts = d.proto[sel], d.tcpflags[sel], batch.ts[sel]
        keys, grouped = prepared.keys, prepared.grouped
        if keys is None or not isinstance(sel, slice):
            keys, grouped = _keys(d, sel), None
        elif sel != slice(None):  # a part of the batch (split at a grid point of the timeouts)
            keys, grouped = keys.take(sel), None
        flow, new, drops, grouping = self.table.find_or_add(keys, ts, tcpflags, self._evict, grouped)
        for k, v in drops.items():
            if v:
                self._counters[k] += v
                log.warning("dropped %d packets: %s", v, k)
        self._counters["flows_created"] += int(new.size)
        direction = keys.direction
        positions = np.arange(batch.count)[sel]  # packet numbers in the batch
        placed = flow >= 0
        if not placed.all():
            good = np.flatnonzero(placed)
            flow, direction, ts, proto, tcpflags = flow[good], direction[good], ts[good], proto[good], tcpflags[good]
            positions = positions[good]
            sel = positions
        idx = positions
        self._counters["decoded"] += int(idx.size)
        if self.capture is not None:
            self._flow_of[idx] = flow
        self.table.account(
            flow, direction, ts, d.iplen[sel], d.pay_len[sel], tcpflags, proto,
            d.truncated[sel], d.frag[sel] != Frag.NONE, d.tcpseq[sel], d.tcpack[sel], grouping,
        )
        has_payload = d.pay_cap[sel] > 0
        if self.excerpts is not None and has_payload.any():
            self._excerpts(batch, d, idx, flow, direction, has_payload)
        if self.config.app_metadata and has_payload.any():
            if not self.app_budget:
                self._app(batch, d, idx, flow, direction, has_payload, prepared)
            else:
                if self._app_over_budget() and new.size:
                    self._shed(new, flow[has_payload])
                t0 = time.perf_counter()
                self._app(batch, d, idx, flow, direction, has_payload, prepared)
                self._app_spent += time.perf_counter() - t0
        if self.capture is not None:
            self._capture(d, idx, flow, direction)

    def _capture(self, d: Decoded, idx: I64, flow: I64, direction: I64) -> None:
        """The capture policy for the counted packets ``idx``: which are written (the flow's
        frames so far in their direction under the limits of the rule that matches now), or
        cut to their headers; counted per flow (written or not is final once planned)."""
        cap = self.capture
        assert cap is not None and cap.marks is not None
        policy = cap.policy
        if not policy.rules:  # (every frame: nothing to count)
            return
        c = self.table.cols
        key = flow * 2 + direction
        pay = d.pay_len[idx]
        # each packet's rank and payload before it in its flow's direction, in this part and before
        rank, before, order, starts, sorted_pay = _runs(key, pay)
        assert before is not None
        n = key.size
        uk = key[order[starts]]
        pk = c["cap_pk"].reshape(-1)
        by = c["cap_by"].reshape(-1)
        keys = PacketKeys(d.vni[idx], d.proto[idx], d.src_hi[idx], d.src_lo[idx], d.dst_hi[idx], d.dst_lo[idx],
                          d.sport[idx], d.dport[idx], c["cap_app"][flow])
        plim, blim = policy.limits(keys)
        keep = (pk[key] + rank < plim) & (by[key] + before < blim)
        pk[uk] += np.diff(np.append(starts, n)).astype(pk.dtype)
        by[uk] += np.add.reduceat(sorted_pay, starts).astype(by.dtype)
        if keep.all():
            return
        marks = cap.marks
        over = idx[~keep]
        if cap.headers_past_limit:
            marks.cut[over] = d.pay_off[over]
        else:
            marks.keep[over] = False

    def _plan_through(self, batch: PacketBatch, d: Decoded, end: int) -> None:
        """Plan into files the frames of packets up to ``end`` (not planned yet), and count them
        per flow: written (pcap_packets), skipped by the policy, dropped (the writer had no room)."""
        cap = self.capture
        assert cap is not None and cap.marks is not None
        lo, self._planned_to = self._planned_to, max(self._planned_to, end)
        if end <= lo:
            return
        marks = cap.marks
        pos = cap.plan_range(batch, d, lo, end, float(batch.ts[end - 1]))
        flows = self._flow_of[lo:end]
        c = self.table.cols
        inflow = flows >= 0
        if not inflow.any():
            return
        at = np.flatnonzero(inflow)
        f = flows[at]
        written = np.zeros(end - lo, bool)
        written[pos - lo] = True
        w = written[at]
        if not cap.open:
            _add_counts(c["pc_drop"], f)
            return
        if not w.all():
            _add_counts(c["pc_skip"], f[~w])
            if not w.any():
                return
            f, at = f[w], at[w]
        seq = marks.seq[lo + at]
        uf, first, counts = np.unique(f, return_index=True, return_counts=True)
        c["pc_kept"][uf] += counts.astype(np.uint32)
        s0 = c["pc_seq0"][uf]
        if seq[0] == seq[-1]:  # (the common case: every frame of the range in one file)
            c["pc_seq0"][uf] = np.where(s0 == 0, seq[0], s0)
            c["pc_seq1"][uf] = seq[0]
            return
        c["pc_seq0"][uf] = np.where(s0 == 0, seq[first], s0)
        rev_u, rev_first = np.unique(f[::-1], return_index=True)
        c["pc_seq1"][rev_u] = seq[::-1][rev_first]

    def _app_over_budget(self) -> bool:
        """Whether the application parsers took their share (``app_budget``) of the current second."""
        now = time.monotonic()
        if now - self._app_since >= 1.0:
            if self._app_shed_window:
                log.warning(
                    "application parsers over their time budget (%.0f %% of a second): %d new flows got no "
                    "application metadata (app_shed_flows)", 100 * self.app_budget, self._app_shed_window,
                )
            self._app_since, self._app_spent, self._app_shed_window = now, 0.0, 0
        return self._app_spent > self.app_budget

    def _shed(self, new: I64, with_payload: I64) -> None:
        """New flows get no application parsers (as if every direction had shown its first
        packets): counted, when they carry payload, as ``app_shed_flows``."""
        self.table.cols["app_pkts"][new] = APP_DONE
        shed = int(np.count_nonzero(np.isin(new, with_payload)))
        if shed:
            self._counters["app_shed_flows"] += shed
            self._app_shed_window += shed

    def _excerpts(self, batch: PacketBatch, d: Decoded, idx: I64, flow: I64, direction: I64, pay: Any) -> None:
        assert self.excerpts is not None
        size = self.config.excerpt_bytes
        exc = self.table.cols["exc_len"]
        key = flow * 2 + direction
        have = exc.reshape(-1)[key]
        cand = np.flatnonzero(pay & (have < size))
        if not cand.size:
            return
        # only packets that still add bytes: those before the excerpt fills, in arrival order (so
        # every packet but the last of a direction is taken whole)
        ck, cap = key[cand], d.pay_cap[idx[cand]]
        rank, before = _rank_within(ck, cap)
        assert before is not None
        at = have[cand] + before  # where each packet's bytes go in its excerpt
        keep = at < size
        need, rank, cap, at = cand[keep], rank[keep], cap[keep], at[keep]
        n = np.minimum(cap, size - at)
        end = at + n  # each direction's excerpt length after the packet
        f, dr = flow[need], direction[need]
        # a pool row for each direction that has none yet, in order of first need (as one by one)
        row_of = self.table.cols["exc_row"]
        row = row_of[f, dr].astype(np.int64) - 1
        first = np.flatnonzero((row < 0) & (rank == 0))
        if first.size:
            rows = self.excerpts.acquire_many(first.size)
            row_of[f[first], dr[first]] = rows + 1
            row = row_of[f, dr].astype(np.int64) - 1
        # copy the bytes at once. A direction's first packet here (at 0) writes a whole row from its
        # payload on (bytes past its own are never read: exc_len bounds every excerpt, and the
        # direction's later packets overwrite them next); later packets are copied byte by byte.
        buf, pool_rows, off = batch.buf, self.excerpts.rows, d.pay_off[idx[need]]
        whole = (at == 0) & (off <= buf.size - size)
        if whole.any():
            windows = as_strided(buf, (buf.size - size + 1, size), (buf.strides[0], buf.strides[0]), writeable=False)
            pool_rows[row[whole]] = windows[off[whole]]
            part = ~whole
            row, at, n, off = row[part], at[part], n[part], off[part]
        if n.size:
            inner = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
            pool_rows[np.repeat(row, n), np.repeat(at, n) + inner] = buf[np.repeat(off, n) + inner]
        np.maximum.at(exc, (f, dr), end.astype(exc.dtype))

    def _app(
        self, batch: PacketBatch, d: Decoded, idx: I64, flow: I64, direction: I64, pay: Any, prepared: Prepared
    ) -> None:
        seen = self.table.cols["app_pkts"]
        key = flow * 2 + direction
        count = seen.reshape(-1)[key]
        live = np.flatnonzero(pay & (count < APP_DONE))  # flows whose parsers may still learn something
        if not live.size:
            return
        live_count = count[live]
        young = live_count < APP_FIRST_PACKETS
        # the first payload packets of each direction, counting this batch's in arrival order
        want = np.zeros(live.size, np.bool_)
        if young.any():
            y = np.flatnonzero(young)
            rank, _ = _rank_within(key[live[y]])
            want[y] = live_count[y] + rank < APP_FIRST_PACKETS
        # later packets: only those that start like an HTTP message, or DNS (by port)
        rest = np.flatnonzero(~want)
        if rest.size:
            rp = idx[live[rest]]
            want[rest] = prepared.app_later[rp] if prepared.app_later is not None else _app_later(batch, d, rp)
        # and the segments that may continue a message head the parser gathers (a request head
        # over several segments): shown only if it still gathers when they come
        heading = self._head_segments(batch, d, idx, key, live, want)
        want |= heading
        sel = live[want]
        if not sel.size:
            return
        heading = heading[want]
        p = idx[sel]
        f_sel = flow[sel]
        maybe = prepared.app_maybe[p] if prepared.app_maybe is not None else _app_maybe(batch, d, p)
        parsing = self.table.cols["app_parser"]
        opaque = _only_counted(maybe, parsing[f_sel], f_sel) & ~heading
        if opaque.any():
            _count_shown(seen, key[sel[opaque]])
            keep = ~opaque
            sel, p, f_sel, maybe, heading = sel[keep], p[keep], f_sel[keep], maybe[keep], heading[keep]
            if not sel.size:
                return
        # flow by flow (each flow's packets in arrival order), the flows by service port (the lower
        # port): a flow's parser is looked up once and stays in the cache while its packets are fed,
        # and flows of one kind follow each other (the same parser code, warm: 10-15 % less time than
        # in arrival order). Parsers share nothing: the order of the flows does not matter.
        by_flow = _stable_order(f_sel)
        service = np.minimum(d.sport[p], d.dport[p])[by_flow].astype(np.uint16)
        by_flow = by_flow[np.argsort(service, kind="stable")]  # (a radix sort: 16-bit keys)
        sel, p, f_sel, maybe, heading = sel[by_flow], p[by_flow], f_sel[by_flow], maybe[by_flow], heading[by_flow]
        k_sel = key[sel]
        # the direction as the parser sees it (0: originator to responder)
        dr = (k_sel & 1) ^ self.table.cols["orig"][f_sel]
        mv = batch.buf.data  # a memoryview: slices without numpy objects
        app, max_items, new_state = self.app, self.config.app_max_items, AppState
        n_seen: dict[int, int] = {}  # flow * 2 + direction -> payload packets shown, updated here
        dead: set[int] = set()  # flow * 2 + direction not shown any more in this batch
        started: list[int] = []  # flows given a parser here
        ended: list[int] = []  # flows whose parser finished here
        fed: dict[int, AppState] = {}  # flows fed here: their parser
        bad: list[str] = []  # counters of malformed payloads (QUIC Initials) the parsers named
        at = -1  # the flow of the packet before
        state: AppState | dict[str, Any] | None = None
        for f, k, c0, r, off_, cap, pr, sp, dp, mb, hd in zip(
            f_sel.tolist(), k_sel.tolist(), count[sel].tolist(), dr.tolist(), d.pay_off[p].tolist(),
            d.pay_cap[p].tolist(), d.proto[p].tolist(), d.sport[p].tolist(), d.dport[p].tolist(), maybe.tolist(),
            heading.tolist(),
        ):
            if k in dead:  # done earlier in this batch (the flow, or this direction)
                continue
            if f != at:
                at, state = f, app.get(f)
            if not isinstance(state, AppState):  # (None: the flow has no parser)
                if hd:
                    continue  # no head open there: not shown
                # (on UDP ``maybe`` is worth_parsing: a DNS port or a QUIC Initial)
                if not mb or (pr != UDP and not worth_parsing(payload := mv[off_ : off_ + cap].tobytes(), pr, sp, dp)):
                    # opaque payload: after the first few packets this direction is not looked at again
                    c = n_seen.get(k, c0) + 1
                    if c < APP_FIRST_PACKETS:
                        n_seen[k] = c
                    else:
                        dead.add(k)
                    continue
                if pr == UDP:
                    payload = mv[off_ : off_ + cap].tobytes()
                state = app[f] = new_state(max_items)
                started.append(f)
            elif hd and not state.gathering(r):
                continue  # no head open there (any more): not shown
            elif not mb and state.ignores(r):
                # what the parser would ignore (an HTTP body) is counted as shown, not copied
                n_seen[k] = n_seen.get(k, c0) + 1
                continue
            else:
                payload = mv[off_ : off_ + cap].tobytes()
            if (name := state.feed(r, payload, pr, sp, dp)) is not None:
                bad.append(name)
            fed[f] = state
            if state.wants_more:
                n_seen[k] = n_seen.get(k, c0) + 1
            else:
                # nothing more to learn: keep only the result (or nothing), not the parser's buffers
                dead.add(k)
                dead.add(k ^ 1)
                ended.append(f)
                meta = state.to_record(copy=False)  # the parser is dropped here
                if meta:
                    app[f] = meta
                else:
                    del app[f]
        if bad:
            self._count_bad(bad)
        seen_flat = seen.reshape(-1)
        if n_seen:  # (a direction's count stops below APP_DONE while its parser looks)
            seen_flat[np.fromiter(n_seen.keys(), np.int64, len(n_seen))] = np.minimum(
                np.fromiter(n_seen.values(), np.int64, len(n_seen)), APP_DONE - 1)
        if dead:  # (directions that showed their first packets, opaque; and those of finished parsers)
            seen_flat[np.fromiter(dead, np.int64, len(dead))] = APP_DONE
        if started:
            parsing[np.array(started, np.int64)] = True
        if ended:
            parsing[np.array(ended, np.int64)] = False
        # which directions gather a head now (their next segments are shown: _head_segments)
        if fed:
            gathering = self.table.cols["app_head"]
            gathering[np.fromiter(fed, np.int64, len(fed))] = False
            for f, parser in fed.items():  # (one that finished gathers nothing)
                h0, h1 = parser.heads()
                if h0 or h1:
                    gathering[f] = (h1, h0) if self.table.cols["orig"][f] else (h0, h1)
            if self.capture is not None and self.capture.policy.uses_app:  # (for rules on app)
                cap_app = self.table.cols["cap_app"]
                for f, parser in fed.items():
                    if (kind := parser.kind) is not None:
                        cap_app[f] = APP_CODE.get(kind, 0)

    def _count_bad(self, names: list[str]) -> None:
        """Count the malformed payloads the parsers named; log the totals at most once a minute."""
        self._counters.update(names)
        now = time.monotonic()
        if now - self._app_bad_logged >= APP_BAD_LOG_INTERVAL:
            self._app_bad_logged = now
            totals = {k: self._counters[k] for k in quic.COUNTERS if self._counters[k]}
            log.warning("application parsers: malformed payloads, counted so far: %s", totals)

    def _head_segments(self, batch: PacketBatch, d: Decoded, idx: I64, key: I64, live: I64, want: B) -> B:
        """Of the ``live`` packets not in ``want``: those that may continue a message head the
        parser gathers, up to the number of segments it gathers for one: after a packet shown in
        this batch that may open one (a TLS hello, an HTTP request, a first byte of one), or in a
        direction that gathered one when the batch began. Which of them continue a head is for
        the loop to see; with a packet a batch, it is the gathering state alone."""
        out = np.zeros(live.size, np.bool_)
        w = np.flatnonzero(want)
        wp = idx[live[w]]
        # what may open a head: a TCP payload that starts like a TLS record or an HTTP message
        starts = w[(d.proto[wp] == TCP) & _APP_START[batch.buf[d.pay_off[wp]]]]
        lk = key[live]
        open_before = self.table.cols["app_head"].reshape(-1)[lk]
        if not starts.size and not open_before.any():
            return out
        # the directions with a start or a head open (flow * 2 + direction: bounded by the table's
        # size, a lookup table is quicker than sorting)
        m = np.flatnonzero(np.isin(lk, np.concatenate((lk[starts], lk[open_before])), kind="table"))
        start = np.zeros(live.size, np.bool_)
        start[starts] = True
        out[m] = _segment_runs(lk[m], start[m], open_before[m], appstate.HEAD_SEGMENTS)
        return out & ~want

    def _attribute_fragments(self, d: Decoded, ok: Any) -> Any:
        """Give later IP fragments the ports of their first fragment (same VNI, addresses, protocol, ID)."""
        frags = self._fragments
        firsts = np.flatnonzero(ok & (d.frag == Frag.FIRST))
        laters = np.flatnonzero(ok & (d.frag == Frag.LATER))
        for i in firsts.tolist():
            key = _fragment_key(d, i)
            frags[key] = (int(d.sport[i]), int(d.dport[i]))
            frags.move_to_end(key)
            if len(frags) > FRAGMENT_MAP_MAX:
                frags.popitem(last=False)
        lost = 0
        for i in laters.tolist():
            ports = frags.get(_fragment_key(d, i))
            if ports is None:
                ok[i] = False
                lost += 1
            else:
                d.sport[i], d.dport[i] = ports
        if lost:
            self._counters["fragment_without_first"] += lost
            log.warning("dropped %d IP fragments whose first fragment was not seen", lost)
        return ok

    def _deadlines(self, live: I64) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per open flow ``live``, in packet time: when it is idle, when its TCP close linger ends
        (inf: not closed), and from when until when an interim record cuts it: once the record
        spans the active timeout, while the flow is active (a packet within the last
        expire_interval). A flow that went quiet is not cut: it ends later as idle, whole, rather
        than as an interim record and an empty one."""
        c, cfg = self.table.cols, self.config
        proto = c["kproto"][live] & 0xFF
        idle_limit = np.where(proto == 6, cfg.tcp_idle_timeout,
                              np.where(proto == 17, cfg.udp_idle_timeout, cfg.other_idle_timeout))
        t_last, close_ts = c["t_last"][live], c["close_ts"][live]
        closed_at = np.where(close_ts > 0, close_ts + cfg.tcp_close_linger, np.inf)
        return t_last + idle_limit, closed_at, c["seg_start"][live] + cfg.active_timeout, t_last + cfg.expire_interval

    def _earliest_deadline(self, after: float) -> float:
        """The packet time at which the next open flow is due after ``after`` (idle, closed, or an
        interim record; inf: none, until packets come): an interim window that closed by then
        stays closed."""
        live = self.table.active_indices()
        if not live.size:
            return float(np.inf)
        idle_at, closed_at, cut_from, cut_until = self._deadlines(live)
        cut = np.where((cut_from <= cut_until) & (cut_until > after), np.maximum(cut_from, after), np.inf)
        return float(min(idle_at.min(), closed_at.min(), cut.min()))

    def _expire(self, now: float) -> None:
        live = self.table.active_indices()
        if not live.size:
            return
        idle_at, closed_at, cut_from, cut_until = self._deadlines(live)
        idle = idle_at <= now
        closed = ~idle & (closed_at <= now)
        active = ~idle & ~closed & (cut_from <= now) & (now <= cut_until)
        self._emit(live[idle], "idle", now)
        self._emit(live[closed], "tcp_close", now)
        self._emit(live[active], "active", now)

    def _evict(self, flows: I64) -> None:
        self._emit(flows, "evicted", None)

    def _emit(self, flows: I64, reason: EndReason, now: float | None) -> None:
        if not flows.size:
            return
        flows = flows[np.argsort(self.table.cols["seg_start"][flows], kind="stable")]
        self._pending.append(encode_records(
            self.table, flows, reason, now, self.excerpts, self.app, self.labeler, self.sensor, self.redactor,
            None if self.capture is None else self.capture.plan.names,
        ))
        self._counters[f"flows_{reason}"] += int(flows.size)
        self._counters["records"] += int(flows.size)
        c = self.table.cols
        if reason == "active":
            for k in ("pkts", "ipbytes", "paybytes", "pc_kept", "pc_skip", "pc_drop", "pc_seq0", "pc_seq1"):
                c[k][flows] = 0
            c["seg_start"][flows] = now
            c["segments"][flows] += 1
            return
        if self.app:  # (a loop in C: map over the flows)
            deque(map(self.app.pop, flows.tolist(), itertools.repeat(None)), maxlen=0)
        if self.excerpts is not None:
            rows = c["exc_row"][flows].reshape(-1).astype(np.int64)
            self.excerpts.release(rows[rows > 0] - 1)
        self.table.release(flows)


def prepare(batch: PacketBatch, config: EngineConfig, app_hints: bool = True) -> Prepared:
    """The part of :meth:`Engine.process` that needs no engine state: a function of the batch and
    the config only, safe on another thread (``receiver.capture.readahead``). ``app_hints``: screen
    every packet for the application parsers (worth it ahead, on another thread; on the engine's
    own thread ``_app`` screens only the packets of flows it still looks at: measured 8 % faster)."""
    return prepare_decoded(batch, *decode(batch, config), config, app_hints)


def prepare_decoded(
    batch: PacketBatch, d: Decoded, slow: int, config: EngineConfig, app_hints: bool = True
) -> Prepared:
    """The rest of :func:`prepare` once the batch is decoded."""
    p = Prepared(d, slow, fragments=bool(batch.count and (d.frag != Frag.NONE).any()))
    if not batch.count or p.fragments:  # fragments take their ports in process()
        return p
    if (d.status == Status.OK).all():
        p.keys = Keys(d.vni, **decode_loops.flow_keys(d)) if native.available() else _keys(d, slice(None))
        p.grouped = group_keys(p.keys)
    if app_hints and config.app_metadata and native.available():  # (the numpy twins screen in _app)
        t = APP_TABLES
        p.app_later, p.app_maybe = decode_loops.app_hints(
            batch.buf, d, t.dns_port, t.udp_port, t.tcp_port, t.start_byte, t.http_first, t.words
        )
    return p


def _keys(d: Decoded, sel: I64 | slice) -> Keys:
    """The flow keys of the packets ``sel``."""
    v6 = (d.ipver[sel] == 6).astype(np.int64)
    return make_keys(
        d.vni[sel], d.proto[sel] + 256 * v6, d.src_hi[sel], d.src_lo[sel], d.sport[sel],
        d.dst_hi[sel], d.dst_lo[sel], d.dport[sel],
    )


def _app_later(batch: PacketBatch, d: Decoded, p: I64) -> B:
    """Of the payload packets ``p``: those shown to the parsers even after their direction's first
    packets: DNS (by port), or the start of an HTTP message."""
    sport, dport = d.sport[p], d.dport[p]
    later = _DNS_PORT[sport] | _DNS_PORT[dport]
    o = d.pay_off[p]
    b = batch.buf
    # the first byte screens out almost everything; the four-byte word is read for the rest
    http = np.flatnonzero(_HTTP_FIRST[b[o]] & (d.pay_cap[p] >= 4))
    if http.size:
        oh = o[http]
        last = b.shape[0] - 1
        word = (
            (b[oh].astype(np.int64) << 24) | (b[np.minimum(oh + 1, last)].astype(np.int64) << 16)
            | (b[np.minimum(oh + 2, last)].astype(np.int64) << 8) | b[np.minimum(oh + 3, last)]
        )
        later[http] |= np.isin(word, HTTP_WORDS)
    return later


def _segment_runs(key: I64, start: B, open_before: B, span: int) -> B:
    """For packets in arrival order with their direction ``key``: those among the ``span`` packets
    of their direction after a ``start`` one, or among its first ``span`` when ``open_before``
    (a message head was open in that direction before these packets)."""
    n = key.size
    order, group_start = _grouped_order(key)
    pos = np.arange(n)
    # the position (in sorted order) of the latest start at or before each packet of its direction
    last = np.where(start[order], pos, -1)
    np.maximum.accumulate(last, out=last)
    after_start = (last >= group_start) & (pos - last >= 1) & (pos - last <= span)
    at_first = (last < group_start) & open_before[order] & (pos - group_start < span)
    out = np.empty(n, np.bool_)
    out[order] = after_start | at_first
    return out


def _app_maybe(batch: PacketBatch, d: Decoded, p: I64) -> B:
    """Of the payload packets ``p``: a superset of those passing worth_parsing() (the others need no
    bytes object while their flow has no parser); on UDP exactly those."""
    proto, sport, dport = d.proto[p], d.sport[p], d.dport[p]
    o = d.pay_off[p]
    b = batch.buf
    first = b[o]
    maybe = np.where(
        proto == TCP,
        _APP_TCP_PORT[sport] | _APP_TCP_PORT[dport] | _APP_START[first],
        (proto == UDP) & (_APP_UDP_PORT[sport] | _APP_UDP_PORT[dport]),
    )
    # a QUIC Initial (quic.is_initial): the first byte (long header, fixed bit, type bits 00 or 0x,
    # those of v1's and v2's Initial) screens out most other payloads, the rest is read for those only
    q = np.flatnonzero((first & 0xE0) == 0xC0)
    if q.size:
        q = q[(proto[q] == UDP) & ~maybe[q] & (d.pay_cap[p[q]] >= 7)]
    if q.size:  # (7 bytes there: the version is within the buffer)
        words = np.ndarray((b.size - 3,), ">u4", b, 0, (1,))  # the big-endian word at each byte (unaligned)
        version, kind = words[o[q] + 1], first[q] & 0x30
        maybe[q] = ((version == quic.V1) & (kind == quic.INITIAL_TYPE[quic.V1])) | (
            (version == quic.V2) & (kind == quic.INITIAL_TYPE[quic.V2]))
    return maybe


def _only_counted(maybe: B, parsing: B, flows: I64) -> B:
    """Of the packets selected for the parsers: those the per-packet loop would only count, found
    in bulk: packets of flows that have no parser and no packet here that may start one (a parser
    started by a packet of this batch sees the flow's later packets)."""
    opaque = ~maybe & ~parsing
    if opaque.any() and maybe.any():
        opaque &= ~np.isin(flows, flows[maybe], kind="table")  # (flow numbers: a lookup table beats sorting)
    return opaque


def _count_shown(seen: np.ndarray, keys: I64) -> None:
    """Count payload packets of parser-less flows as shown (``keys``: flow * 2 + direction, one per
    packet): as the per-packet loop does, a direction's count reaching APP_FIRST_PACKETS ends it."""
    uk, n = np.unique(keys, return_counts=True)
    c = seen[uk >> 1, uk & 1].astype(np.int64) + n
    seen[uk >> 1, uk & 1] = np.where(c < APP_FIRST_PACKETS, c, APP_DONE)


def _add_counts(column: np.ndarray, rows: I64) -> None:
    """``column[r] += 1`` for each occurrence of ``r`` in ``rows``."""
    uf, counts = np.unique(rows, return_counts=True)
    column[uf] += counts.astype(column.dtype)


def _stable_order(key: I64) -> I64:
    """``np.argsort(key, kind="stable")`` for non-negative keys, by 16-bit radix passes where they fit."""
    top = int(key.max()) if key.size else 0
    if top < 1 << 16:
        return np.argsort(key.astype(np.uint16), kind="stable")
    if top < 1 << 32:
        order = np.argsort((key & 0xFFFF).astype(np.uint16), kind="stable")
        return order[np.argsort((key[order] >> 16).astype(np.uint16), kind="stable")]
    return np.argsort(key, kind="stable")


def _grouped_order(key: I64) -> tuple[I64, I64]:
    """The stable order of (non-negative) ``key`` and, per element in that order, where its run of
    equal keys starts."""
    order = _stable_order(key)
    k = key[order]
    group_start = np.zeros(key.size, np.int64)
    breaks = np.flatnonzero(k[1:] != k[:-1]) + 1
    group_start[breaks] = breaks
    np.maximum.accumulate(group_start, out=group_start)
    return order, group_start


def _rank_within(key: I64, values: I64 | None = None) -> tuple[I64, I64 | None]:
    """For each element: its rank among equal (non-negative) keys, in order, and the sum of ``values``
    before it (None without ``values``)."""
    rank, before, _, _, _ = _runs(key, values)
    return rank, before


def _runs(key: I64, values: I64 | None = None) -> tuple[I64, I64 | None, I64, I64, I64]:
    """``_rank_within``'s rank and sums before, plus the runs of equal keys they come from: the
    stable order, where each run starts in it, and ``values`` in that order (for totals per key)."""
    n = key.size
    order, group_start = _grouped_order(key)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - group_start
    starts = np.flatnonzero(rank[order] == 0)
    if values is None:
        return rank, None, order, starts, np.zeros(0, np.int64)
    v = values[order].astype(np.int64)
    csum = np.cumsum(v)
    csum -= v
    before = np.empty(n, np.int64)
    before[order] = csum - csum[group_start]
    return rank, before, order, starts, v


def _fragment_key(d: Decoded, i: int) -> tuple[int, ...]:
    return (
        int(d.vni[i]), int(d.ipver[i]), int(d.proto[i]), int(d.ipid[i]),
        int(d.src_hi[i]), int(d.src_lo[i]), int(d.dst_hi[i]), int(d.dst_lo[i]),
    )

"""The flow table: columns of per-flow state in numpy arrays, found through an open-addressing hash.

Nothing here loops over packets in Python. For each batch the packets' keys are reduced to the
distinct flows in it (``np.unique`` on the 64-bit key hash), those are looked up in the hash
index together (linear probing, one numpy step per probe round), new flows are inserted
together, and the per-direction counters are added with ``bincount`` over (flow, direction).

State is kept per *endpoint* direction (0: A->B, 1: B->A, see ``flows.keys``); ``orig`` says
which endpoint is the originator, so a flip is one assignment.

Memory per flow is the columns below plus 8 bytes of hash index (load factor <= 1/2): see
``bytes_per_flow``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .. import native
from ..decode import tcp
from ..packets import F64, I64
from . import cloops
from .history import (
    ACK_FIRST,
    L_ACK,
    L_DATA,
    L_FIN,
    L_RST,
    L_SYN,
    L_SYNACK,
    MASK32,
    WINDOW,
    add_codes,
)
from .keys import Keys

EVICT_FRACTION = 64  # at the flow cap, at least 1/64 of the table is evicted at a time
EMPTY = -1
TOMBSTONE = -2

# History letters (Zeek's conn.log `history`), each recorded once per direction, in order.
LETTERS = "SHADFR"  # (letter numbers L_SYN ... L_RST: flows.history)

# column name -> (dtype, values per flow: 1, or 2 per direction, or one per history code)
COLUMNS: dict[str, tuple[str, int]] = {
    "khash": ("u8", 1),
    "kvni": ("i4", 1),
    "kproto": ("u2", 1),
    "a_hi": ("u8", 1),
    "a_lo": ("u8", 1),
    "b_hi": ("u8", 1),
    "b_lo": ("u8", 1),
    "a_port": ("u2", 1),
    "b_port": ("u2", 1),
    "used": ("?", 1),
    "slot": ("i4", 1),
    "orig": ("u1", 1),  # 0: endpoint A is the originator
    "flipped": ("?", 1),
    "pkts": ("u4", 2),
    "ipbytes": ("u8", 2),
    "paybytes": ("u8", 2),
    "tflags": ("u1", 2),
    "t_last": ("f8", 1),
    "seg_start": ("f8", 1),  # start of the current record (interim records restart it)
    "close_ts": ("f8", 1),  # when FIN both ways or RST was seen (0: open)
    "hist": ("u8", 1),  # up to 12 history codes, 4 bits each, in order
    "hbits": ("u2", 1),  # which (letter, direction) codes are in hist
    # per history code the TCP clock (seq + ack) of its packet, for placing late packets' codes
    # (0: none; the two SYN codes' slots hold each side's first sequence number: flows.history)
    "hkey": ("u4", 12),
    "trunc": ("?", 1),
    "frags": ("u4", 1),
    "segments": ("u2", 1),  # records emitted so far for this flow
    "exc_len": ("u2", 2),  # excerpt bytes kept so far
    "exc_row": ("u4", 2),  # excerpt pool row + 1 (0: none yet)
    "app_pkts": ("u1", 2),  # payload packets shown to the application parsers
    "app_parser": ("?", 1),  # the flow has an application parser (engine.app holds its AppState)
    "app_head": ("?", 2),  # its parser gathers a message head's segments in this direction
    # packet capture (receiver/pcapkeep; with a pcap sink only)
    "cap_pk": ("u4", 2),  # packets seen per direction since the flow started (the policy's count)
    "cap_by": ("u8", 2),  # payload bytes likewise
    "cap_app": ("u1", 1),  # what the engine recognised (pcapkeep.policy.APPS), for rules on app
    "pc_kept": ("u4", 1),  # frames planned into a pcap file (this record's)
    "pc_skip": ("u4", 1),  # frames the policy did not write
    "pc_drop": ("u4", 1),  # frames dropped: the pcap writer's queue was full
    "pc_seq0": ("i4", 1),  # first and last file numbers holding this record's frames (0: none)
    "pc_seq1": ("i4", 1),
}


# what _allocate sets for a new flow (and _insert: "slot"); every other column starts at zero
_SET_ON_ALLOCATE = frozenset(
    ("khash", "kvni", "kproto", "a_hi", "a_lo", "b_hi", "b_lo", "a_port", "b_port", "used", "orig", "t_last",
     "seg_start", "slot")
)
_ZEROED = tuple(name for name in COLUMNS if name not in _SET_ON_ALLOCATE)


def _next_pow2(n: int) -> int:
    return 1 << max(4, (n - 1).bit_length())


class FlowTable:
    def __init__(self, max_flows: int, initial: int = 4096) -> None:
        self.max_flows = max_flows
        self.capacity = 0
        self.n_used = 0
        self.tombstones = 0
        self.cols: dict[str, np.ndarray] = {}
        self.slots = np.zeros(0, np.int32)
        self.free = np.zeros(0, np.int32)
        self.n_free = 0
        self._resize(min(initial, max_flows))

    # -- storage ------------------------------------------------------------------------------
    def __getattr__(self, name: str) -> np.ndarray:
        cols = self.__dict__.get("cols")
        if cols is not None and name in cols:
            return cols[name]
        raise AttributeError(name)

    def _resize(self, capacity: int) -> None:
        old = self.capacity
        for name, (dtype, width) in COLUMNS.items():
            shape = (capacity, width) if width > 1 else (capacity,)
            a = np.zeros(shape, dtype)
            if old:
                a[:old] = self.cols[name]
            self.cols[name] = a
        free = np.zeros(capacity, np.int32)
        free[: self.n_free] = self.free[: self.n_free]
        new = np.arange(capacity - 1, old - 1, -1, dtype=np.int32)  # pop order: low indices first
        free[self.n_free : self.n_free + new.size] = new
        self.free = free
        self.n_free += new.size
        self.capacity = capacity
        self._rehash(_next_pow2(2 * capacity))

    def _rehash(self, size: int) -> None:
        self.slots = np.full(size, EMPTY, np.int32)
        self.tombstones = 0
        live = np.flatnonzero(self.cols["used"])
        if live.size:
            self._insert(live, self.cols["khash"][live])

    def bytes_per_flow(self) -> float:
        """Bytes of table state per flow slot (columns, hash index, free list)."""
        total = sum(a.nbytes for a in self.cols.values()) + self.slots.nbytes + self.free.nbytes
        return total / self.capacity

    def active_indices(self) -> I64:
        return np.flatnonzero(self.cols["used"])

    # -- hash index ---------------------------------------------------------------------------
    def _lookup(self, h: np.ndarray) -> I64:
        """Flow index of each hash, or -1."""
        if native.available():
            return cloops.lookup(self.slots, self.cols["khash"], h)
        mask = np.uint64(self.slots.size - 1)
        pos = (h & mask).astype(np.int64)
        result = np.full(h.size, -1, np.int64)
        active = np.arange(h.size)
        khash = self.cols["khash"]
        for _ in range(self.slots.size):
            s = self.slots[pos[active]].astype(np.int64)
            match = (s >= 0) & (khash[np.maximum(s, 0)] == h[active])
            result[active[match]] = s[match]
            active = active[~(match | (s == EMPTY))]
            if not active.size:
                break
            pos[active] = (pos[active] + 1) & int(mask)
        return result

    def _insert(self, flows: I64, h: np.ndarray) -> None:
        if native.available():
            self.tombstones -= cloops.insert(self.slots, flows, h, self.cols["slot"])
            return
        mask = self.slots.size - 1
        pos = (h & np.uint64(mask)).astype(np.int64)
        active = np.arange(flows.size)
        slot_col = self.cols["slot"]
        for _ in range(self.slots.size + flows.size):
            if not active.size:
                return
            s = self.slots[pos[active]]
            free = s < 0
            cand = active[free]
            self.slots[pos[cand]] = flows[cand]  # several may write one slot: one wins
            won = self.slots[pos[cand]] == flows[cand]
            winners = cand[won]
            slot_col[flows[winners]] = pos[winners]
            self.tombstones -= int(np.count_nonzero(s[free][won] == TOMBSTONE))
            active = np.concatenate([active[~free], cand[~won]])
            pos[active] = (pos[active] + 1) & mask
        raise RuntimeError("flow hash index full")  # pragma: no cover - load factor <= 1/2

    # -- allocation ---------------------------------------------------------------------------
    def room_for(self, n: int) -> int:
        """Grow so that ``n`` more flows fit if the cap allows; returns how many must be evicted."""
        if n <= self.n_free:
            return 0
        want = self.n_used + n
        if want > self.capacity and self.capacity < self.max_flows:
            cap = self.capacity
            while cap < want:
                cap *= 2
            self._resize(min(cap, self.max_flows))
        return max(0, n - self.n_free)

    def oldest(self, n: int, keep: I64) -> I64:
        """The ``n`` least recently seen flows, never one of ``keep``."""
        live = self.active_indices()
        last = self.cols["t_last"][live]
        if keep.size:
            protected = np.zeros(self.capacity, np.bool_)
            protected[keep] = True
            spare = ~protected[live]
            live, last = live[spare], last[spare]
        if n >= live.size:
            return live
        return live[np.argpartition(last, n)[:n]]

    def release(self, flows: I64) -> None:
        if not flows.size:
            return
        c = self.cols
        self.slots[c["slot"][flows]] = TOMBSTONE
        self.tombstones += flows.size
        c["used"][flows] = False
        self.free[self.n_free : self.n_free + flows.size] = flows
        self.n_free += flows.size
        self.n_used -= flows.size
        if self.tombstones > self.slots.size // 4:
            self._rehash(self.slots.size)

    def _allocate(self, keys: Keys, first: I64, orig: I64, ts: F64) -> I64:
        n = first.size
        flows = self.free[self.n_free - n : self.n_free][::-1].astype(np.int64)
        self.n_free -= n
        self.n_used += n
        c = self.cols
        for name in _ZEROED:
            c[name][flows] = 0
        c["khash"][flows] = keys.hash[first]
        c["kvni"][flows] = keys.vni[first]
        c["kproto"][flows] = keys.proto[first]
        for k in ("a_hi", "a_lo", "b_hi", "b_lo", "a_port", "b_port"):
            c[k][flows] = getattr(keys, k)[first]
        c["used"][flows] = True
        c["orig"][flows] = orig
        c["t_last"][flows] = ts
        c["seg_start"][flows] = ts
        self._insert(flows, keys.hash[first])
        return flows

    # -- the batch update ---------------------------------------------------------------------
    def find_or_add(
        self, keys: Keys, ts: F64, tcpflags: I64, evict: Callable[[I64], None], grouped: Grouped | None = None
    ) -> tuple[I64, I64, dict[str, int], tuple[I64, I64] | None]:
        """Flow index of every packet (-1: dropped and counted), the new flows, drop counts, and
        the grouping (distinct flows, packet -> group) for ``account`` when no packet was dropped.

        The originator of a new flow is the sender of its first packet in the batch, unless a
        SYN without ACK is in the batch: then its sender (``account`` revises it when TCP's
        numbers show a packet came out of order: flows.history). When the table is at ``max_flows``,
        the least recently seen flows are handed to ``evict`` (which emits and releases them).
        A packet whose 64-bit key hash equals another flow's with a different key cannot be
        placed and is counted as ``hash_collision``. ``grouped``: ``group_keys(keys)``, if the
        caller has it.
        """
        uh, first, inv, same = grouped if grouped is not None else group_keys(keys)
        found = self._lookup(uh)
        c = self.cols
        f_found = np.maximum(found, 0)
        exists = found >= 0
        # verify stored keys of found flows (a 64-bit hash collision with another flow)
        ok_u = ~exists | (
            (c["kvni"][f_found] == keys.vni[first])
            & (c["kproto"][f_found] == keys.proto[first])
            & (c["a_hi"][f_found] == keys.a_hi[first])
            & (c["a_lo"][f_found] == keys.a_lo[first])
            & (c["b_hi"][f_found] == keys.b_hi[first])
            & (c["b_lo"][f_found] == keys.b_lo[first])
            & (c["a_port"][f_found] == keys.a_port[first])
            & (c["b_port"][f_found] == keys.b_port[first])
        )
        new_u = np.flatnonzero(~exists & ok_u)
        flow_u = np.where(exists & ok_u, found, -1)
        full = 0
        if new_u.size:
            short = self.room_for(new_u.size)
            if short:
                # at the cap: evict a slice of the table at once, not a few flows per batch (each
                # eviction scans every open flow)
                evict(self.oldest(max(short, self.max_flows // EVICT_FRACTION), keep=flow_u[flow_u >= 0]))
            if new_u.size > self.n_free:
                full = new_u.size - self.n_free
                new_u = new_u[: self.n_free]
            pure_syn = (tcpflags & (tcp.SYN | tcp.ACK)) == tcp.SYN
            # the first pure-SYN packet of each new flow decides its originator, else its first packet
            syn_first = np.full(uh.size, inv.size, np.int64)
            ps = np.flatnonzero(pure_syn & same)
            np.minimum.at(syn_first, inv[ps], ps)
            lead = np.where(syn_first[new_u] < inv.size, syn_first[new_u], first[new_u])
            flows = self._allocate(keys, first[new_u], keys.direction[lead], ts[first[new_u]])
            # the first packet seen came from the responder: Zeek marks the flip with '^'
            c["flipped"][flows] = keys.direction[lead] != keys.direction[first[new_u]]
            flow_u[new_u] = flows
        flow = np.where(same, flow_u[inv], -1)
        drops = {
            "hash_collision": int(np.count_nonzero(~same) + np.count_nonzero(same & ~ok_u[inv])),
            "flow_table_full": int(np.count_nonzero(same & ok_u[inv] & (flow < 0))) if full else 0,
        }
        grouping = (flow_u, inv) if not (drops["hash_collision"] or drops["flow_table_full"]) else None
        return flow, flow_u[new_u], drops, grouping

    def account(
        self,
        flow: I64,
        direction: I64,
        ts: F64,
        iplen: I64,
        paylen: I64,
        tcpflags: I64,
        proto: I64,
        truncated: np.ndarray,
        fragment: np.ndarray,
        seq: I64,
        ack: I64,
        grouping: tuple[I64, I64] | None = None,
    ) -> None:
        """Add packets (all with flow >= 0) to their flows' counters, flags, history and times.

        ``seq``, ``ack``: the TCP numbers, which place the history codes of late packets
        (flows.history). ``grouping`` (distinct flows, packet -> index into them), when the
        caller has it, saves grouping the packets again."""
        if not flow.size:
            return
        c = self.cols
        if native.available():
            cloops.account(
                c, flow=flow, direction=direction, ts=ts, iplen=iplen, paylen=paylen, tcpflags=tcpflags,
                proto=proto, truncated=truncated, fragment=fragment, seq=seq, ack=ack,
            )
            return
        if grouping is None:
            uf, inv = np.unique(flow, return_inverse=True)
            inv = inv.reshape(-1)
        else:
            uf, inv = grouping
        g2 = inv * 2 + direction
        n2 = uf.size * 2
        c["pkts"][uf] += np.bincount(g2, minlength=n2).reshape(-1, 2).astype(np.uint32)
        c["ipbytes"][uf] += np.bincount(g2, weights=iplen, minlength=n2).reshape(-1, 2).astype(np.uint64)
        c["paybytes"][uf] += np.bincount(g2, weights=paylen, minlength=n2).reshape(-1, 2).astype(np.uint64)
        if tcpflags.any():
            fl = np.zeros(n2, np.uint8)
            np.bitwise_or.at(fl, g2, tcpflags.astype(np.uint8))
            c["tflags"][uf] |= fl.reshape(-1, 2)
        before = c["t_last"][uf].copy()  # (for the close times below)
        last = np.full(uf.size, -np.inf)
        if ts.size < 2 or bool(np.all(ts[1:] >= ts[:-1])):
            last[inv] = ts  # in time order: the last write of each flow is its latest packet
        else:
            np.maximum.at(last, inv, ts)
        c["t_last"][uf] = np.maximum(c["t_last"][uf], last)
        if truncated.any():
            c["trunc"][uf[np.unique(inv[truncated])]] = True
        if fragment.any():
            c["frags"][uf] += np.bincount(inv, weights=fragment, minlength=uf.size).astype(np.uint32)

        # history letters, in packet order, once per (letter, direction)
        is_tcp = proto == tcp.PROTO
        f = tcpflags
        syn, ack_, fin, rst = (f & tcp.SYN) > 0, (f & tcp.ACK) > 0, (f & tcp.FIN) > 0, (f & tcp.RST) > 0
        letters = (paylen > 0).astype(np.int64) << L_DATA
        if is_tcp.any():
            letters |= (is_tcp & syn & ~ack_).astype(np.int64) << L_SYN
            letters |= (is_tcp & syn & ack_).astype(np.int64) << L_SYNACK
            letters |= (is_tcp & ack_ & ~syn & ~fin & ~rst & (paylen == 0)).astype(np.int64) << L_ACK
            letters |= (is_tcp & fin).astype(np.int64) << L_FIN
            letters |= (is_tcp & rst).astype(np.int64) << L_RST
        # spread letter bits to (letter, direction) codes: bit 2*letter + direction
        codes = np.zeros(flow.size, np.int64)
        for k in range(6):
            codes |= ((letters >> k) & 1) << (2 * k + direction)
        # most packets only repeat letters their flow already has: nothing to do for them
        fresh = (codes & ~c["hbits"][flow].astype(np.int64)) != 0
        key = (seq.astype(np.int64) + ack.astype(np.int64)) & MASK32
        keyed = is_tcp & ack_ & (key != 0)
        if not fresh.any() and not keyed.any():
            return
        have = c["hbits"][uf].astype(np.int64)
        # the new codes (first occurrence per flow and code) in the order they are added
        u, bit, when = _new_codes(inv, codes, fresh, have)
        # flows where a code goes elsewhere than at the end (a late packet) take one packet at a time
        late = self._late(uf, inv, codes, u, bit, when, have, keyed, key)
        if not fresh.any() and not late.any():
            return
        quick = codes
        if late.any():
            quick = np.where(late[inv], 0, codes)
            keep = ~late[u]
            u, bit, when = u[keep], bit[keep], when[keep]
        self._flip(uf, inv, quick, direction)
        if u.size:
            self._append_history(uf, u, bit, when, have, keyed, key, seq)
        if late.any():
            for i in np.flatnonzero(late[inv] & (codes != 0)).tolist():
                add_codes(
                    c, int(uf[inv[i]]), int(direction[i]), int(codes[i]), bool(keyed[i]), int(seq[i]), int(ack[i])
                )
        # TCP close: FIN from both endpoints, or any RST (both are new letters when they happen)
        if (f & (tcp.FIN | tcp.RST)).any():
            hb = c["hbits"][uf].astype(np.int64)
            fin_both = ((hb >> (2 * L_FIN)) & 3) == 3
            rst_any = ((hb >> (2 * L_RST)) & 3) != 0
            closing = (fin_both | rst_any) & (c["close_ts"][uf] == 0)
            if closing.any():
                c["close_ts"][uf[closing]] = _close_times(np.flatnonzero(closing), inv, codes, ts, have, before)

    def _late(
        self, uf: I64, inv: I64, codes: I64, u: I64, bit: I64, when: I64, have: I64, keyed: np.ndarray, key: I64
    ) -> np.ndarray:
        """Per distinct flow: whether one of its new codes (``u``, ``bit``, ``when``: see
        _new_codes) is placed elsewhere than after the code before it (flows.history), or is a
        SYN without ACK after other codes (which may go first), or a packet shows a code came
        earlier than its clock says (its first packet is late)."""
        late = np.zeros(uf.size, np.bool_)
        c = self.cols
        # a packet with a lower clock than its code's: the code's first packet was late
        kp = np.flatnonzero(keyed & (codes != 0))
        if kp.size:
            m = (codes[kp, None] >> np.arange(12)[None, :]) & 1
            p_idx, b = np.nonzero(m)
            pk = kp[p_idx]
            g = inv[pk]
            known = ((have[g] >> b) & 1) != 0
            ref = np.zeros(pk.size, np.int64)
            ref_keyed = np.zeros(pk.size, np.bool_)
            fk = uf[g[known]]
            ref[known] = c["hkey"][fk, b[known]]
            ref_keyed[known] = (ref[known] != 0) & ((b[known] >> 1) != L_SYN)
            if u.size:  # codes new in this batch: their first packet's clock
                slot = np.full((uf.size, 12), -1, np.int64)
                slot[u, bit] = when
                w = slot[g, b]
                here = ~known & (w >= 0)
                ref[here] = key[w[here]]
                ref_keyed[here] = keyed[w[here]]
            diff = (ref - key[pk]) & MASK32
            earlier = ref_keyed & (diff > 0) & (diff <= WINDOW)
            late[g[earlier]] = True
        if not u.size:
            return late
        letter = bit >> 1
        # the code before each: the row before in its flow, or the flow's last code before the batch
        starts = np.r_[True, u[1:] != u[:-1]]
        prev = np.r_[0, np.arange(u.size - 1)]
        p_keyed = keyed[when[prev]].copy()
        p_key = key[when[prev]].copy()
        p_bit = bit[prev].copy()
        has_prev = ~starts.copy()
        s = np.flatnonzero(starts)
        fs, hv = uf[u[s]], have[u[s]]
        n = _popcount(hv)
        old = n > 0
        last = ((c["hist"][fs].astype(np.int64) >> (4 * np.maximum(n - 1, 0))) & 0xF) - 1
        last = np.maximum(last, 0)
        has_prev[s] = old
        p_key[s] = c["hkey"][fs, last]
        p_keyed[s] = old & (p_key[s] != 0) & ((last >> 1) != L_SYN)
        p_bit[s] = last
        diff = (p_key - key[when]) & MASK32
        diff = np.where(diff >= 1 << 31, diff - (1 << 32), diff)
        tie = (diff == 0) & (letter == L_ACK)
        ahead = np.where(tie, ((ACK_FIRST >> (p_bit >> 1)) & 1) != 0, (diff > 0) & (diff <= WINDOW))
        goes_back = has_prev & p_keyed & keyed[when] & ahead
        syn_after = has_prev & (letter == L_SYN)
        late[u[goes_back | syn_after]] = True
        return late

    def _flip(self, uf: I64, inv: I64, codes: I64, direction: I64) -> None:
        """A SYN without ACK from the responder, before any such SYN, makes it the originator."""
        c = self.cols
        syn_codes = codes & (3 << (2 * L_SYN))
        if not syn_codes.any():
            return
        seen = np.zeros(uf.size, np.int64)
        np.bitwise_or.at(seen, inv, syn_codes)
        had_syn = (c["hbits"][uf].astype(np.int64) & (3 << (2 * L_SYN))) != 0
        resp = 1 - c["orig"][uf].astype(np.int64)
        # the first SYN of the flow in this batch decides
        order = np.flatnonzero(syn_codes)
        first_syn_dir = np.full(uf.size, -1, np.int64)
        first_syn_dir[inv[order[::-1]]] = direction[order[::-1]]
        flip = ~had_syn & (first_syn_dir == resp) & ~c["flipped"][uf] & (c["segments"][uf] == 0)
        if flip.any():
            f = uf[flip]
            c["orig"][f] = resp[flip]
            c["flipped"][f] = True

    def _append_history(
        self, uf: I64, u: I64, bit: I64, when: I64, have: I64, keyed: np.ndarray, key: I64, seq: I64
    ) -> None:
        """Append the new codes (``u``, ``bit``, ``when``: see _new_codes) after each flow's codes,
        with their packets' clocks, and the sequence number of each direction's first code."""
        c = self.cols
        flows = uf[u]
        start = np.r_[0, np.flatnonzero(np.diff(u)) + 1]
        rank = np.arange(u.size) - np.repeat(start, np.diff(np.r_[start, u.size]))
        nib = _popcount(have[u]) + rank
        add = np.zeros(uf.size, np.uint64)
        np.bitwise_or.at(add, u, (bit + 1).astype(np.uint64) << (4 * nib).astype(np.uint64))
        c["hist"][uf] |= add
        new = np.zeros(uf.size, np.int64)
        np.bitwise_or.at(new, u, np.int64(1) << bit)
        c["hbits"][uf] |= new.astype(np.uint16)
        k = keyed[when] & ((bit >> 1) != L_SYN)
        if k.any():
            c["hkey"][flows[k], bit[k]] = key[when[k]]
        # a direction's first code: its packet's sequence number, in that side's SYN slot
        side = bit & 1
        fresh_side = (have[u] & np.where(side == 0, 0x555, 0xAAA)) == 0
        _, first = np.unique(u * 2 + side, return_index=True)
        first = first[fresh_side[first]]
        if first.size:
            c["hkey"][flows[first], 2 * L_SYN + side[first]] = seq[when[first]] & MASK32


Grouped = tuple[np.ndarray, I64, I64, np.ndarray]


def group_keys(keys: Keys) -> Grouped:
    """The packets' flows as groups (needs no table, so it can run ahead on another thread):
    distinct hashes in order of first appearance, the first packet of each, each packet's group,
    and whether each packet's whole key equals its group's first (False: a hash collision)."""
    uh, first, inv = _group(keys.hash)
    if native.available():
        cols = [keys.a_lo, keys.b_lo, keys.a_port, keys.b_port, keys.a_hi, keys.b_hi, keys.vni, keys.proto]
        if all(c.flags.c_contiguous and c.itemsize == 8 for c in cols):
            return uh, first, inv, cloops.same_key(cols, first, inv)
    return uh, first, inv, _same_key(keys, first[inv])


def _group(h: np.ndarray) -> tuple[np.ndarray, I64, I64]:
    """Distinct values of ``h`` in order of first appearance, the first position of each, and
    each element's group (what the C loop gives directly)."""
    if native.available():
        first, inv = cloops.group(h)
        return h[first], first, inv
    uh, first, inv = _group_sorted(h)
    order = np.argsort(first)
    rank = np.empty(order.size, np.int64)
    rank[order] = np.arange(order.size)
    return uh[order], first[order], rank[inv]


def _group_sorted(h: np.ndarray) -> tuple[np.ndarray, I64, I64]:
    """Distinct values of ``h`` (ascending), the first position of each, and each element's
    group: what ``np.unique(h, return_index=True, return_inverse=True)`` gives, with an unstable
    sort (numpy's is a stable merge sort there, 1.6x slower on 64-bit hashes)."""
    order = np.argsort(h)
    s = h[order]
    start = np.empty(s.size, np.bool_)
    start[:1] = True
    np.not_equal(s[1:], s[:-1], out=start[1:])
    starts = np.flatnonzero(start)
    inv = np.empty(s.size, np.int64)
    inv[order] = np.cumsum(start) - 1
    first = np.minimum.reduceat(order, starts) if s.size else np.zeros(0, np.int64)
    return s[starts], first, inv


def _new_codes(inv: I64, codes: I64, fresh: np.ndarray, have: I64) -> tuple[I64, I64, I64]:
    """The codes new to their flows in this batch, first occurrence per (flow, code), sorted by
    flow (``u``: index into the distinct flows), then packet (``when``), then code (``bit``):
    the order in which they are added."""
    pk = np.flatnonzero(fresh)
    newbits = codes[pk] & ~have[inv[pk]]
    m = (newbits[:, None] >> np.arange(12)[None, :]) & 1
    p_idx, bit = np.nonzero(m)
    u = inv[pk[p_idx]]
    _, first = np.unique(u * 16 + bit, return_index=True)  # rows are in packet order
    u, bit, when = u[first], bit[first], pk[p_idx[first]]
    order = np.lexsort((bit, when, u))
    return u[order], bit[order], when[order]


def _popcount(x: I64) -> I64:
    x = x.astype(np.int64)
    n = np.zeros_like(x)
    for k in range(16):
        n += (x >> k) & 1
    return n


def _same_key(k: Keys, rep: I64) -> np.ndarray:
    """Whether each packet's key equals the key of packet ``rep`` (its group's first packet)."""
    return (
        (k.a_lo == k.a_lo[rep])
        & (k.b_lo == k.b_lo[rep])
        & (k.a_port == k.a_port[rep])
        & (k.b_port == k.b_port[rep])
        & (k.a_hi == k.a_hi[rep])
        & (k.b_hi == k.b_hi[rep])
        & (k.vni == k.vni[rep])
        & (k.proto == k.proto[rep])
    )


def _close_times(closing: I64, inv: I64, codes: I64, ts: F64, have: I64, before: F64) -> F64:
    """For the flows ``closing`` (indices into the batch's distinct flows): the time their TCP
    close happened, as packet by packet: at the packet that completed FIN from both endpoints,
    or the first RST, the latest packet time of the flow so far (``before``: before the batch;
    ``have``: the history codes before it)."""
    where = np.full(have.size, -1, np.int64)
    where[closing] = np.arange(closing.size)
    pk = np.flatnonzero(where[inv] >= 0)  # the packets of those flows, in order
    g = where[inv[pk]]
    first = np.full((closing.size, 4), np.iinfo(np.int64).max)  # first packet with FIN/RST a->b, b->a
    for b in range(4):
        code = 1 << (2 * L_FIN + b)
        first[(have[closing] & code) != 0, b] = -1  # seen before this batch
        hit = (codes[pk] & code) != 0
        np.minimum.at(first[:, b], g[hit], pk[hit])
    done_at = np.minimum(first[:, :2].max(axis=1), first[:, 2:].min(axis=1))  # both FINs, or a RST
    upto = pk <= done_at[g]
    t = before[closing].copy()
    np.maximum.at(t, g[upto], ts[pk[upto]])
    return t

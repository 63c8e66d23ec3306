"""Masking the credentials of the records being built (both record builders call this:
receiver.flows.records and receiver.flows.encode, given the engine's redactor).

Excerpts are masked where they are kept (the pool rows, in place), just before their records
are built: on their final bytes, however many packets filled them and wherever the packets cut
a value, and only the excerpts a record shows (a flow's later interim records carry none). The
screen (``screen.Screen``) picks the few excerpts that may hold a credential and says where to
look in them (its markers); only those reach the rules in Python. The HTTP items of a record's ``app`` object
have their URIs (and a Host's ``user:password@``) masked in place, as the builder serialises
them. Masking what is masked already changes nothing and counts the same, so a record built
twice (the oracle test), or a flow's finished metadata shown again in a later interim record,
says the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ..flows.excerpts import ExcerptPool
from ..flows.table import FlowTable
from .names import HEADERS, PARAMS
from .rules import Rules
from .screen import Screen


class Redactor:
    """Masks the built-in names plus ``headers`` and ``params`` (receiver.redact.names)."""

    def __init__(self, headers: Iterable[str] = (), params: Iterable[str] = ()) -> None:
        hs, ps = (*HEADERS, *headers), (*PARAMS, *params)
        self.rules = Rules(hs, ps)
        self.screen = Screen(self.rules.markers)

    def excerpts(self, table: FlowTable, flows: np.ndarray, pool: ExcerptPool) -> np.ndarray | None:
        """Mask the excerpts the records of ``flows`` show (in the pool); per flow the values
        masked (None: none anywhere)."""
        c = table.cols
        row = c["exc_row"][flows]
        length = np.minimum(c["exc_len"][flows], pool.size)
        shown = (row > 0) & (length > 0) & (c["segments"][flows] == 0)[:, None]
        j, d = np.nonzero(shown)
        if not j.size:
            return None
        index = row[j, d].astype(np.int64) - 1
        lens = length[j, d].astype(np.int64)
        rows = pool.rows
        marks = self.screen(rows, index, lens)
        hits = np.flatnonzero(marks)
        if not hits.size:
            return None
        counts = np.zeros(flows.size, np.int64)
        mask, found = self.rules.mask, self.screen.found
        for k, m in zip(hits.tolist(), marks[hits].tolist()):
            r, n = int(index[k]), int(lens[k])
            buf = bytearray(rows[r, :n].tobytes())
            masked = mask(buf, found(m))
            if masked:
                rows[r, :n] = np.frombuffer(buf, np.uint8)
                counts[j[k]] += masked
        return counts if counts.any() else None

    def app(self, meta: dict[str, Any]) -> int:
        """Mask the HTTP items of a record's ``app`` object in place; the values masked."""
        masked = 0
        for item in meta.get("http") or ():
            uri = item.get("uri")
            if uri and ("=" in uri or "://" in uri):
                item["uri"], k = self.rules.mask_text(uri)
                masked += k
            host = item.get("host")
            if host and "@" in host:
                item["host"], k = self.rules.mask_host(host)
                masked += k
        return masked

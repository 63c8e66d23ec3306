"""Payload excerpts: the first N payload bytes of each direction of a flow, in arrival order.

Rows of a shared numpy pool are handed out only to flow directions that carry payload, so a
flow without payload costs nothing here. The flow table keeps, per flow and direction, the row
(``exc_row``, 1-based, 0: none) and the bytes kept (``exc_len``); the pool itself is just rows and
a free stack, with no Python object per flow. Only packets of directions whose excerpt is not
yet full reach the pool (the engine selects them with one vectorized test), which is typically
one packet per flow direction.
"""

from __future__ import annotations

import numpy as np

from ..packets import I64


class ExcerptPool:
    def __init__(self, size: int, initial_rows: int = 1024) -> None:
        self.size = size
        self.rows = np.zeros((initial_rows, size), np.uint8)
        self.free = np.arange(initial_rows - 1, -1, -1, dtype=np.int64)  # a stack: pop from the end
        self.n_free = initial_rows

    def acquire(self) -> int:
        """A free row (0-based)."""
        if not self.n_free:
            self._grow()
        self.n_free -= 1
        return int(self.free[self.n_free])

    def acquire_many(self, k: int) -> I64:
        """``k`` free rows (0-based): the same rows, in the same order, as ``k`` calls of ``acquire``."""
        rows = np.empty(k, np.int64)
        got = 0
        while got < k:
            if not self.n_free:
                self._grow()
            take = min(k - got, self.n_free)
            rows[got : got + take] = self.free[self.n_free - take : self.n_free][::-1]
            self.n_free -= take
            got += take
        return rows

    def release(self, rows: I64) -> None:
        """Give rows (0-based) back."""
        if rows.size:
            self.free[self.n_free : self.n_free + rows.size] = rows
            self.n_free += rows.size

    def _grow(self) -> None:
        old = self.rows.shape[0]
        new = old * 2
        rows = np.zeros((new, self.size), np.uint8)
        rows[:old] = self.rows
        self.rows = rows
        free = np.zeros(new, np.int64)
        free[: self.n_free] = self.free[: self.n_free]
        added = np.arange(new - 1, old - 1, -1, dtype=np.int64)
        free[self.n_free : self.n_free + added.size] = added
        self.free = free
        self.n_free += added.size

    def nbytes(self) -> int:
        return int(self.rows.nbytes + self.free.nbytes)

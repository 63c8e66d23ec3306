"""Payload excerpts: the first N payload bytes of each direction of a flow, in arrival order.

Rows of a shared numpy pool are handed out only to flow directions that carry payload, so a
flow without payload costs nothing here. Only packets of directions whose excerpt is not yet
full reach ``add`` (the engine selects them with one vectorized test), which is typically one
packet per flow direction.
"""

from __future__ import annotations

import numpy as np


class ExcerptPool:
    def __init__(self, size: int, initial_rows: int = 1024) -> None:
        self.size = size
        self.rows = np.zeros((initial_rows if size else 0, size), np.uint8)
        self.row_of: dict[int, int] = {}  # flow * 2 + endpoint direction -> pool row
        self.free: list[int] = list(range(self.rows.shape[0] - 1, -1, -1))

    def add(self, key: int, have: int, data: np.ndarray) -> int:
        """Append ``data`` after ``have`` bytes of excerpt ``key``; returns the new length."""
        row = self.row_of.get(key)
        if row is None:
            if not self.free:
                self._grow()
            row = self.free.pop()
            self.row_of[key] = row
        n = min(self.size - have, data.shape[0])
        self.rows[row, have : have + n] = data[:n]
        return have + n

    def get(self, key: int, length: int) -> bytes:
        row = self.row_of.get(key)
        return b"" if row is None else self.rows[row, :length].tobytes()

    def release(self, key: int) -> None:
        row = self.row_of.pop(key, None)
        if row is not None:
            self.free.append(row)

    def _grow(self) -> None:
        old = self.rows.shape[0]
        new = max(old * 2, 1024)
        rows = np.zeros((new, self.size), np.uint8)
        rows[:old] = self.rows
        self.rows = rows
        self.free.extend(range(new - 1, old - 1, -1))

    def nbytes(self) -> int:
        return int(self.rows.nbytes)

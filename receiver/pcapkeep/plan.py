"""Which pcap file each written frame goes to, decided on the engine's thread.

A flow record names the pcap files that hold its frames (``pcap.files``), but the frames are
written later, on the pcap forwarder's thread. So the rotation (by size and by age) is decided
here, as the frames are kept, with the same arithmetic the writer uses; the writer
(forwarders/pcap.py) opens exactly the files named here, in order, and closes a file when the
next one's frames come or a close mark does (``FilePlan.advance``: rotation by age while the
traffic is quiet, and SIGHUP).
"""

from __future__ import annotations

import time

import numpy as np


def file_name(prefix: str, worker: int, seq: int, ext: str, opened: float) -> str:
    """The name a rolling file gets (see forwarders/rolling.py)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(opened))
    return f"{prefix}-w{worker}-{stamp}Z-{seq:06d}.{ext}"


class FilePlan:
    def __init__(
        self, prefix: str, worker: int, ext: str, first_seq: int, rotate_bytes: int, rotate_seconds: float,
        header_len: int,
    ) -> None:
        self.prefix, self.worker, self.ext = prefix, worker, ext
        self.rotate_bytes, self.rotate_seconds = rotate_bytes, rotate_seconds
        self.header_len = header_len
        self.seq = first_seq - 1  # the open file's number (none open yet)
        self.open = False
        self.size = 0
        self.opened = 0.0
        self.names: dict[int, str] = {}  # every file planned so far (records may name old ones)

    def name(self, seq: int) -> str:
        return self.names[seq]

    def due(self, now: float) -> bool:
        """Whether the open file is past its age (rotation by time)."""
        return self.open and self.rotate_seconds > 0 and now - self.opened >= self.rotate_seconds

    def advance(self) -> bool:
        """End the open file: the next frame starts a new one. Whether a file was open."""
        was, self.open = self.open, False
        return was

    def _new_file(self, now: float) -> None:
        self.seq += 1
        self.open, self.size, self.opened = True, self.header_len, now
        self.names[self.seq] = file_name(self.prefix, self.worker, self.seq, self.ext, now)

    def assign(self, sizes: np.ndarray, now: float) -> np.ndarray:
        """The file number (int32) of each frame, given each frame's record size in the file."""
        n = sizes.size
        out = np.empty(n, np.int32)
        if self.due(now):
            self.open = False
        lo = 0
        while lo < n:
            if not self.open:
                self._new_file(now)
            room = self.rotate_bytes - self.size
            cum = np.cumsum(sizes[lo:])
            k = int(np.searchsorted(cum, room, side="right"))
            if k == 0:
                if self.size > self.header_len:
                    self.open = False
                    continue
                k = 1  # a frame larger than a whole file: it gets a file of its own
            out[lo : lo + k] = self.seq
            self.size += int(cum[k - 1])
            lo += k
            if lo < n:
                self.open = False
        return out

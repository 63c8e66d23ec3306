"""The lookup tables the application screening reads (``vx_app_hints``), as one object."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AppTables:
    """Bool tables indexed by port (65536) or by first payload byte (256), and the HTTP words
    (see Engine._app): DNS ports, UDP and TCP ports worth parsing, first bytes worth parsing, first
    bytes of an HTTP word, the HTTP words as big-endian int64."""

    dns_port: np.ndarray
    udp_port: np.ndarray
    tcp_port: np.ndarray
    start_byte: np.ndarray
    http_first: np.ndarray
    words: np.ndarray

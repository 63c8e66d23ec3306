"""``vxmirror read FILE...``: flow records of capture files, one JSON object per line."""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import signal
import stat
import sys
import threading
import time
from types import FrameType
from typing import IO, Any

SUMMARY_ORDER = ("packets", "bytes", "decoded", "slow_path", "flows_created", "records")
END_REASONS = ("idle", "active", "tcp_close", "evicted", "shutdown", "end_of_input")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "read",
        help="analyse capture files (pcap, pcapng, gzip) into flow records",
        description="Decode capture files (VXLAN/GENEVE-encapsulated or plain Ethernet) and write one "
        "JSON flow record per line; a summary goes to stderr.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="pcap or pcapng, maybe gzip-compressed; - is stdin")
    p.add_argument("-o", "--output", metavar="FILE", help="write records here instead of stdout")
    p.add_argument("-c", "--config", metavar="FILE", help="config file (its [engine] table is used)")
    p.add_argument("--excerpt-bytes", type=int, metavar="N", help="payload excerpt per direction (0: off)")
    p.add_argument("--no-redact", action="store_true",
                   help="keep credentials in excerpts and HTTP metadata as they were (docs/privacy.md)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    p.add_argument("--quiet", action="store_true", help="no summary on stderr")
    return p


def run(args: argparse.Namespace) -> int:
    from ..capture.prefetch import Prefetcher

    threshold, enabled = gc.get_threshold(), gc.isenabled()
    # no collections while numpy and the engine load (_run enables it again): they would only
    # walk the modules being loaded, which all live until the end
    gc.disable()
    try:
        # the files are mapped and faulted in on another core while numpy and the engine load
        with _Interrupts() as interrupts, Prefetcher(args.files) as prefetch:
            return _run(args, prefetch, interrupts)
    finally:  # the collector as it was (for a caller that runs the command in its own process)
        gc.unfreeze()
        gc.set_threshold(*threshold)
        if enabled:
            gc.enable()


class _Interrupts:
    """SIGINT (Ctrl-C) and SIGTERM during the command: the first one stops reading after the batch
    in hand; what was read is written, the flows still open ending as ``shutdown``, with the
    summary, and the exit status is 128 + the signal's number. A second one ends the process as
    the signal does by default (abort). Nothing is raised in the middle of the work: an extension
    module interrupted while it loads can crash the process (orjson's did, with SIGSEGV)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.signum = 0
        self._before: dict[int, Any] = {}

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():  # (signal handlers live there only)
            for sig in self.SIGNALS:
                self._before[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._before.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stop.is_set():
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.signum = signum
        self.stop.set()


def _run(args: argparse.Namespace, prefetch: Any, interrupts: _Interrupts) -> int:
    # imported here, not at the top: the CLI imports every command's module to build its parser
    # (the engine's modules load orjson)
    from ..capture.read import Analysis
    from ..config.engine import EngineConfig

    engine_cfg, sensor = EngineConfig(), None  # what load_config(None) gives: read uses nothing else
    if args.config is not None:  # (without a file, the forwarder plugins it would load go unused)
        from ..config.file import load_config
        from ..config.schema import ConfigError

        try:
            cfg = load_config(args.config)
        except ConfigError as e:
            print(f"vxmirror read: {e}", file=sys.stderr)
            return 2
        engine_cfg, sensor = cfg.engine, cfg.sensor or None
    if args.excerpt_bytes is not None:
        if not 0 <= args.excerpt_bytes <= 4096:
            print("vxmirror read: --excerpt-bytes must be between 0 and 4096", file=sys.stderr)
            return 2
        engine_cfg.excerpt_bytes = args.excerpt_bytes
    if args.no_redact:
        engine_cfg.redact = False
    # a file that cannot be read, or an output that cannot be written, is said before any work
    # (not after an hour on the files before it)
    for path in args.files:
        if problem := _unreadable(path):
            print(f"vxmirror read: {problem}", file=sys.stderr)
            return 1
    try:
        out: IO[bytes] = open(args.output, "wb") if args.output else sys.stdout.buffer  # noqa: SIM115
    except OSError as e:
        print(f"vxmirror read: {args.output}: cannot write ({e.strerror or e})", file=sys.stderr)
        return 1
    # the objects made at start-up (modules, numpy) live until the end: out of the cyclic collector's
    # way, and its collections rarer (a batch job's few cycles can wait): runs 6-13 % shorter
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    gc.enable()
    show_progress = sys.stderr.isatty() and not args.no_progress
    analysis = Analysis(
        list(args.files), engine_cfg, sensor=sensor,
        progress=_Progress(sys.stderr) if show_progress else None, prefetch=prefetch, keep_going=True,
        stop=interrupts.stop,
    )
    started = time.monotonic()
    try:
        for batch in analysis.batches():  # (the records' JSON lines, as the engine encoded them)
            out.write(batch.data)
        out.flush()
    except OSError as e:  # the output failed (a full disk, a closed pipe)
        print(f"\nvxmirror read: {args.output or 'standard output'}: cannot write ({e.strerror or e})",
              file=sys.stderr)
        return 1
    finally:
        if args.output:
            with contextlib.suppress(OSError):
                out.close()
    if show_progress:
        sys.stderr.write("\r\033[K")
    if not args.quiet:
        _print_summary(analysis.summary(), time.monotonic() - started)
    if analysis.stopped:  # (a signal that came once the reading was done changes nothing)
        return 128 + interrupts.signum
    return 1 if analysis.errors else 0  # (each file that failed was logged as it was skipped)


def _unreadable(path: str) -> str | None:
    """Why ``path`` cannot be read, told before any work (None: it can be tried; ``-`` is stdin)."""
    if path == "-":
        return None
    try:
        st = os.stat(path)
    except OSError as e:
        return f"{path}: cannot open ({e.strerror or e})"
    if stat.S_ISDIR(st.st_mode):
        return f"{path}: cannot open (Is a directory)"
    if not os.access(path, os.R_OK):
        return f"{path}: cannot open (Permission denied)"
    return None


def _print_summary(s: dict[str, int], elapsed: float) -> None:
    from ..engine import DROP_REASONS, NOTES

    pkts = s.get("packets", 0)
    rate = pkts / elapsed if elapsed > 0 else 0.0
    lines = [f"packets read     {pkts:>12,}   ({rate:,.0f} packets/s)"]
    for k in SUMMARY_ORDER[1:]:
        lines.append(f"{k:<16} {s.get(k, 0):>12,}")
    dropped = {k: v for k, v in s.items() if k in DROP_REASONS and v}
    if dropped:
        lines.append("not decoded, by reason:")
        lines += [f"  {k:<30} {v:>10,}" for k, v in sorted(dropped.items())]
    ended = {k[6:]: v for k, v in s.items() if k.startswith("flows_") and k[6:] in END_REASONS and v}
    if ended:
        lines.append("flows by end reason: " + ", ".join(f"{k} {v:,}" for k, v in sorted(ended.items())))
    notes = {k: v for k, v in s.items() if k in NOTES and v}
    if notes:
        lines.append("noted: " + ", ".join(f"{k} {v:,}" for k, v in sorted(notes.items())))
    print("\n".join(lines), file=sys.stderr)


class _Progress:
    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.start = time.monotonic()
        self.last = 0.0

    def __call__(self, path: str, done: int, total: int, packets: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.2:
            return
        self.last = now
        rate = packets / max(now - self.start, 1e-9)
        if done >= 0 and total > 0:
            frac = done / total
            bar = "#" * int(frac * 30)
            self.stream.write(f"\r{path[-40:]} [{bar:<30}] {frac:6.1%} {packets:,} packets {rate:,.0f}/s")
        else:
            self.stream.write(f"\r{path[-40:]} {packets:,} packets {rate:,.0f}/s")
        self.stream.flush()

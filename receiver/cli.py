"""The ``vxmirror`` command: a thin dispatcher over the library's subcommands."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import pkgutil
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from . import commands
from .process import memtune

# commands whose work is over when they return (outputs written and closed, threads joined): the
# console script then ends the process without tearing the interpreter down, which unloads numpy
# and the engine's modules one object at a time (20-30 ms of a 0.4 s `vxmirror read`)
DONE_AT_RETURN = frozenset({"read"})


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``only`` (a command module's name), just that subcommand (the
    other command modules are not imported: the benchmark's, for one, is slow to import)."""
    parser = argparse.ArgumentParser(
        prog="vxmirror",
        description="VXLAN/GENEVE receiver and flow analytics for AWS VPC Traffic Mirroring",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    names = [only] if only else sorted(m.name for m in pkgutil.iter_modules(commands.__path__))
    for name in names:
        module = importlib.import_module(f"{commands.__name__}.{name}")
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def _command_module(argv: Sequence[str]) -> str | None:
    """The command module ``argv`` names first (``check-config`` -> ``check_config``), if any."""
    if not argv or argv[0].startswith("-"):
        return None
    name = argv[0].replace("-", "_")
    return name if name.isidentifier() and (Path(commands.__file__).parent / f"{name}.py").is_file() else None


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C (SIGINT) waits until the block is done, then raises KeyboardInterrupt there. For
    loading orjson: its module init uses what its imports of the standard library return without
    checking, so an interrupt that lands in them crashes the process (SIGSEGV, ijl/orjson#310)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    before = signal.signal(signal.SIGINT, lambda signum, frame: came.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)
    if came:
        raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    memtune.tune()  # before numpy is imported (the command modules import it when they run)
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_module(argv)
    args = build_parser(command).parse_args(argv)
    try:
        if command != "read":  # (read holds interrupts itself, from before the prefetcher starts)
            with interrupts_held():
                import orjson  # noqa: F401
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def console() -> None:
    """The ``vxmirror`` console script: ``main``, then the process's end."""
    argv = sys.argv[1:]
    code = main(argv)
    if _command_module(argv) not in DONE_AT_RETURN:
        sys.exit(code)
    logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # (standard output closed by its reader: as BrokenPipeError in main)
        pass
    os._exit(code)


if __name__ == "__main__":
    console()

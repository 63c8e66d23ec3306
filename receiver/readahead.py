"""Running the stateless half of the engine on a second thread, one step ahead.

Reading a capture is a pipeline of two halves: finding the records, decoding them and keying
them (pure functions of each batch, mostly in C with the GIL released: ``Engine.prepare``),
then the flow table, the excerpts and the application parsers (state kept across batches,
mostly Python: ``Engine.process``). :func:`work_ahead` runs the first half on a thread so the
two overlap on two cores; the results are the same as running both in turn on one thread.

The thread stays at most ``depth`` items ahead. An exception in it (a capture error) is raised
in the consumer when it reaches that point; a consumer that stops early stops the thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")
DEPTH = 2


class _End:
    pass


def work_ahead(items: Iterator[T], work: Callable[[T], R], depth: int = DEPTH) -> Iterator[tuple[T, R]]:
    """``(item, work(item))`` for each item, in order; ``items`` is iterated and ``work`` called
    on a thread that runs up to ``depth`` items ahead of the consumer."""
    out: queue.Queue[tuple[T, R] | BaseException | _End] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[T, R] | BaseException | _End) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, work(item))):
                    return
            put(_End())
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="vxmirror-readahead", daemon=True)
    thread.start()
    try:
        while True:
            got = out.get()
            if isinstance(got, _End):
                return
            if isinstance(got, BaseException):
                raise got
            yield got
    finally:
        stop.set()
        thread.join()

"""Stopping `vxmirror read` part-way (Ctrl-C, SIGTERM from `timeout` or a scheduler): the records
of what was read are written, the flows still open end as ``shutdown``; a second signal aborts.
And no interrupt crashes a command while orjson loads."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import orjson
import pytest

from receiver.capture import open_capture
from receiver.capture.read import Analysis
from receiver.cli import interrupts_held
from receiver.config.engine import EngineConfig
from receiver.engine import Engine
from receiver.traffic import write_pcap

BATCH = 32768  # (Analysis's default: the CLI's batches)


def _stopped_after(paths: list[Path], batches: int, batch_size: int = BATCH) -> tuple[list[bytes], Analysis]:
    """The library told to stop while it handles batch number ``batches``."""
    stop = threading.Event()
    seen = 0

    def count(*_: object) -> None:
        nonlocal seen
        seen += 1
        if seen == batches:
            stop.set()

    a = Analysis(list(paths), batch_size=batch_size, on_batch=count, stop=stop)
    return [orjson.dumps(r) for r in a.records()], a


def test_reading_stops_after_the_batch_in_hand_and_keeps_what_it_read(tmp_path: Path) -> None:
    first, second = tmp_path / "a.pcap", tmp_path / "b.pcap"
    write_pcap(first, 5_000, 200, seed=21)
    write_pcap(second, 5_000, 200, seed=22)
    got, a = _stopped_after([first, second], 2, batch_size=1000)
    # what one engine gives for the first two batches, then every open flow ended as 'shutdown'
    e = Engine(EngineConfig())
    want: list[bytes] = []
    with open_capture(first) as cap:
        for i, b in enumerate(cap.batches(1000)):
            if i == 2:
                break
            want += [orjson.dumps(r) for r in e.process(b).records]
    want += [orjson.dumps(r) for r in e.finish("shutdown")]
    assert got == want
    assert a.stopped and a.summary()["packets"] == 2000  # the second file was never opened
    reasons = Counter(orjson.loads(r)["end_reason"] for r in got)
    assert reasons["shutdown"] > 50 and "end_of_input" not in reasons
    # not told: the same files read to their end
    a2 = Analysis([first, second], batch_size=1000)
    assert sum(1 for _ in a2.records()) > len(got) and not a2.stopped and a2.summary()["packets"] == 10_000


def _cli(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "receiver.cli", "read", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _feed(fifo: Path, data: bytes, opened: threading.Event, release: threading.Event) -> None:
    """Write ``data`` into the FIFO once ``release`` is set (opening it waits for the reader)."""
    with contextlib.suppress(BrokenPipeError), open(fifo, "wb") as f:
        opened.set()
        release.wait(60)
        f.write(data)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_read_writes_the_records_of_what_was_read(tmp_path: Path, sig: signal.Signals) -> None:
    cap, fifo = tmp_path / "gen.pcap", tmp_path / "in.fifo"
    write_pcap(cap, 100_000, 500, seed=23)
    os.mkfifo(fifo)
    opened, release = threading.Event(), threading.Event()
    writer = threading.Thread(target=_feed, args=(fifo, cap.read_bytes(), opened, release))
    p = _cli(str(fifo))
    writer.start()
    assert opened.wait(60)  # the command is reading (its handlers are in place)
    p.send_signal(sig)
    release.set()  # the capture comes after the signal: the first batch is read, then no more
    out, err = p.communicate(timeout=120)
    writer.join(60)
    assert p.returncode == 128 + sig, err.decode()
    text = err.decode()
    stopped = re.search(r"reading stopped after ([\d,]+) packets", text)
    assert stopped is not None and "shutdown" in text, text
    # one batch: 32,768 packets, or fewer if the stream paused and its first piece ended early
    n = int(stopped.group(1).replace(",", ""))
    assert 0 < n <= BATCH
    got = out.splitlines()
    want, _ = _stopped_after([cap], 1, batch_size=n)
    assert sorted(got) == sorted(want)
    records = [orjson.loads(r) for r in got]
    assert sum(r["packets_in"] + r["packets_out"] for r in records) == n  # every packet read is in a record
    assert {r["end_reason"] for r in records} <= {"shutdown", "tcp_close"}


def test_a_second_signal_aborts(tmp_path: Path) -> None:
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    opened, release = threading.Event(), threading.Event()
    writer = threading.Thread(target=_feed, args=(fifo, b"", opened, release))  # nothing comes: it waits
    p = _cli(str(fifo))
    writer.start()
    try:
        assert opened.wait(60)
        p.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            p.wait(1.0)  # the first one waits for the batch in hand, which does not come
        p.send_signal(signal.SIGINT)
        p.wait(60)
        assert p.returncode == -signal.SIGINT  # ended by the signal, as without a handler
    finally:
        release.set()
        writer.join(60)
        if p.poll() is None:
            p.kill()
        p.communicate()


def test_interrupts_held_while_orjson_loads_raise_after() -> None:
    # (orjson's module init crashes the process if an interrupt lands in its imports: the CLI
    # loads it with Ctrl-C held back, for every command but read, which holds it itself)
    before = signal.getsignal(signal.SIGINT)
    reached = False
    with pytest.raises(KeyboardInterrupt), interrupts_held():
        signal.raise_signal(signal.SIGINT)
        reached = True
    assert reached and signal.getsignal(signal.SIGINT) is before
    with interrupts_held():  # nothing came: nothing raised
        pass

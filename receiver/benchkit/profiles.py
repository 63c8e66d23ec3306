"""The quick and full profiles: how big each benchmark is and how often it is repeated."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

SECTIONS = ("micro", "offline", "core", "memory", "jsonl", "forwarders", "pcap_writer", "live", "churn", "capture")
DEFAULT_WORK = Path(tempfile.gettempdir()) / "vxmirror-bench"


@dataclass(frozen=True)
class Profile:
    name: str
    repeats: int  # repetitions of each timed comparison
    # offline comparison: generated VXLAN captures (offline.CASES: realistic mix, long flows, SYN
    # flood) of offline_packets each, read by vxmirror, tshark and a dpkt loop
    offline_packets: int
    offline_flows: int  # flows of the long-flows case
    dpkt_packets: int  # the dpkt loop runs on the first this-many packets (rate scaled to packets/s)
    # decode+aggregate core over batches in memory
    core_packets: int
    core_batch: int
    # memory per active flow
    memory_flows: tuple[int, ...]
    # micro-benchmarks (pytest-benchmark)
    micro_max_time: float
    micro_min_rounds: int
    # live sweep (bench/live_sweep.py arguments)
    live_args: tuple[str, ...]
    # churn sweep (bench/live_sweep.py arguments after --receivers ""): new flows/s of serve. Trials
    # must send several times what the socket buffer and the receive ring hold (about 1 M datagrams
    # of 128 bytes) for a deficit to show as loss: 2 s trials passed rates that 8 s trials lose
    churn_args: tuple[str, ...]
    # capture sweep (bench/live_sweep.py arguments after --receivers ""): the disk's write rate (dd),
    # and serve's loss-free rate on the realistic mix with JSON lines alone, with pcap under the
    # default capture policy, and with every frame written
    capture_args: tuple[str, ...]
    # forwarders
    forwarder_records: int
    forwarder_repeats: int
    pcap_frames: int
    seed: int = 1
    offline_cases: tuple[str, ...] = ("mix", "long", "flood")
    notes: tuple[str, ...] = field(default_factory=tuple)


QUICK = Profile(
    name="quick",
    repeats=3,
    offline_packets=100_000,
    offline_flows=2_000,
    dpkt_packets=20_000,
    core_packets=100_000,
    core_batch=8192,
    memory_flows=(10_000, 100_000),
    micro_max_time=0.2,
    micro_min_rounds=3,
    live_args=("--quick",),
    churn_args=("--churn", "2:dns,10:udp", "--churn-size", "128", "--seconds", "3", "--max-trials", "3",
                "--churn-steps", "1"),
    capture_args=("--capture", "jsonl,default,everything", "--capture-packets", "200000", "--seconds", "2",
                  "--max-trials", "4", "--start", "100000"),
    forwarder_records=20_000,
    forwarder_repeats=1,
    pcap_frames=200_000,
)

FULL = Profile(
    name="full",
    repeats=3,
    offline_packets=1_000_000,
    offline_flows=4_000,
    dpkt_packets=100_000,
    core_packets=400_000,
    core_batch=8192,
    memory_flows=(10_000, 100_000, 1_000_000),
    micro_max_time=1.0,
    micro_min_rounds=5,
    live_args=("--sizes", "128,512,1400", "--receivers", "c,c_gro,serve,serve2", "--seconds", "2", "--max-trials", "6"),
    churn_args=("--churn", "2:dns,2:udp,10:udp", "--churn-size", "128", "--seconds", "8", "--max-trials", "5",
                "--churn-steps", "2"),
    capture_args=("--capture", "jsonl,default,everything", "--capture-packets", "500000", "--seconds", "4",
                  "--max-trials", "6", "--start", "100000"),
    forwarder_records=100_000,
    forwarder_repeats=3,
    pcap_frames=1_000_000,
)

PROFILES = {p.name: p for p in (QUICK, FULL)}

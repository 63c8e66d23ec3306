"""Random and mutated input through decapsulation, decoding and the flow table.

No exception escapes; every packet is counted as decoded or under a named reason; and the
records do not depend on how the packets were cut into batches.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from receiver.config.engine import EngineConfig
from receiver.engine import DROP_REASONS, Engine
from receiver.packets import Layer, PacketBatch
from tests.test_decode_paths import packets

CFG = EngineConfig(max_flows=64, excerpt_bytes=16)


def _records(frames: list[bytes], layer: Layer, batch: int) -> tuple[list[dict], dict[str, int]]:
    e = Engine(CFG)
    out: list[dict] = []
    # one timestamp for every packet: expiry (idle, TCP close linger) runs between batches, so
    # with time moving the records would legitimately depend on where the batches are cut
    for i in range(0, len(frames), batch):
        chunk = frames[i : i + batch]
        out += e.process(PacketBatch.from_frames(chunk, [1.0] * len(chunk), layer=layer)).records
    out += e.finish("end_of_input")
    return out, e.counters()


def _summary(records: list[dict]) -> Counter[tuple]:
    return Counter(
        (r["vni"], r["transport"], r["src_ip"], r["src_port"], r["dest_ip"], r["dest_port"], r["packets_in"],
         r["bytes_in"], r["packets_out"], r["bytes_out"], r["truncated"])
        for r in records
    )


frames_or_garbage = st.one_of(packets(), st.binary(max_size=200))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames_or_garbage, min_size=1, max_size=60), st.integers(1, 17))
def test_fuzzed_ethernet_frames(frames: list[bytes], batch: int) -> None:
    recs, c = _records(frames, Layer.ETHERNET, batch)
    assert c["packets"] == len(frames)
    assert c["decoded"] + sum(v for k, v in c.items() if k in DROP_REASONS) == len(frames)
    assert sum(r["packets_in"] + r["packets_out"] for r in recs) == c["decoded"]
    whole, _ = _records(frames, Layer.ETHERNET, len(frames))
    assert _summary(whole) == _summary(recs)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frames_or_garbage, min_size=1, max_size=40), st.sampled_from([Layer.VXLAN, Layer.GENEVE]))
def test_fuzzed_tunnel_datagrams(frames: list[bytes], layer: Layer) -> None:
    datagrams = [f[42:] if len(f) > 42 else f for f in frames]
    recs, c = _records(datagrams, layer, 7)
    assert c["decoded"] + sum(v for k, v in c.items() if k in DROP_REASONS) == len(datagrams)
    assert sum(r["packets_in"] + r["packets_out"] for r in recs) == c["decoded"]

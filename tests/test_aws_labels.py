"""The receiver's VNI labeler against moto-backed mirror sessions, created by the Lambda itself
(so the tags it writes and the labels the receiver reads are tested together). moto does not
assign VNIs as AWS does, so each test gives the sessions VNIs with ModifyTrafficMirrorSession."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError
from mirror_sessions_fixtures import REGION, World, aws_env, build_world, lambda_env, task_enis

from mirror_sessions import handler as handler_mod
from receiver.aws.labels import LABEL_KEYS, VniLabeler, make_labeler
from receiver.aws.settings import AwsConfig
from receiver.config.file import parse_config


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    from moto import mock_aws

    aws_env(monkeypatch)
    with mock_aws():
        handler_mod.reset()
        w = build_world()
        lambda_env(monkeypatch, w)
        yield w
        handler_mod.reset()


def mirror_tasks(w: World, n: int, group: str) -> dict[int, dict[str, Any]]:
    """Run ``n`` tasks, let the Lambda create their sessions, give each a VNI; VNI -> task."""
    out = {}
    for task in w.run_tasks(n, group=group):
        handler_mod.handler(w.task_event(task), None)
        (eni,) = task_enis(task)
        (s,) = [x for x in w.managed() if x["NetworkInterfaceId"] == eni]
        vni = 1000 + len(w.managed()) * 7 + len(out)
        w.ec2.modify_traffic_mirror_session(TrafficMirrorSessionId=s["TrafficMirrorSessionId"], VirtualNetworkId=vni)
        out[vni] = {**task, "_session": s["TrafficMirrorSessionId"], "_eni": eni}
    return out


def expected(task: dict[str, Any], service: str) -> dict[str, Any]:
    ip = next(d["value"] for a in task["attachments"] for d in a["details"] if d["name"] == "privateIPv4Address")
    return {
        "task_arn": task["taskArn"],
        "cluster": "prod",
        "service": service,
        "eni": task["_eni"],
        "az": "us-east-1a",
        "session_id": task["_session"],
        "private_ip": ip,
    }


def test_labels_per_vni_from_the_lambdas_sessions(world: World) -> None:
    web = mirror_tasks(world, 2, "service:web")
    api = mirror_tasks(world, 1, "service:api")
    # A session someone else made (no marker) with a VNI of its own.
    foreign_eni = world.new_eni()
    world.ec2.create_traffic_mirror_session(
        NetworkInterfaceId=foreign_eni,
        TrafficMirrorTargetId=world.target_a,
        TrafficMirrorFilterId=world.filter_id,
        SessionNumber=1,
        VirtualNetworkId=77,
    )
    lab = make_labeler(AwsConfig(region=REGION), start=False)
    assert lab is not None
    assert lab(1) is None  # nothing before the first refresh
    assert lab.refresh() is True
    assert set(lab.snapshot()) == set(web) | set(api)  # only sessions with the marker
    for vni, task in web.items():
        assert lab(vni) == expected(task, "web")
    for vni, task in api.items():
        assert lab(vni) == expected(task, "api")
        assert lab.name(vni) == f"api/{task['taskArn'].rsplit('/', 1)[-1]} {task['_eni']}"
    assert lab(77) is None and lab.name(77) is None

    # Configured targets: every session on them, ours or not.
    by_target = make_labeler(AwsConfig(region=REGION, target_ids=[world.target_a]), start=False)
    assert by_target is not None and by_target.refresh()
    assert by_target(77) == {**dict.fromkeys(LABEL_KEYS), "eni": foreign_eni, "session_id": by_target(77)["session_id"]}  # type: ignore[index]
    assert set(by_target.snapshot()) == set(web) | set(api) | {77}

    # A stopped task's session disappears from the map at the next refresh.
    (gone_vni, gone) = next(iter(web.items()))
    stopped = world.stop(gone)
    handler_mod.handler(world.task_event(stopped), None)
    assert lab.refresh()
    assert lab(gone_vni) is None and set(lab.snapshot()) == (set(web) | set(api)) - {gone_vni}


def test_background_refresh_picks_up_new_sessions(world: World) -> None:
    import boto3

    lab = VniLabeler(lambda: boto3.client("ec2", region_name=REGION), refresh_seconds=0.05).start()
    try:
        deadline = time.monotonic() + 10
        while lab.refreshes < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        first = lab.refreshes
        assert first >= 1 and lab.snapshot() == {}
        new = mirror_tasks(world, 1, "service:web")
        (vni,) = new
        while lab(vni) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lab(vni) == expected(new[vni], "web")
        assert lab.refreshes > first  # found by a later, periodic refresh
    finally:
        lab.close()
    assert lab._thread is None


def test_without_credentials_the_feature_turns_off_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    monkeypatch.delenv("AWS_WEB_IDENTITY_TOKEN_FILE", raising=False)
    caplog.set_level(logging.WARNING, logger="receiver.aws.labels")
    lab = make_labeler(parse_config({"aws": {"region": REGION}}).aws)
    assert lab is not None
    assert lab._thread is not None
    lab._thread.join(10)  # the thread ends itself
    assert not lab._thread.is_alive()
    assert lab.enabled is False
    assert lab.refresh() is False and lab(1) is None and lab.name(1) is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "aws labels off" in warnings[0].getMessage()
    assert "NoCredentialsError" in warnings[0].getMessage()
    lab.close()


def test_disabled_in_config_means_no_labeler() -> None:
    assert make_labeler(parse_config({"aws": {"enabled": False}}).aws) is None


def test_transient_errors_keep_the_last_map_and_warn_once_per_outage(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    import boto3

    mapped = mirror_tasks(world, 1, "service:web")
    real = boto3.client("ec2", region_name=REGION)
    broken = {"on": False}

    class Flaky:
        def get_paginator(self, name: str) -> Any:
            if broken["on"]:
                raise EndpointConnectionError(endpoint_url="https://ec2.us-east-1.amazonaws.com")
            return real.get_paginator(name)

    caplog.set_level(logging.INFO, logger="receiver.aws.labels")
    lab = VniLabeler(Flaky)
    assert lab.refresh()
    before = lab.snapshot()
    assert set(before) == set(mapped)
    broken["on"] = True
    assert lab.refresh() is False and lab.refresh() is False
    assert lab.snapshot() == before and lab.enabled and lab.errors == 2
    broken["on"] = False
    assert lab.refresh()
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("cannot describe" in m for m in msgs) == 1
    assert sum("works again" in m for m in msgs) == 1


def test_engine_records_carry_the_aws_fields_of_their_vni(world: World) -> None:
    """Engine(config, labeler=...) over VXLAN datagrams (as the live listener receives them) with
    two mapped VNIs and one unknown VNI."""
    from packet_factory import tcp, udp, vxlan_header

    from receiver.config.engine import EngineConfig
    from receiver.engine import Engine
    from receiver.packets import Layer, PacketBatch

    web = mirror_tasks(world, 1, "service:web")
    api = mirror_tasks(world, 1, "service:api")
    (vni_web,), (vni_api,) = web, api
    lab = make_labeler(AwsConfig(region=REGION), start=False)
    assert lab is not None and lab.refresh()

    frames, ts = [], []
    for i, (vni, port) in enumerate(((vni_web, 80), (vni_api, 443), (4_000_000, 53))):
        client, server = f"172.16.{i}.10", f"172.16.{i}.20"
        if port == 53:
            pkts = [udp(client, server, 5353, port, b"q"), udp(server, client, port, 5353, b"r")]
        else:
            pkts = [
                tcp(client, server, 40000 + i, port, flags=0x02),
                tcp(server, client, port, 40000 + i, flags=0x12),
                tcp(client, server, 40000 + i, port, flags=0x10, payload=b"hello"),
            ]
        for p in pkts:
            frames.append(vxlan_header(vni) + p)
            ts.append(1_700_000_000.0 + len(ts) * 0.001)
    engine = Engine(EngineConfig(), labeler=lab, sensor="test")
    records = engine.process(PacketBatch.from_frames(frames, ts, layer=Layer.VXLAN)).records
    records += engine.finish("shutdown")
    by_vni = {r["vni"]: r for r in records}
    assert set(by_vni) == {vni_web, vni_api, 4_000_000}
    assert by_vni[vni_web]["aws"] == expected(web[vni_web], "web")
    assert by_vni[vni_api]["aws"] == expected(api[vni_api], "api")
    assert by_vni[vni_web]["dest_port"] == 80 and by_vni[vni_api]["dest_port"] == 443
    assert "aws" not in by_vni[4_000_000]

"""The mirror-session Lambda against moto (5.2.5): ECS run_task on Fargate with awsvpc, EC2 ENIs,
mirror targets, filters and sessions, and events in EventBridge's documented formats.

Where AWS would reject a call and moto does not (a full target, a source that does not support
mirroring, a session already deleted), the rejection is injected with a botocore ``before-call``
hook on the Lambda's own EC2 client: the call then fails exactly as botocore raises AWS errors.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from mirror_sessions_fixtures import (
    AZ_A,
    AZ_B,
    World,
    client_error,
    emf_lines,
    instance_event,
    lambda_env,
    scheduled_event,
    tags_of,
    task_enis,
    world,
)

from mirror_sessions import handler as handler_mod
from mirror_sessions.handler import handler

__all__ = ["world"]  # the fixture


def run(event: dict[str, Any]) -> dict[str, Any]:
    return handler(event, None)


def snapshot(w: World) -> dict[str, tuple[str, str, str]]:
    return {
        s["TrafficMirrorSessionId"]: (s["NetworkInterfaceId"], s["TrafficMirrorTargetId"], str(s.get("Tags")))
        for s in w.sessions()
    }


def assert_one_session_per_running_eni(w: World, tasks: list[dict[str, Any]]) -> None:
    managed = w.managed()
    by_eni = Counter(s["NetworkInterfaceId"] for s in managed)
    want = {eni: t for t in tasks for eni in task_enis(t)}
    assert set(by_eni) == set(want), "sessions must cover exactly the running tasks' ENIs"
    assert all(n == 1 for n in by_eni.values()), f"duplicate sessions: {by_eni}"
    for s in managed:
        task = want[s["NetworkInterfaceId"]]
        tags = tags_of(s)
        ip = next(d["value"] for a in task["attachments"] for d in a["details"] if d["name"] == "privateIPv4Address")
        assert tags["vxmirror:managed-by"] == "vxmirror"
        assert tags["vxmirror:task-arn"] == task["taskArn"]
        assert tags["vxmirror:cluster"] == "prod"
        assert tags["vxmirror:service"] == task["group"].removeprefix("service:")
        assert tags["vxmirror:eni"] == s["NetworkInterfaceId"]
        assert tags["vxmirror:private-ip"] == ip
        assert tags["vxmirror:az"] == w.az_of_task[task["taskArn"]]
        assert task["taskArn"].rsplit("/", 1)[-1] in tags["Name"]
        assert s["TrafficMirrorFilterId"] == w.filter_id
        assert s["SessionNumber"] == 1


def inject(w: World, op: str, fail: Callable[[dict[str, Any]], Exception | None]) -> list[dict[str, Any]]:
    """Make the Lambda's EC2 client raise ``fail(params)`` (when not None) for ``op``; returns
    the list of params of every call to ``op``."""
    calls: list[dict[str, Any]] = []
    client = handler_mod._client("ec2")

    def hook(params: dict[str, Any], **_: Any) -> None:
        calls.append(dict(params))
        err = fail(params)
        if err is not None:
            raise err

    client.meta.events.register(f"before-parameter-build.ec2.{op}", hook)
    return calls


# -- acceptance -------------------------------------------------------------------------------


def test_service_scaling_0_5_2_leaves_one_tagged_session_per_running_task_eni(world: World) -> None:
    assert world.managed() == []
    tasks = world.run_tasks(3, az=AZ_A) + world.run_tasks(2, az=AZ_B)
    for t in tasks:
        assert run(world.task_event(t))["results"] == {"created": 1}
    assert_one_session_per_running_eni(world, tasks)
    # Each session went to the target in its task's AZ (both have room).
    for s in world.managed():
        az = tags_of(s)["vxmirror:az"]
        assert s["TrafficMirrorTargetId"] == (world.target_a if az == AZ_A else world.target_b)

    stopped = [world.stop(t) for t in tasks[1:4]]
    for t in stopped:
        assert run(world.task_event(t, "DEPROVISIONING"))["deleted"] == 1
        assert run(world.task_event(t, "STOPPED"))["deleted"] == 0
    remaining = [tasks[0], tasks[4]]
    assert_one_session_per_running_eni(world, remaining)
    # A reconcile finds nothing to do.
    before = snapshot(world)
    summary = run(scheduled_event())
    assert summary["deleted"] == 0 and summary["results"] == {}
    assert snapshot(world) == before


def test_duplicate_event_changes_nothing(world: World) -> None:
    (t,) = world.run_tasks(1)
    ev = world.task_event(t)
    assert run(ev)["results"] == {"created": 1}
    before = snapshot(world)
    assert run(ev)["results"] == {"exists": 1}
    assert run(world.task_event(t))["results"] == {"exists": 1}  # same change, new event id
    assert snapshot(world) == before
    stopped = world.stop(t)
    sev = world.task_event(stopped)
    assert run(sev)["deleted"] == 1
    assert run(sev)["deleted"] == 0
    assert world.managed() == []


def test_out_of_order_pair_changes_nothing(world: World) -> None:
    (keep,) = world.run_tasks(1)
    run(world.task_event(keep))
    before = snapshot(world)
    assert len(before) == 1
    # A task that started and stopped quickly; EventBridge delivers STOPPED before RUNNING.
    (brief,) = world.run_tasks(1)
    running_event = world.task_event(brief, "RUNNING")
    stopped = world.stop(brief)
    assert run(world.task_event(stopped))["action"] == "deleted"
    late = run(running_event)
    assert late["action"] == "skipped" and late["reason"] == "task_not_running"
    assert snapshot(world) == before


def test_reconcile_repairs_a_missed_stopped_and_a_missed_running(world: World) -> None:
    a, b = world.run_tasks(2)
    run(world.task_event(a))
    run(world.task_event(b))
    b_session = next(s for s in world.managed() if s["NetworkInterfaceId"] in task_enis(b))
    world.stop(a)  # its STOPPED event is lost
    (c,) = world.run_tasks(1, az=AZ_B)  # its RUNNING event is lost
    summary = run(scheduled_event())
    assert summary["deleted"] == 1
    assert summary["results"] == {"created": 1}
    assert_one_session_per_running_eni(world, [b, c])
    assert any(s["TrafficMirrorSessionId"] == b_session["TrafficMirrorSessionId"] for s in world.managed())
    # The repaired state is stable.
    before = snapshot(world)
    run(scheduled_event())
    assert snapshot(world) == before


def test_full_eni_target_spills_to_the_next_target(world: World) -> None:
    # Ten other sources already use target A (AZ a): an ENI target takes at most 10.
    for _ in range(10):
        world.ec2.create_traffic_mirror_session(
            NetworkInterfaceId=world.new_eni(AZ_A),
            TrafficMirrorTargetId=world.target_a,
            TrafficMirrorFilterId=world.filter_id,
            SessionNumber=1,
        )
    (t,) = world.run_tasks(1, az=AZ_A)
    assert run(world.task_event(t))["results"] == {"created": 1}
    (s,) = world.managed()
    assert s["TrafficMirrorTargetId"] == world.target_b
    # The other sessions were not touched.
    assert sum(1 for x in world.sessions() if x["TrafficMirrorTargetId"] == world.target_a) == 10


def test_target_full_rejection_from_aws_spills_to_the_next_target(world: World) -> None:
    # Our count says target A has room, but AWS says it is full (someone else filled it in
    # between): moto does not enforce the limit, so the rejection is injected.
    calls = inject(
        world,
        "CreateTrafficMirrorSession",
        lambda p: (
            client_error(
                "CreateTrafficMirrorSession",
                "TrafficMirrorSourcesPerTargetLimitExceeded",
                "The maximum number of sources for the specified target has been exceeded.",
            )
            if p["TrafficMirrorTargetId"] == world.target_a
            else None
        ),
    )
    t1, t2 = world.run_tasks(2, az=AZ_A)
    assert run(world.task_event(t1))["results"] == {"created": 1}
    assert [c["TrafficMirrorTargetId"] for c in calls] == [world.target_a, world.target_b]
    assert {s["TrafficMirrorTargetId"] for s in world.managed()} == {world.target_b}
    # ClientTokens differ per target (a reused token with other parameters is an AWS error).
    assert calls[0]["ClientToken"] != calls[1]["ClientToken"]
    assert run(world.task_event(t2))["results"] == {"created": 1}


def test_unsupported_source_is_skipped_with_its_reason_counted(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = world.run_tasks(2)
    bad_eni = task_enis(bad)[0]
    # Injected: AWS rejects sources on hosts that do not support mirroring; moto accepts all.
    calls = inject(
        world,
        "CreateTrafficMirrorSession",
        lambda p: (
            client_error(
                "CreateTrafficMirrorSession",
                "InvalidParameterValue",
                f"The network interface {bad_eni} is not supported for traffic mirroring.",
            )
            if p["NetworkInterfaceId"] == bad_eni
            else None
        ),
    )
    capsys.readouterr()
    r = run(world.task_event(bad))
    assert r["results"] == {"skipped:source_unsupported": 1}
    out = capsys.readouterr().out
    skipped = [d for d in emf_lines(out) if d.get("Reason") == "source_unsupported"]
    assert len(skipped) == 1 and skipped[0]["SessionsSkipped"] == 1
    assert skipped[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["Function", "Reason"]]
    assert out.count('"msg":"source skipped"') == 1 and "source_unsupported" in out
    # Not retried in a storm: the duplicate event and the reconcile count it, but do not call AWS.
    n_calls = len(calls)
    assert run(world.task_event(bad))["results"] == {"skipped:source_unsupported": 1}
    run(world.task_event(good))
    run(scheduled_event())
    assert sum(1 for c in calls[n_calls:] if c["NetworkInterfaceId"] == bad_eni) == 0
    out = capsys.readouterr().out
    assert out.count('"msg":"source skipped"') == 0
    assert [s["NetworkInterfaceId"] for s in world.managed()] == task_enis(good)


# -- safety -------------------------------------------------------------------------------


def test_only_sessions_with_the_marker_are_touched(world: World) -> None:
    foreign_eni = world.new_eni(AZ_A)
    foreign = world.ec2.create_traffic_mirror_session(
        NetworkInterfaceId=foreign_eni,
        TrafficMirrorTargetId=world.target_a,
        TrafficMirrorFilterId=world.filter_id,
        SessionNumber=1,
        TagSpecifications=[{"ResourceType": "traffic-mirror-session", "Tags": [{"Key": "owner", "Value": "someone"}]}],
    )["TrafficMirrorSession"]["TrafficMirrorSessionId"]
    (t,) = world.run_tasks(1)
    run(world.task_event(t))
    world.stop(t)
    run(scheduled_event())
    assert [s["TrafficMirrorSessionId"] for s in world.sessions()] == [foreign]


def test_session_number_avoids_those_taken_on_the_eni_and_three_per_eni_is_respected(world: World) -> None:
    (t,) = world.run_tasks(1)
    eni = task_enis(t)[0]
    for n in (1, 2):
        world.ec2.create_traffic_mirror_session(
            NetworkInterfaceId=eni,
            TrafficMirrorTargetId=world.target_b,
            TrafficMirrorFilterId=world.filter_id,
            SessionNumber=n,
        )
    assert run(world.task_event(t))["results"] == {"created": 1}
    (mine,) = world.managed()
    assert mine["SessionNumber"] == 3
    (t2,) = world.run_tasks(1)
    eni2 = task_enis(t2)[0]
    for n in (1, 2, 3):
        world.ec2.create_traffic_mirror_session(
            NetworkInterfaceId=eni2,
            TrafficMirrorTargetId=world.target_b,
            TrafficMirrorFilterId=world.filter_id,
            SessionNumber=n,
        )
    assert run(world.task_event(t2))["results"] == {"skipped:eni_session_limit": 1}


def test_delete_tolerates_a_session_already_gone(world: World) -> None:
    (t,) = world.run_tasks(1)
    run(world.task_event(t))
    stopped = world.stop(t)
    inject(
        world,
        "DeleteTrafficMirrorSession",
        lambda p: client_error(
            "DeleteTrafficMirrorSession", "InvalidTrafficMirrorSessionId.NotFound", "The session does not exist"
        ),
    )
    assert run(world.task_event(stopped)) == {
        "action": "deleted",
        "deleted": 0,
        "task_arn": t["taskArn"],
        "status": "STOPPED",
    }


def test_unexpected_aws_error_fails_the_invocation_and_is_counted(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    (t,) = world.run_tasks(1)
    inject(
        world,
        "CreateTrafficMirrorSession",
        lambda p: client_error("CreateTrafficMirrorSession", "UnauthorizedOperation", "not allowed"),
    )
    capsys.readouterr()
    with pytest.raises(Exception, match="UnauthorizedOperation"):
        run(world.task_event(t))
    out = capsys.readouterr().out
    (totals,) = [d for d in emf_lines(out) if "Reason" not in d]
    assert totals["Failures"] == 1
    assert "dead-lettered" in out


def test_vni_assigned_by_aws_is_read_back_and_logged(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    (t,) = world.run_tasks(1)
    calls: list[dict[str, Any]] = []

    # moto does not assign VNIs; AWS does: add one to the parsed response as AWS would return it.
    def after(parsed: dict[str, Any], **_: Any) -> None:
        parsed["TrafficMirrorSession"]["VirtualNetworkId"] = 4242
        calls.append(parsed)

    handler_mod._client("ec2").meta.events.register("after-call.ec2.CreateTrafficMirrorSession", after)
    capsys.readouterr()
    run(world.task_event(t))
    out = capsys.readouterr().out
    assert len(calls) == 1
    created = [line for line in out.splitlines() if '"msg":"session created"' in line]
    assert len(created) == 1 and '"vni":4242' in created[0]


# -- selection and other events -----------------------------------------------------------------


def test_selection_by_service_tag_and_cluster(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    (web,) = world.run_tasks(1, group="service:web")
    (api,) = world.run_tasks(1, group="service:api", tags=[{"key": "mirror", "value": "yes"}])
    (batch,) = world.run_tasks(1, group="family:web")
    lambda_env(monkeypatch, world, SERVICES="api,web", TASK_TAG="mirror=yes")
    assert run(world.task_event(web))["reason"] == "task_not_opted_in"
    assert run(world.task_event(batch))["reason"] == "service_not_selected"
    assert run(world.task_event(api))["results"] == {"created": 1}
    lambda_env(monkeypatch, world, CLUSTERS="other")
    assert run(world.task_event(web))["reason"] == "cluster_not_selected"
    lambda_env(monkeypatch, world, LAUNCH_TYPES="EC2")
    assert run(world.task_event(web))["reason"] == "launch_type_not_selected"
    assert [tags_of(s)["vxmirror:service"] for s in world.managed()] == ["api"]


def test_opted_in_instances_follow_their_state(world: World) -> None:
    def launch(tags: list[dict[str, str]]) -> str:
        return world.ec2.run_instances(
            ImageId="ami-12c6146b",
            MinCount=1,
            MaxCount=1,
            SubnetId=world.subnets[AZ_B],
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )["Instances"][0]["InstanceId"]

    opted = launch([{"Key": "vxmirror:mirror", "Value": "true"}])
    other = launch([{"Key": "team", "Value": "x"}])
    assert run(instance_event(opted, "running"))["results"] == {"created": 1}
    assert run(instance_event(other, "running"))["reason"] == "instance_not_opted_in"
    (s,) = world.managed()
    tags = tags_of(s)
    assert tags["vxmirror:instance-id"] == opted and tags["vxmirror:az"] == AZ_B
    assert s["TrafficMirrorTargetId"] == world.target_b
    assert run(scheduled_event())["deleted"] == 0  # reconcile keeps the running instance's session
    world.ec2.stop_instances(InstanceIds=[opted])
    assert run(instance_event(opted, "stopping"))["deleted"] == 1
    assert run(instance_event(opted, "running"))["reason"] == "instance_not_running"  # late event
    assert world.managed() == []


def test_unknown_and_malformed_events_are_ignored_and_counted(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert run({"detail-type": "Something Else", "source": "aws.s3", "detail": {}})["reason"] == ("unknown_event_type")
    bad = {"detail-type": "ECS Task State Change", "source": "aws.ecs", "detail": {"lastStatus": "RUNNING"}}
    assert run(bad) == {"action": "ignored", "reason": "malformed_event"}
    assert run([1, 2])["reason"] == "not_an_object"  # type: ignore[arg-type]
    (t,) = world.run_tasks(1)
    assert run(world.task_event(t, "PROVISIONING"))["reason"] == "status_provisioning"
    totals = [d for d in emf_lines(capsys.readouterr().out) if "Reason" not in d]
    assert sum(d["EventsIgnored"] for d in totals) == 4
    assert world.managed() == []


def test_clients_use_adaptive_retry() -> None:
    retries = handler_mod.RETRY_CONFIG.retries or {}
    assert retries["mode"] == "adaptive" and retries["total_max_attempts"] == 9

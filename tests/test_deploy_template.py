"""The CloudFormation template: cfn-lint clean, rendered from its sources, least-privilege IAM,
filter rules within AWS's limits, the receiver user data valid, and the EventBridge patterns
matching the documented events (delivered through moto's EventBridge to an SQS queue)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import cfn_yaml
from mirror_sessions_fixtures import REGION, aws_env, build_world, instance_event, scheduled_event

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "template.yaml"
CFN_LINT = str(Path(sys.executable).parent / "cfn-lint")
sys.path.insert(0, str(ROOT / "deploy"))
import render  # noqa: E402


@pytest.fixture(scope="module")
def tpl() -> dict[str, Any]:
    return dict(cfn_yaml.load(str(TEMPLATE)))


def statements(tpl: dict[str, Any], role: str) -> dict[str, dict[str, Any]]:
    (policy,) = tpl["Resources"][role]["Properties"]["Policies"]
    return {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"]}


def test_cfn_lint_passes() -> None:
    proc = subprocess.run([CFN_LINT, str(TEMPLATE)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cfn_lint_would_catch_a_broken_template(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(TEMPLATE.read_text().replace("Runtime: python3.12", "Runtime: python2.1"))
    proc = subprocess.run([CFN_LINT, str(broken)], capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0 and "python2.1" in proc.stdout


def test_template_is_rendered_from_its_sources() -> None:
    assert TEMPLATE.read_text() == render.render(), "run `make deploy-template`"


def test_lambda_least_privilege(tpl: dict[str, Any]) -> None:
    st = statements(tpl, "FunctionRole")
    delete = st["DeleteOnlyOurSessions"]
    assert delete["Action"] == "ec2:DeleteTrafficMirrorSession"
    assert delete["Condition"] == {"StringEquals": {"aws:ResourceTag/vxmirror:managed-by": "vxmirror"}}
    create = st["CreateSessionsOnlyWithTheMarker"]
    assert create["Condition"] == {"StringEquals": {"aws:RequestTag/vxmirror:managed-by": "vxmirror"}}
    assert st["TagOnlyWhileCreatingSessions"]["Condition"] == {
        "StringEquals": {"ec2:CreateAction": "CreateTrafficMirrorSession"}
    }
    # No wildcard actions, and no write action on "*".
    for s in st.values():
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        assert all("*" not in a for a in actions)
        if s["Resource"] == "*":
            assert all(re.match(r"^(ec2:Describe|ecs:(List|Describe))", a) for a in actions), s["Sid"]
    # Every AWS call the Lambda makes is allowed.
    allowed = {a for s in st.values() for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])}
    used = set()
    for py in (ROOT / "mirror_sessions").glob("*.py"):
        src = py.read_text()
        for m in re.finditer(r"(ec2|ecs)\.(?:get_paginator\(\")?([a-z_]+)[\"(]", src):
            svc, op = m.groups()
            if op in ("get_paginator", "meta"):
                continue
            used.add(f"{svc}:" + "".join(w.capitalize() for w in op.split("_")))
    assert used, "found no AWS calls"
    assert used <= allowed, used - allowed


def test_filter_accepts_everything_within_the_rule_limit(tpl: dict[str, Any]) -> None:
    rules = [r["Properties"] for r in tpl["Resources"].values() if r["Type"] == "AWS::EC2::TrafficMirrorFilterRule"]
    for direction in ("ingress", "egress"):
        mine = [r for r in rules if r["TrafficDirection"] == direction]
        assert len(mine) <= 10
        accept = [r for r in mine if r["RuleAction"] == "accept"]
        assert any(r["SourceCidrBlock"] == r["DestinationCidrBlock"] == "0.0.0.0/0" for r in accept)
        # Exclusions are evaluated first (lower rule numbers).
        assert all(r["RuleNumber"] < min(a["RuleNumber"] for a in accept) for r in mine if r["RuleAction"] == "reject")


def test_lambda_wiring(tpl: dict[str, Any]) -> None:
    res = tpl["Resources"]
    fn = res["Function"]["Properties"]
    assert fn["Handler"] == "mirror_sessions.handler.handler"
    from mirror_sessions.handler import handler

    assert callable(handler)
    env = fn["Environment"]["Variables"]
    assert {"TARGET_IDS", "FILTER_ID", "CLUSTERS", "SERVICES", "TASK_TAG", "LAUNCH_TYPES"} <= set(env)
    dlq = {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    assert res["FunctionAsyncConfig"]["Properties"]["DestinationConfig"]["OnFailure"]["Destination"] == dlq
    for rule in ("TaskStateRule", "InstanceStateRule", "ReconcileRule"):
        (target,) = res[rule]["Properties"]["Targets"]
        assert target["DeadLetterConfig"]["Arn"] == dlq
        perm = [r for r in res.values() if r["Type"] == "AWS::Lambda::Permission"]
        assert any(p["Properties"]["SourceArn"] == {"Fn::GetAtt": [rule, "Arn"]} for p in perm)
    assert res["FunctionLogGroup"]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def _pattern(tpl: dict[str, Any], rule: str) -> dict[str, Any]:
    p = json.loads(json.dumps(tpl["Resources"][rule]["Properties"]["EventPattern"]))
    p.get("detail", {}).pop("clusterArn", None)  # the !If: no cluster filter
    return p


def test_event_patterns_match_the_documented_events(tpl: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The rules' patterns, evaluated by moto's EventBridge pattern matcher against events in the
    documented formats (moto's delivery to targets needs an extra package, so the matcher is
    called directly)."""
    from moto import mock_aws
    from moto.events.models import EventPattern

    from mirror_sessions.events import InstanceState, Reconcile, TaskState, parse_event

    task_rule = EventPattern.load(json.dumps(_pattern(tpl, "TaskStateRule")))
    inst_rule = EventPattern.load(json.dumps(_pattern(tpl, "InstanceStateRule")))
    aws_env(monkeypatch)
    with mock_aws():
        world = build_world()
        (task,) = world.run_tasks(1)
        task_events = {
            s: world.task_event(task, s) for s in ("PROVISIONING", "PENDING", "RUNNING", "DEPROVISIONING", "STOPPED")
        }
    matched = sorted(s for s, ev in task_events.items() if task_rule.matches_event(ev))
    assert matched == ["DEPROVISIONING", "RUNNING", "STOPPED"]
    assert not inst_rule.matches_event(task_events["RUNNING"])
    states = ("pending", "running", "stopping", "stopped", "shutting-down", "terminated")
    matched = [s for s in states if inst_rule.matches_event(instance_event("i-0123456789abcdef0", s))]
    assert matched == ["running", "stopping", "stopped", "shutting-down", "terminated"]
    assert not task_rule.matches_event(instance_event("i-0123456789abcdef0", "running"))
    # A cluster filter, when given, is on detail.clusterArn.
    cond = tpl["Resources"]["TaskStateRule"]["Properties"]["EventPattern"]["detail"]["clusterArn"]
    assert cond["Fn::If"][0] == "HasClusterFilter" and cond["Fn::If"][1] == {"Ref": "ClusterArns"}
    with_cluster = _pattern(tpl, "TaskStateRule")
    with_cluster["detail"]["clusterArn"] = [world.cluster_arn]
    assert EventPattern.load(json.dumps(with_cluster)).matches_event(task_events["RUNNING"])
    with_cluster["detail"]["clusterArn"] = ["arn:aws:ecs:us-east-1:123456789012:cluster/other"]
    assert not EventPattern.load(json.dumps(with_cluster)).matches_event(task_events["RUNNING"])
    # What the rules deliver is what the Lambda parses.
    assert isinstance(parse_event(task_events["RUNNING"]), TaskState)
    assert isinstance(parse_event(instance_event("i-1", "running")), InstanceState)
    assert isinstance(parse_event(scheduled_event()), Reconcile)
    assert tpl["Resources"]["ReconcileRule"]["Properties"]["ScheduleExpression"] == {"Ref": "ReconcileSchedule"}


def test_receiver_user_data(tpl: dict[str, Any]) -> None:
    script = (ROOT / "deploy" / "receiver-userdata.sh").read_text()
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    # Every substitution is a parameter, a pseudo parameter or the Sub's own variable.
    names = set(re.findall(r"\$\{([^}!]+)\}", script))
    assert names <= set(tpl["Parameters"]) | {"AWS::Region", "TrafficMirrorTarget"}, names
    # The config it writes is valid for the receiver.
    from receiver.config.file import parse_config

    toml = script.split("<<'TOML'\n")[1].split("\nTOML")[0]
    toml = toml.replace("${HealthCheckPort}", "9109").replace("${AWS::Region}", REGION)
    cfg = parse_config(tomllib.loads(toml.replace("${TrafficMirrorTarget}", "tmt-0123456789abcdef0")))
    assert cfg.aws.enabled and cfg.aws.target_ids == ["tmt-0123456789abcdef0"]
    assert cfg.metrics.listen.endswith(":9109")
    assert "systemctl enable --now vxmirror.service" in script
    # The instance and the launch template both carry it.
    inst = tpl["Resources"]["ReceiverInstance"]["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"][0]
    lt = tpl["Resources"]["ReceiverLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
    assert inst == script and lt["Fn::Base64"]["Fn::Sub"][0] == script


def test_nlb_target_group_keeps_a_mirror_source_on_one_receiver(tpl: dict[str, Any]) -> None:
    """nlb mode: source-IP affinity (both directions of every flow of one mirror source reach one
    receiver whatever the outer ports), and a bounded drain that ends with the NLB closing the
    flows, using only attributes AWS accepts on a UDP target group (docs/deploy.md)."""
    res = tpl["Resources"]
    tg = res["NlbTargetGroup"]
    assert tg["Condition"] == "IsNlb" and tpl["Conditions"]["IsNlb"] == {"Fn::Equals": [{"Ref": "TargetMode"}, "nlb"]}
    props = tg["Properties"]
    assert props["Protocol"] == "UDP" and props["Port"] == 4789
    attrs = {a["Key"]: a["Value"] for a in props["TargetGroupAttributes"]}
    assert attrs == {
        "stickiness.enabled": "true",
        "stickiness.type": "source_ip",
        "deregistration_delay.timeout_seconds": {"Ref": "DrainSeconds"},
        "deregistration_delay.connection_termination.enabled": "true",
    }
    # AWS: 0-3600 seconds; terminating flows to unhealthy targets cannot be enabled for UDP
    drain = tpl["Parameters"]["DrainSeconds"]
    assert (drain["MinValue"], drain["MaxValue"]) == (0, 3600) and 0 <= drain["Default"] <= 3600
    assert not any(k.startswith("target_health_state.") for k in attrs)
    # the listener forwards UDP 4789 to that group, and the receivers register in it
    listener = res["NlbListener"]["Properties"]
    assert listener["Protocol"] == "UDP" and listener["Port"] == 4789
    assert listener["DefaultActions"] == [{"Type": "forward", "TargetGroupArn": {"Ref": "NlbTargetGroup"}}]
    assert res["ReceiverGroup"]["Properties"]["TargetGroupARNs"] == [{"Ref": "NlbTargetGroup"}]

"""`make lambda-zip` builds a zip with the mirror_sessions package alone, importable on its own
(boto3 comes with the Lambda runtime); configuration errors name the variable."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mirror_sessions.config import SettingsError, TagMatch, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_lambda_zip_target_builds_an_importable_package(tmp_path: Path) -> None:
    out = tmp_path / "fn.zip"
    proc = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "lambda-zip", f"LAMBDA_ZIP={out}", f"PYTHON={sys.executable}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    names = zipfile.ZipFile(out).namelist()
    assert "mirror_sessions/handler.py" in names and "mirror_sessions/__init__.py" in names
    assert all(n.startswith("mirror_sessions/") for n in names), names
    assert not any("__pycache__" in n for n in names)
    # Import the handler from the zip alone, as the Lambda runtime does (isolated from the checkout).
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import mirror_sessions.handler as h; "
        "assert h.__file__.startswith(sys.argv[1]), h.__file__; print(h.handler.__name__)"
    )
    run = subprocess.run(
        [sys.executable, "-I", "-c", code, str(out)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "handler"
    # Deterministic: the same sources give the same bytes.
    again = tmp_path / "again.zip"
    subprocess.run([sys.executable, str(ROOT / "deploy" / "build_lambda_zip.py"), str(again)], check=True)
    assert again.read_bytes() == out.read_bytes()


BASE = {"TARGET_IDS": "tmt-0123456789abcdef0, tmt-0123456789abcdef1", "FILTER_ID": "tmf-0123456789abcdef0"}


def test_settings_from_environment() -> None:
    s = load_settings({**BASE, "CLUSTERS": "prod, arn:aws:ecs:us-east-1:1:cluster/dev", "TASK_TAG": "mirror=yes"})
    assert s.target_ids == ("tmt-0123456789abcdef0", "tmt-0123456789abcdef1")
    assert s.clusters == ("prod", "arn:aws:ecs:us-east-1:1:cluster/dev")
    assert s.task_tag == TagMatch("mirror", "yes")
    assert s.launch_types == ("FARGATE",) and s.session_number == 1 and s.packet_length is None
    assert s.instance_tag == TagMatch("vxmirror:mirror", "true")
    assert load_settings({**BASE, "LAUNCH_TYPES": "*", "INSTANCE_TAG": ""}).launch_types == ()
    assert load_settings({**BASE, "INSTANCE_TAG": ""}).instance_tag is None


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"FILTER_ID": "tmf-0123456789abcdef0"}, "TARGET_IDS"),
        ({"TARGET_IDS": "tmt-0123456789abcdef0"}, "FILTER_ID"),
        ({**BASE, "TARGET_IDS": "tmt-1 2"}, "TARGET_IDS"),
        ({**BASE, "TARGET_IDS": "tmt-0123456789abcdef0,tmt-0123456789abcdef0"}, "TARGET_IDS"),
        ({**BASE, "SESSION_NUMBER": "0"}, "SESSION_NUMBER"),
        ({**BASE, "SESSION_NUMBER": "x"}, "SESSION_NUMBER"),
        ({**BASE, "PACKET_LENGTH": "70000"}, "PACKET_LENGTH"),
        ({**BASE, "LAUNCH_TYPES": "LAMBDA"}, "LAUNCH_TYPES"),
        ({**BASE, "TASK_TAG": "=x"}, "TASK_TAG"),
    ],
)
def test_settings_errors_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError) as e:
        load_settings(env)
    assert e.value.variable == variable and variable in str(e.value)

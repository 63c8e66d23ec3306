"""The systemd unit (systemd-analyze verify), the sysctl drop-in, and sd_notify messages.

PID 1 here is not systemd, so the unit cannot be started: ``systemd-analyze verify`` checks
it, and the notify protocol is tested with a NOTIFY_SOCKET this test binds itself.

Why the unit is verified from a copy: ``verify`` also checks that ExecStart's binary
exists and is executable, and the unit names the installed path (/opt/vxmirror/bin/vxmirror,
see docs/install.md), which a test machine does not have. The copy differs only in that
path, replaced by this checkout's own ``vxmirror`` script; a test shows that the original
fails for that reason alone.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from receiver.process import sdnotify

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "vxmirror.service"
INSTALLED = "/opt/vxmirror/bin/vxmirror"
VXMIRROR = Path(sys.executable).parent / "vxmirror"


def unit_settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def verify(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    unit = tmp_path / "vxmirror.service"
    unit.write_text(text)
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, check=False
    )


def test_unit_verifies(tmp_path: Path) -> None:
    assert VXMIRROR.exists()
    r = verify(tmp_path, UNIT.read_text().replace(INSTALLED, str(VXMIRROR)))
    assert r.returncode == 0, r.stderr
    assert "vxmirror.service" not in r.stderr, r.stderr  # no warning about our unit


def test_original_unit_fails_only_for_the_missing_binary(tmp_path: Path) -> None:
    if Path(INSTALLED).exists():
        pytest.skip("vxmirror is installed under /opt on this machine")
    r = verify(tmp_path, UNIT.read_text())
    assert r.returncode != 0
    problems = [ln for ln in r.stderr.splitlines() if "vxmirror.service" in ln]
    assert problems and all(INSTALLED in ln for ln in problems), r.stderr


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    text = UNIT.read_text().replace(INSTALLED, str(VXMIRROR)).replace("Type=notify", "Type=notifyy")
    r = verify(tmp_path, text)
    assert "notifyy" in r.stderr


def test_unit_has_the_required_settings() -> None:
    s = unit_settings(UNIT.read_text())
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["WatchdogSec"] and s["Restart"] == ["on-failure"]
    assert s["User"] == ["vxmirror"] and s["Group"] == ["vxmirror"]
    assert s["CapabilityBoundingSet"] == [""] and s["AmbientCapabilities"] == [""]
    for k in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "MemoryDenyWriteExecute",
    ):
        assert s[k] == ["yes"], k
    assert s["ProtectSystem"] == ["strict"]
    assert s["ReadWritePaths"] == ["/var/lib/vxmirror"]
    assert s["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX AF_NETLINK"]
    assert "@system-service" in s["SystemCallFilter"]
    assert int(s["LimitNOFILE"][0]) >= 65536
    assert "--data-dir /var/lib/vxmirror" in s["ExecStart"][0]


def test_sysctl_dropin_names_real_keys_and_lifts_the_default_buffer() -> None:
    values = {}
    for line in (ROOT / "systemd" / "99-vxmirror.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            k, v = (x.strip() for x in line.split("=", 1))
            assert Path("/proc/sys", *k.split(".")).exists(), k
            values[k] = int(v)
    assert set(values) == {"net.core.rmem_max", "net.core.rmem_default", "net.core.netdev_max_backlog"}
    assert values["net.core.rmem_max"] >= 64 << 20  # the listener's default receive buffer


def test_sysusers_line() -> None:
    line = [x for x in (ROOT / "systemd" / "vxmirror.sysusers").read_text().splitlines() if x and x[0] != "#"]
    assert line[0].split()[:2] == ["u", "vxmirror"]


def test_data_path_runs_without_writable_executable_memory() -> None:
    # MemoryDenyWriteExecute=yes: the kernel's own form of it (prctl PR_SET_MDWE, Linux >= 6.3)
    # applied to a Python process that imports numpy/uvloop and uses the ctypes recvmmsg/sendmmsg.
    code = r"""
import ctypes, mmap, socket
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    print("NO_MDWE"); raise SystemExit(0)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    print("WX_ALLOWED")
except OSError:
    pass
import numpy, uvloop, orjson
from receiver.listen.mmsg import RecvRing
from receiver.replay import replay_batches
from receiver.traffic import TrafficSpec, generate
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
st = replay_batches(generate(TrafficSpec(n_packets=100, n_flows=5)).batches(), to=s.getsockname())
ring = RecvRing(256, 2048)
loop = uvloop.new_event_loop(); loop.run_until_complete(__import__("asyncio").sleep(0)); loop.close()
print("OK", st.sent, ring.recv(s.fileno(), 256))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    if "NO_MDWE" in r.stdout:
        pytest.skip("kernel without PR_SET_MDWE")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["OK", "100", "100"]


# -- sd_notify -----------------------------------------------------------------------------------
class NotifyListener:
    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)

    def messages(self, until: float, stop: str | None = None) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        deadline = time.monotonic() + until
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            out.append(dict(line.split("=", 1) for line in data.splitlines()))
            if stop and any(stop in m for m in out):
                break
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, NotifyListener]]:
    path = str(tmp_path / "notify.sock")
    n = NotifyListener(path)
    yield path, n
    n.close()


NOTIFY_SCRIPT = """
from receiver.process import sdnotify
assert sdnotify.notify(ready=True, status="listening")
assert sdnotify.notify(watchdog=True, status="1000 pkt/s, 3 flows active")
n = sdnotify.Notifier(); n.ready(); n.watchdog(); n.status("s"); n.stopping()
print(sdnotify.watchdog_interval())
"""


def test_sdnotify_over_a_path_socket(listener: tuple[str, NotifyListener]) -> None:
    path, n = listener
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "3000000"}
    r = subprocess.run(
        [sys.executable, "-c", NOTIFY_SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1.5"
    msgs = n.messages(1.0, stop="STOPPING")
    assert msgs[0] == {"READY": "1", "STATUS": "listening"}
    assert msgs[1] == {"WATCHDOG": "1", "STATUS": "1000 pkt/s, 3 flows active"}
    assert msgs[2:] == [{"READY": "1"}, {"WATCHDOG": "1"}, {"STATUS": "s"}, {"STOPPING": "1"}]


def test_sdnotify_over_an_abstract_socket() -> None:
    name = f"vxmirror-test-{os.getpid()}-{time.monotonic_ns()}"
    n = NotifyListener("\0" + name)
    try:
        env = {**os.environ, "NOTIFY_SOCKET": "@" + name}
        r = subprocess.run(
            [sys.executable, "-c", NOTIFY_SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True, check=False
        )
        assert r.returncode == 0, r.stderr
        msgs = n.messages(1.0, stop="STOPPING")
    finally:
        n.close()
    assert msgs[0]["READY"] == "1" and msgs[1]["WATCHDOG"] == "1" and "STATUS" in msgs[1]


def test_sdnotify_without_systemd_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    sdnotify.reset()
    assert sdnotify.notify(ready=True) is False
    assert sdnotify.Notifier().enabled is False
    # a vanished socket is not an error either
    assert sdnotify.Notifier("/nonexistent/notify.sock").notify(ready=True) is False
    sdnotify.reset()


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_USEC", "junk")
    assert sdnotify.watchdog_interval() is None


def test_the_real_service_notifies(listener: tuple[str, NotifyListener], tmp_path: Path) -> None:
    path, n = listener
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}
    proc = subprocess.Popen(
        [
            str(VXMIRROR),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--data-dir",
            str(tmp_path / "data"),
            "--log-format",
            "text",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        msgs = n.messages(20.0, stop="WATCHDOG")
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        msgs += n.messages(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read() if proc.stderr else ""
    assert any(m.get("READY") == "1" for m in msgs), (msgs, err)
    ready_at = next(i for i, m in enumerate(msgs) if m.get("READY") == "1")
    assert any(m.get("WATCHDOG") == "1" for m in msgs[ready_at:]), (msgs, err)
    status = [m["STATUS"] for m in msgs if "STATUS" in m]
    assert status and any("flows" in s for s in status), status
    assert any(m.get("STOPPING") == "1" for m in msgs), msgs
    assert rc == 0, err

"""`vxmirror check-config` and the serve flags: validation errors name the file, the key and the problem."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from receiver.commands.serve import apply_overrides
from receiver.config.file import load_config
from receiver.config.schema import ConfigError
from receiver.listen.settings import DEFAULT_ALLOW, ListenConfig, MetricsConfig
from tests.listen_fixtures import ROOT, VXMIRROR


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VXMIRROR, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_check_config_accepts_a_valid_file(tmp_path: Path) -> None:
    f = tmp_path / "ok.toml"
    f.write_text(
        'data_dir = "/tmp/x"\n[listen]\naddresses = ["127.0.0.1:4789", "[::1]:6081"]\nworkers = 2\n'
        'allow_sources = ["10.0.0.0/8"]\nslot_size = 9216\n[metrics]\nlisten = "127.0.0.1:0"\n'
    )
    r = _cli("check-config", str(f))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"ok: {f}") and "127.0.0.1:4789" in r.stdout
    cfg = load_config(f)
    assert cfg.listen.workers == 2 and not cfg.metrics.enabled


@pytest.mark.parametrize(
    ("toml", "key", "problem"),
    [
        ('[listen]\naddresses = ["0.0.0.0"]\n', "listen.addresses[0]", "HOST:PORT"),
        ('[listen]\nallow_sources = ["10.0.0.0/33"]\n', "listen.allow_sources[0]", "10.0.0.0/33"),
        ("[listen]\nrcvbuf = 12\n", "listen.rcvbuf", ">= 4096"),
        ("[listen]\nslot_size = 100000\n", "listen.slot_size", "<= 65535"),
        ('[listen]\nworkers = "two"\n', "listen.workers", "integer"),
        ("[listen]\nrecieve = 1\n", "listen.recieve", "unknown key"),
        ('[metrics]\nlisten = "localhost"\n', "metrics.listen", "HOST:PORT"),
        ("[listen]\nrecv_batch = 512\nring_slots = 256\n", "listen.recv_batch", "ring_slots"),
        ("[listen\n", "(syntax)", ""),
    ],
)
def test_check_config_names_file_key_and_problem(tmp_path: Path, toml: str, key: str, problem: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(toml)
    r = _cli("check-config", str(f))
    assert r.returncode == 2
    assert str(f) in r.stderr and key in r.stderr and problem in r.stderr
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert e.value.key == key


def test_check_config_missing_file(tmp_path: Path) -> None:
    r = _cli("check-config", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and "cannot read" in r.stderr


def test_defaults() -> None:
    lc, mc = ListenConfig(), MetricsConfig()
    assert lc.addresses == ["0.0.0.0:4789", "0.0.0.0:6081"]
    assert lc.rcvbuf == 64 << 20 and lc.slot_size >= 9001 + 8 + 14 and lc.ring_slots == 8192
    assert lc.workers == 0 and lc.steering and lc.allow_sources == DEFAULT_ALLOW
    assert mc.listen == "127.0.0.1:9109" and mc.enabled


def _ns(**kw: object) -> argparse.Namespace:
    base = {"listen": None, "workers": None, "metrics": None, "data_dir": None, "log_format": None}
    return argparse.Namespace(**{**base, **kw})


def test_flags_override_the_file(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('data_dir = "/var/x"\n[listen]\naddresses = ["0.0.0.0:4789"]\nworkers = 4\n')
    cfg = apply_overrides(
        load_config(f),
        _ns(listen=["127.0.0.1:5000", "[::1]:5001"], workers=1, metrics="127.0.0.1:0", data_dir=str(tmp_path)),
    )
    assert cfg.listen.addresses == ["127.0.0.1:5000", "[::1]:5001"]
    assert cfg.listen.workers == 1 and not cfg.metrics.enabled and cfg.data_dir == str(tmp_path)


def test_bad_flags_are_named() -> None:
    with pytest.raises(ConfigError) as e:
        apply_overrides(load_config(None), _ns(listen=["nonsense"]))
    assert e.value.file == "--listen"
    r = _cli("serve", "--listen", "127.0.0.1:99999")
    assert r.returncode == 2 and "--listen" in r.stderr and "bad port" in r.stderr
    r = _cli("serve", "--metrics", "nohost")
    assert r.returncode == 2 and "--metrics" in r.stderr

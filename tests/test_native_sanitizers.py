"""The C library built with AddressSanitizer and UndefinedBehaviorSanitizer, under the tests that
drive it hardest: the C-against-numpy comparisons (fuzzed packets, cut and corrupt captures, lane
scans on captures full of fake record headers, TCP flows in every order), the C reading thread
on garbage, the pcapng walk on random files, the receive thread (ring wrap-around, truncation,
UDP_GRO splitting) and the credential screen (random excerpts). An
out-of-bounds read or write, a use after free or undefined behaviour aborts the run with the
sanitizer's report, where a normal build might read a neighbour's bytes silently."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

RECEIVER = Path(__file__).resolve().parents[1] / "receiver"
NATIVE = RECEIVER / "native"
# the shared core, and each stage's C twin beside its stage
SOURCES = [NATIVE / "vxnative.c", RECEIVER / "listen" / "vxrecv.c", RECEIVER / "capture" / "vxread.c",
           RECEIVER / "capture" / "vxguard.c", RECEIVER / "flows" / "vxrecords.c"]


def _runtime(name: str) -> str:
    path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True, check=True).stdout
    return path.strip()


@pytest.mark.slow
def test_the_c_library_is_clean_under_the_sanitizers(tmp_path: Path) -> None:
    lib = tmp_path / "_vxnative_asan.so"
    subprocess.run(
        ["gcc", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
         "-fno-omit-frame-pointer", "-ffp-contract=off", "-fvisibility=hidden", "-shared", "-fPIC",
         f"-I{NATIVE}", "-o", str(lib), *(str(s) for s in SOURCES)],
        check=True,
    )
    asan, ubsan = _runtime("libasan.so"), _runtime("libubsan.so")
    assert Path(asan).is_file() and Path(ubsan).is_file(), "gcc's sanitizer runtimes are missing"
    env = dict(os.environ, VXMIRROR_NATIVE_LIB=str(lib), LD_PRELOAD=f"{asan} {ubsan}",
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1", UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    env.pop("VXMIRROR_NATIVE", None)
    here = Path(__file__).resolve().parent
    # the sanitized build is the one loaded (not the installed one, not the numpy twins)
    which = subprocess.run(
        [sys.executable, "-c", "from receiver import native; from receiver.process import nativelib; "
         "assert native.available(); print(nativelib.library_path())"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert which.returncode == 0 and which.stdout.strip() == str(lib), which.stdout + which.stderr
    run = subprocess.run(  # -s: the sanitizer writes its report to fd 2, which pytest would capture and lose
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", str(here / "test_native.py"),
         str(here / "test_readahead.py"), str(here / "test_capture.py"), str(here / "test_record_encode.py"),
         str(here / "test_rxthread.py"), str(here / "test_reorder.py"),
         str(here / "test_redact.py::test_native_screen_agrees_with_its_python_twin"),
         str(here / "test_redact.py::test_many_flows_with_and_without_secrets"), "-k",
         "not tshark"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    report = run.stderr
    for mark in ("ERROR: AddressSanitizer", "runtime error:"):  # the sanitizer's own report first
        if mark in report:
            report = report[report.index(mark) - 200 :]
            break
    assert run.returncode == 0, run.stdout[-3000:] + report[:5000]

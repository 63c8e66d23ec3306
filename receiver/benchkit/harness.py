"""Run every benchmark of a profile in one go and write the results.

    doc = run("quick", out=Path("bench/results"), bench_dir=Path("bench"), readme=Path("bench/README.md"))
    code = check(out=..., bench_dir=..., stored=Path("bench/results/latest.json"), margin=0.25)

Sections (each timed; a section that cannot run here is recorded as skipped with the
reason, one that fails as failed with the error, and the others still run):

- ``micro``: pytest-benchmark micro-benchmarks (bench/test_micro.py)
- ``offline``: ``vxmirror read`` against tshark and a dpkt loop on three generated captures
  (realistic mix, long flows, SYN flood)
- ``core``: packets/s of ``Engine.process`` over batches in memory
- ``memory``: bytes per active flow at the profile's flow counts
- ``jsonl``: records/s of the JSON-lines forwarder through the runner
- ``forwarders``: Splunk HEC and Kafka records/s (bench/bench_forwarders.py)
- ``pcap_writer``: pcap and pcapng frames/s (bench/bench_pcap_writer.py)
- ``live``: the loss-free sweep of ``vxmirror serve`` against the C receiver (bench/live_sweep.py)
- ``churn``: loss-free new flows/s of ``vxmirror serve`` fed a new flow every N datagrams
  (bench/live_sweep.py --churn)
- ``capture``: the disk's write rate (dd), and loss-free rates of ``vxmirror serve`` on the
  realistic mix with JSON lines alone, with pcap under the default policy, with every frame
  (bench/live_sweep.py --capture)

Output: ``<out>/latest.json`` (the run, the machine, and ``stored_checks``: the latest figures
of the regression guard per profile), PNG plots in ``<out>``, and the table in the README
between its markers. A copy of each run goes to ``<out>/history/<UTC timestamp>-<profile>.json``
(a local history, not kept in git: the figures' history is git's history of latest.json).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import core, jsonl_sink, machine, memory, offline, plots, report, scripts
from .profiles import DEFAULT_WORK, PROFILES, SECTIONS, Profile

Log = Callable[[str], None]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _section(name: str, profile: Profile, out: Path, work: Path, bench_dir: Path | None, log: Log) -> dict[str, Any]:
    if name == "micro":
        return scripts.micro(profile, bench_dir, out, log)
    if name == "offline":
        return offline.run(profile, work, log)
    if name == "core":
        return core.run(profile, log)
    if name == "memory":
        return memory.run(profile, log)
    if name == "jsonl":
        return jsonl_sink.run(profile, work, log)
    if name == "forwarders":
        return scripts.forwarders(profile, bench_dir, out, log)
    if name == "pcap_writer":
        return scripts.pcap_writer(profile, bench_dir, out, log)
    if name == "live":
        return scripts.live(profile, bench_dir, out, log)
    if name == "churn":
        return scripts.churn(profile, bench_dir, out, log)
    if name == "capture":
        return scripts.capture(profile, bench_dir, out, log)
    raise ValueError(f"unknown section {name!r}; known: {', '.join(SECTIONS)}")


def measure(
    profile: Profile,
    out: Path,
    *,
    bench_dir: Path | None,
    sections: Sequence[str] = SECTIONS,
    work: Path = DEFAULT_WORK,
    command: str | None = None,
    log: Log = _log,
) -> dict[str, Any]:
    """Run the sections; returns the run's document (nothing written but the sections' own files)."""
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    doc: dict[str, Any] = {
        "started_utc": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "profile": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(profile).items()},
        "command": command or " ".join(sys.argv),
        "machine": machine.describe(),
        "source": machine.source(),
        "sections": {},
    }
    for name in sections:
        log(f"[{name}] ...")
        t = time.perf_counter()
        entry: dict[str, Any]
        try:
            entry = {"status": "ok", "data": _section(name, profile, out, work, bench_dir, log)}
        except scripts.Unavailable as e:
            entry = {"status": "skipped", "reason": str(e)}
        except Exception as e:  # one broken benchmark must not lose the others' figures
            entry = {"status": "failed", "reason": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        entry["seconds"] = round(time.perf_counter() - t, 1)
        doc["sections"][name] = entry
        log(f"[{name}] {entry['status']} in {entry['seconds']:.0f} s" +
            (f": {entry['reason'].splitlines()[0]}" if "reason" in entry else ""))
    doc["wall_seconds"] = round(time.perf_counter() - t0, 1)
    doc["checks"] = {k: v for k, (v, _higher) in report.checks(doc).items()}
    doc["stamp"] = started.strftime("%Y%m%dT%H%M%SZ")
    return doc


HISTORY = "history"


def _load(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def _previous(out: Path, profile: str) -> dict[str, Any]:
    """The last run of ``profile`` (its sections are carried over), with the stored checks of every
    profile: latest.json, or when another profile ran last, the newest run of this one in the history."""
    latest = _load(out / "latest.json")
    if latest.get("profile", {}).get("name") == profile:
        return latest
    stored = latest.get("stored_checks", {})
    for path in sorted((out / HISTORY).glob(f"*-{profile}.json"), reverse=True):
        older = _load(path)
        if older:
            return {**older, "stored_checks": stored}
    return {"stored_checks": stored}


def run(
    profile_name: str | Profile,
    out: Path,
    *,
    bench_dir: Path | None,
    readme: Path | None = None,
    sections: Sequence[str] = SECTIONS,
    work: Path = DEFAULT_WORK,
    command: str | None = None,
    log: Log = _log,
) -> dict[str, Any]:
    """Measure and write: the timestamped JSON, latest.json, the plots and the README table."""
    profile = PROFILES[profile_name] if isinstance(profile_name, str) else profile_name
    doc = measure(profile, out, bench_dir=bench_dir, sections=sections, work=work, command=command, log=log)
    doc["file"] = f"{doc['stamp']}-{profile.name}.json"
    latest = out / "latest.json"
    previous = _previous(out, profile.name)
    stored: dict[str, dict[str, float]] = dict(previous.get("stored_checks", {}))
    _carry_over(doc, previous)
    doc["checks"] = {k: v for k, (v, _higher) in report.checks(doc).items()}
    doc["plots"] = plots.draw(doc, out)
    stored[profile.name] = {**stored.get(profile.name, {}), **doc["checks"]}
    doc["stored_checks"] = stored
    text = json.dumps(doc, indent=1, default=str)
    (out / HISTORY).mkdir(exist_ok=True)
    (out / HISTORY / doc["file"]).write_text(text)
    tmp = latest.with_suffix(".part")
    tmp.write_text(text)
    tmp.replace(latest)
    if readme is not None:
        write_readme(doc, out, readme)
    log(f"wrote {latest}, {out / HISTORY / doc['file']}" + (f" and {readme}" if readme else ""))
    return doc


def _carry_over(doc: dict[str, Any], previous: dict[str, Any]) -> None:
    """A run of some sections (--only/--skip) keeps the other sections of the previous run of the
    same profile, each marked with the file it was measured in."""
    if previous.get("profile", {}).get("name") != doc["profile"]["name"]:
        return
    carried = []
    for name in SECTIONS:
        if name not in doc["sections"] and name in previous.get("sections", {}):
            sec = dict(previous["sections"][name])
            sec.setdefault("measured_in", previous.get("file"))
            doc["sections"][name] = sec
            carried.append(name)
    if carried:
        doc["carried_over"] = carried
    doc["sections"] = {n: doc["sections"][n] for n in SECTIONS if n in doc["sections"]}


def write_readme(doc: dict[str, Any], out: Path, readme: Path) -> None:
    existing = readme.read_text() if readme.exists() else None
    rel = os.path.relpath(out.resolve(), readme.resolve().parent)
    readme.write_text(report.merge_readme(existing, report.readme_block(doc, rel)))


def render(latest: Path, readme: Path) -> None:
    """Rewrite the README table from stored results (after a change of the report's layout)."""
    write_readme(json.loads(latest.read_text()), latest.parent, readme)


def check(
    stored_path: Path,
    *,
    bench_dir: Path | None,
    margin: float,
    profile_name: str | Profile = "quick",
    sections: Sequence[str] = SECTIONS,
    work: Path = DEFAULT_WORK,
    log: Log = _log,
) -> int:
    """Regression guard: a fresh run against the stored figures; 1 if a figure got worse by more than margin."""
    if not stored_path.exists():
        log(f"no stored figures at {stored_path}: run `make bench-quick` (or `make bench`) first")
        return 2
    profile = PROFILES[profile_name] if isinstance(profile_name, str) else profile_name
    stored_doc = json.loads(stored_path.read_text())
    stored = stored_doc.get("stored_checks", {}).get(profile.name)
    if not stored:
        log(f"{stored_path} has no figures of the {profile.name} profile to compare with")
        return 2
    out = Path(tempfile.mkdtemp(prefix="vxmirror-bench-check-"))
    try:
        doc = measure(profile, out, bench_dir=bench_dir, sections=sections, work=work,
                      command="bench-check", log=log)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    rows = report.compare(report.checks(doc), stored, margin)
    if not rows:
        log("nothing to compare: no figure of this run is in the stored results")
        return 2
    width = max(len(r["name"]) for r in rows)
    print(f"{'figure':{width}}  {'stored':>10}  {'now':>10}  change   (margin {margin:.0%})")
    for r in rows:
        flag = "REGRESSED" if r["regressed"] else "ok"
        better = "higher" if r["higher_is_better"] else "lower"
        print(f"{r['name']:{width}}  {r['stored']:>10.3g}  {r['current']:>10.3g}  {r['change']:+7.1%}  {flag}"
              f" ({better} is better)")
    failed = [r["name"] for r in rows if r["regressed"]]
    broken = [n for n, s in doc["sections"].items() if s["status"] == "failed"]
    if broken:
        print(f"sections that failed: {', '.join(broken)}")
    if failed:
        print(f"regression beyond {margin:.0%}: {', '.join(failed)}")
        return 1
    return 1 if broken else 0

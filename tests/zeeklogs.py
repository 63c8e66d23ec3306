"""Read Zeek's baseline logs (../shared/captures/zeek/*/) into lists of dicts.

Formats handled:
- full logs: ``#separator``, ``#fields``/``#types`` header lines, tab-separated rows,
  ``#close``; ``-`` is unset (None), ``(empty)`` an empty container;
- ``*.cut`` files (btest-diff-cut): a first comment line, then a bare tab-separated header
  naming the kept columns (a column may be named twice: later duplicates get ``#2``, ``#3``),
  then rows;
- every file may start with the ``### BTest baseline data ...`` line.

Values are typed from ``#types`` where present (count/int/port -> int, interval/double ->
float, bool -> bool, set/vector -> list of strings); cut files have no types, so values stay
strings except ``-``. The masked first timestamp (``XXXXXXXXXX.XXXXXX``) stays a string.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ZEEK_DIR = Path(__file__).resolve().parents[2] / "shared" / "captures" / "zeek"


def _convert(value: str, ztype: str | None, set_sep: str, empty: str, unset: str) -> Any:
    if value == unset:
        return None
    if ztype is None:
        return value
    if ztype.startswith(("set[", "vector[")):
        if value == empty:
            return []
        return value.split(set_sep)
    if value == empty:
        return ""
    if ztype in ("count", "int", "port"):
        return int(value)
    if ztype in ("interval", "double"):
        return float(value)
    if ztype == "time":
        try:
            return float(value)
        except ValueError:
            return value  # masked
    if ztype == "bool":
        return value == "T"
    return value


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """Rows of one Zeek log (full or cut) as dicts keyed by column name."""
    sep, set_sep, empty, unset = "\t", ",", "(empty)", "-"
    fields: list[str] | None = None
    types: list[str] | None = None
    rows: list[dict[str, Any]] = []
    for raw in Path(path).read_text().splitlines():
        if not raw or raw.startswith("###"):
            continue
        if raw.startswith("#"):
            key, _, rest = raw[1:].partition(sep if not raw.startswith("#separator") else " ")
            if key == "separator":
                sep = rest.strip().encode().decode("unicode_escape")
            elif key == "set_separator":
                set_sep = rest
            elif key == "empty_field":
                empty = rest
            elif key == "unset_field":
                unset = rest
            elif key == "fields":
                fields = _unique(rest.split(sep))
            elif key == "types":
                types = rest.split(sep)
            continue
        cols = raw.split(sep)
        if fields is None:  # a cut file: the first plain line is the header
            fields = _unique(cols)
            continue
        typs: list[str | None] = list(types) if types else [None] * len(fields)
        rows.append({f: _convert(v, t, set_sep, empty, unset) for f, v, t in zip(fields, cols, typs, strict=False)})
    return rows


def trace_logs(trace_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """All logs of one trace folder, keyed by file name (``conn.log``, ``conn.log.cut``, ...)."""
    d = Path(trace_dir)
    return {p.name: read_log(p) for p in sorted(d.iterdir()) if p.name.endswith((".log", ".log.cut"))}


def trace_file(trace_dir: str | Path) -> Path:
    """The capture file of a trace folder."""
    (p,) = [p for p in Path(trace_dir).iterdir() if p.suffix in (".pcap", ".pcapng")]
    return p

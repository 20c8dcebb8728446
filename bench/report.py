#!/usr/bin/env python3
"""Join the Rust and Python measures of one bench run into a table and a JSON-lines file.

Usage: report.py RAW.jsonl OUT.jsonl

RAW holds one object per (impl, measure) as printed by mitogen-bench and python_bench.py.
OUT gets one object per measure: both results, the ratio (how many times better the Rust
library is, whatever the unit), and the target from issue 5 where there is one.
"""
import json
import sys

# measure -> (target text, check(rust, python) -> bool)
TARGETS = {
    "bootstrap_s": (">= 40x", lambda r, p: p is not None and p / r >= 40),
    "roundtrip_s": (">= 4x", lambda r, p: p is not None and p / r >= 4),
    "roundtrip_pinned_s": (">= 4x", lambda r, p: p is not None and p / r >= 4),
    "pipelined_calls_per_s": (">= 20x", lambda r, p: p is not None and r / p >= 20),
    "bulk_return_1mib_x64_MBps": (">= 5x", lambda r, p: p is not None and r / p >= 5),
    "bulk_arg_1mib_x64_MBps": (">= 5x", lambda r, p: p is not None and r / p >= 5),
    "bulk_return_64mib_MBps": (">= 5x", lambda r, p: p is not None and r / p >= 5),
    "bulk_arg_64mib_MBps": (">= 5x", lambda r, p: p is not None and r / p >= 5),
    "fanout_100_s": ("<= 0.3 s", lambda r, p: r <= 0.3),
    "fanout_1000_s": ("<= 3 s", lambda r, p: r <= 3.0),
    "idle_child_rss_mib": ("<= 4 MiB", lambda r, p: r <= 4.0),
}
HIGHER_IS_BETTER = {"calls/s", "MB/s"}


def fmt(v, unit):
    if v is None:
        return "-"
    if unit == "s":
        if v < 1e-3:
            return "%.1f us" % (v * 1e6)
        if v < 1:
            return "%.2f ms" % (v * 1e3)
        return "%.2f s" % v
    if unit == "calls/s":
        return "%.0f/s" % v
    if unit == "MB/s":
        return "%.0f MB/s" % v
    if unit == "MiB":
        return "%.1f MiB" % v
    return "%g %s" % (v, unit)


def main():
    raw, out = sys.argv[1], sys.argv[2]
    by = {}
    order = []
    for line in open(raw):
        line = line.strip()
        if not line.startswith("{"):
            continue
        rec = json.loads(line)
        if rec["measure"] not in order:
            order.append(rec["measure"])
        by.setdefault(rec["measure"], {})[rec["impl"]] = rec
    rows = []
    with open(out, "w") as f:
        for m in order:
            rust, py = by[m].get("rust"), by[m].get("python")
            unit = (rust or py)["unit"]
            r = rust and rust["median"]
            p = py and py["median"]
            ratio = None
            if r and p:
                ratio = r / p if unit in HIGHER_IS_BETTER else p / r
            if unit == "MiB" and r and p:
                ratio = p / r  # less memory is better
            target, check = TARGETS.get(m, (None, None))
            met = check(r, p) if (check and r is not None) else None
            obj = {"measure": m, "unit": unit, "rust": rust, "python": py, "ratio": ratio, "target": target, "met": met}
            f.write(json.dumps(obj) + "\n")
            spread = lambda rec: "" if not rec or rec["samples"] < 2 else " [%s..%s]" % (
                fmt(rec["min"], unit), fmt(rec["max"], unit))
            rows.append((m, fmt(r, unit) + spread(rust), fmt(p, unit) + spread(py),
                         "-" if ratio is None else "%.1fx" % ratio,
                         "" if target is None else "%s %s" % (target, "met" if met else "MISSED")))
    widths = [max(len(row[i]) for row in rows + [("measure", "rust", "python", "ratio", "target")]) for i in range(5)]
    header = ("measure", "this library (median [min..max])", "Python Mitogen 0.3.54", "ratio", "target")
    widths = [max(w, len(h)) for w, h in zip(widths, header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))
    print(line(header))
    print(line(["-" * w for w in widths]))
    for row in rows:
        print(line(row))


if __name__ == "__main__":
    main()

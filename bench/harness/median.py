#!/usr/bin/env python3
"""Medians over repeated regent-bench runs (the performance spec asks for 3 repetitions and the median).

    bench/harness/median.py target/regent-bench/results-1.json results-2.json results-3.json

Each run's ratio is taken against the baselines measured in that same run (the box's speed drifts between runs),
then the median of those ratios is compared with the target. Prints Markdown tables: every measured shape with its
median (min-max) figures, then the targets.
"""

import json
import statistics
import sys


def key(run):
    rate = "" if run["rate"] is None else "rate"
    return (run["lane"], run["shape"] if not rate else "rate", run["clients"], run["payload"], run["snapshots"])


def spread(values, fmt):
    values = sorted(values)
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(values[0])}–{fmt.format(values[-1])})"


def main(paths):
    results = [json.load(open(p)) for p in paths]
    n = len(results)
    commits = sorted({r["machine"]["git_commit"][:12] for r in results})
    print(f"Medians of {n} runs, commit {', '.join(commits)}, {results[0]['machine']['date_utc']} to "
          f"{results[-1]['machine']['date_utc']}; load average at each start: "
          + "; ".join(r["machine"]["load_average_at_start"].split(" ")[0] for r in results))
    print()

    # Baselines.
    print("| baseline | C | median ops/s (min–max) |")
    print("|---|---|---|")
    for c in sorted({e["clients"] for r in results for e in r["echo"]}):
        vals = [e["calls_per_sec"] for r in results for e in r["echo"] if e["clients"] == c]
        print(f"| tonic echo | {c} | {spread(vals, '{:.0f}')} |")
    for c, p in sorted({(b["clients"], b["payload"]) for r in results for b in r["pgbench"]}):
        vals = [b["tps"] for r in results for b in r["pgbench"] if b["clients"] == c and b["payload"] == p]
        print(f"| pgbench {p} B | {c} | {spread(vals, '{:.0f}')} |")
    print()

    # Every shape: the runs of each file in order; the two paced runs of a file are told apart by their order.
    groups = {}
    for r in results:
        seen = {}
        for run in r["runs"]:
            k = key(run)
            seen[k] = seen.get(k, 0) + 1
            groups.setdefault(k + (seen[k],), []).append(run)
    print("| lane | shape | C | payload | snap | cmd/s | p50 ms | p99 ms | CPU µs/cmd | ratio | vs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for k, runs in groups.items():
        lane, shape, c, payload, snap, nth = k
        label = shape if shape != "rate" else f"rate #{nth}"
        ratios = [run["ratio"][2] for run in runs if run.get("ratio")]
        vs = runs[0]["ratio"][0] if runs[0].get("ratio") else ""
        print(
            f"| {lane} | {label} | {c} | {payload} | {snap or 'off'} "
            f"| {spread([x['commands_per_sec'] for x in runs], '{:.0f}')} "
            f"| {spread([x['p50_ms'] for x in runs], '{:.2f}')} "
            f"| {spread([x['p99_ms'] for x in runs], '{:.2f}')} "
            f"| {spread([x['cpu_us_per_command'] for x in runs if x.get('cpu_us_per_command')], '{:.0f}') if runs[0].get('cpu_us_per_command') else ''} "
            f"| {spread(ratios, '{:.2f}') if ratios else ''} | {vs} |"
        )
    print()

    # Targets, on the medians of each run's own ratio.
    def runs_of(lane, shape, c):
        return [run for r in results for run in r["runs"]
                if run["lane"] == lane and run["shape"] == shape and run["clients"] == c and run["rate"] is None]

    rows = []
    full = runs_of("full", "spread", 64)
    if full:
        m = statistics.median(x["ratio"][2] for x in full)
        rows.append(("full lane C=64, 1,000 entities", "≥ 0.5 × echo c=64 ÷ 3", f"{m:.2f} ×", m >= 0.5))
    first_paced = []
    for r in results:
        rr = [run for run in r["runs"] if run["rate"] is not None and run["lane"] == "full"]
        if rr:
            first_paced.append(rr[0])
    if first_paced:
        m = statistics.median(x["p99_ms"] for x in first_paced)
        rate = statistics.median(x["rate"] for x in first_paced)
        rows.append((f"full lane paced at echo ÷ 12 (median {rate:.0f}/s)", "p99 ≤ 10 ms", f"p99 {m:.2f} ms", m <= 10.0))
    engine = runs_of("engine", "spread", 64)
    if engine:
        m = statistics.median(x["ratio"][2] for x in engine)
        rows.append(("engine lane C=64", "≥ 3 × pgbench c=64", f"{m:.2f} ×", m >= 3.0))
    serial = runs_of("full", "serial", 1)
    if serial:
        m = statistics.median(x["ratio"][2] for x in serial)
        rows.append(("serial (1 client, 1 entity), full lane", "≥ 0.8 × 1/floor", f"{m:.2f} ×", m >= 0.8))
    prints = [r["footprint"] for r in results if r.get("footprint")]
    if prints:
        rss = statistics.median(f["idle_rss_bytes"] for f in prints) / 1024 / 1024
        rows.append(("idle node RSS", "≤ 30 MB", f"{rss:.1f} MiB", rss * 1.048576 <= 30))
        ready = statistics.median(f["ready_fresh_schema_ms"] for f in prints)
        rows.append(("start to ready (fresh schema)", "≤ 1 s", f"{ready:.0f} ms", ready <= 1000))
    print("| target | goal | median | met |")
    print("|---|---|---|---|")
    for name, goal, measured, met in rows:
        print(f"| {name} | {goal} | {measured} | {'yes' if met else 'NO'} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])

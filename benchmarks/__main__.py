"""``python -m benchmarks``: every client, one broker, alternating runs, medians and ratios."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from trio_producer.testing import EmbeddedBroker, create_topics, delete_topics

from . import sweeps

THROUGHPUT = [
    "raw",
    "raw_dr",
    "aio",
    "aiokafka",
    "trio_send",
    "trio_nowait",
    "trio_many",
    "aio_fanin",
    "aiokafka_fanin",
    "trio_fanin",
]
OTHERS = [
    "trio_send_and_wait",
    "trio_drain",
    "raw_flush",
    "raw_dr_flush",
    "trio_idle",
    "trio_send_spool",
    "trio_many_spool",
    "trio_send_spool_always",
    "trio_spool_recovery",
    "trio_send_spool_idem",
    "trio_many_spool_idem",
    "trio_send_eo",
    "trio_many_eo",
    "trio_nowait_errors",
    "trio_many_errors",
]
#: Clients that --baseline runs again from another checkout, for a before/after table.
BASELINE = [
    "trio_send",
    "trio_nowait",
    "trio_many",
    "trio_fanin",
    "trio_drain",
    "trio_send_spool",
    "trio_many_spool",
    "trio_spool_recovery",
]
SUFFIX = "@baseline"
HERE = Path(__file__).resolve().parent.parent


def measure(name: str, bootstrap: str, topic: str, count: int, size: int) -> dict[str, Any]:
    create_topics(bootstrap, [topic], partitions=1)
    args = json.dumps({"bootstrap": bootstrap, "topic": topic, "count": count, "size": size})
    tree = HERE
    if name.endswith(SUFFIX):
        name, tree = name.removesuffix(SUFFIX), BASELINE_TREE
    # This checkout's clients, with the trio_producer of `tree` first on the path.
    proc = subprocess.run(
        [sys.executable, str(HERE / "benchmarks" / "clients.py"), name, args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
    )
    delete_topics(bootstrap, [topic])  # Tansu keeps everything in memory
    if proc.returncode != 0:
        raise SystemExit(f"benchmark {name} failed:\n{proc.stderr[-3000:]}")
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


BASELINE_TREE = HERE


def median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def _figure(runs: list[dict[str, Any]]) -> float:
    """msg/s for throughput runs; total seconds for the drain."""
    if runs and "rate" in runs[0]:
        return median(runs, "rate")
    return median(runs, "total_seconds")


def exactly_once_figures(
    results: dict[str, list[dict[str, Any]]], by: dict[str, int]
) -> dict[str, Any]:
    """The exactly-once cases against the at-least-once spool (as measured, and with the
    same librdkafka settings: ``*_spool_idem``) and in memory, from the same rounds."""
    rate = {
        name: median(results[name], "rate")
        for name in (
            "trio_send_eo",
            "trio_many_eo",
            "trio_send_spool",
            "trio_many_spool",
            "trio_send_spool_idem",
            "trio_many_spool_idem",
        )
    }
    out: dict[str, Any] = {
        "commit_interval": results["trio_send_eo"][0]["commit_interval"],
        # the open and a warm-up message, outside the clock
        "open_seconds": round(median(results["trio_send_eo"], "open_seconds"), 3),
        "open_seconds_spool_idem": round(
            median(results["trio_send_spool_idem"], "open_seconds"), 3
        ),
    }
    for way, memory in (("send", "trio_send"), ("many", "trio_many")):
        eo = rate[f"trio_{way}_eo"]
        out[f"{way}_msgs_per_s"] = round(eo)
        out[f"{way}_vs_spool"] = round(eo / rate[f"trio_{way}_spool"], 2)
        out[f"{way}_vs_spool_idem"] = round(eo / rate[f"trio_{way}_spool_idem"], 2)
        out[f"{way}_vs_in_memory"] = round(eo / by[memory], 2)
        out[f"{way}_spool_idem_msgs_per_s"] = round(rate[f"trio_{way}_spool_idem"])
        transactions = [r["transactions"] for r in results[f"trio_{way}_eo"] if "transactions" in r]
        if transactions:
            out[f"{way}_messages_per_transaction"] = round(
                results[f"trio_{way}_eo"][0]["count"] / statistics.median(transactions)
            )
    return out


def run_sweeps(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--sweep`` and/or ``--plot``."""
    path = Path(args.json or "benchmarks/results/sweeps.json")
    if args.sweep is None:
        record = json.loads(path.read_text())
    else:
        names: list[str] = []
        for name in args.sweep.split(","):
            if name == "all":
                names += [s for s in sweeps.SWEEPS if s not in sweeps.SLOW]
            elif name in sweeps.SWEEPS:
                names.append(name)
            else:
                parser.error(f"unknown sweep {name!r}: choose from {', '.join(sweeps.SWEEPS)}, all")
        names = list(dict.fromkeys(names))
        runs = 1 if args.smoke else args.runs
        record = sweeps.run(
            names,
            runs=runs,
            smoke=args.smoke,
            scale=args.scale,
            baseline=Path(args.baseline).resolve() if args.baseline else None,
            only=args.only,
            points_matching=args.points,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1))
        print(sweeps.tables(record))
        print(f"{record['seconds']} s; JSON: {path}")
    if args.plot is not None:
        for written in sweeps.plot(record, Path(args.plot)):
            print(f"plot: {written}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--count", type=int, default=200_000, help="messages per run")
    parser.add_argument("--size", type=int, default=100, help="bytes per message")
    parser.add_argument("--runs", type=int, default=5, help="alternating rounds")
    parser.add_argument("--drain-count", type=int, default=100_000)
    parser.add_argument(
        "--soak", type=int, default=1_000_000, help="messages for the RSS soak (0: skip)"
    )
    parser.add_argument(
        "--only", nargs="*", default=None, help="run only these clients (names as in the table)"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny N, one round: checks it runs")
    parser.add_argument(
        "--baseline",
        default=None,
        help="another checkout (e.g. a git worktree of an older commit): its trio_producer "
        "is measured in the same rounds, for a before/after table",
    )
    parser.add_argument(
        "--json",
        default=None,
        help="where to write JSON (default benchmarks/results/latest.json, or sweeps.json "
        "with --sweep; with --plot alone: the sweeps JSON to plot)",
    )
    parser.add_argument(
        "--sweep",
        default=None,
        help="run sweeps instead of the headline case: "
        f"{', '.join(sweeps.SWEEPS)} (comma-separated), or 'all' (every one but the slow "
        f"{', '.join(sorted(sweeps.SLOW))})",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply the sweeps' message counts by this (e.g. 0.3 for a shorter run)",
    )
    parser.add_argument(
        "--points",
        default=None,
        metavar="TEXT",
        help="sweeps: only the points whose label holds TEXT (e.g. '96 partitions')",
    )
    parser.add_argument(
        "--plot",
        default=None,
        metavar="DIR",
        help="write one PNG per sweep into DIR (after --sweep, or from the sweeps JSON)",
    )
    args = parser.parse_args()
    if args.sweep is not None or args.plot is not None:
        run_sweeps(parser, args)
        return
    if args.json is None:
        args.json = "benchmarks/results/latest.json"
    global BASELINE_TREE
    baseline = []
    if args.baseline:
        BASELINE_TREE = Path(args.baseline).resolve()
        baseline = [name + SUFFIX for name in BASELINE]
    if args.smoke:
        args.count, args.runs, args.drain_count, args.soak = 5_000, 1, 5_000, 0

    results: dict[str, list[dict[str, Any]]] = {name: [] for name in THROUGHPUT + OTHERS + baseline}
    unknown = [name for name in args.only or () if name not in results]
    if unknown:
        parser.error(
            f"unknown client(s) {', '.join(unknown)}: choose from {', '.join(results)}"
            + ("" if args.baseline else f" (the {SUFFIX} ones need --baseline)")
        )
    started = time.time()
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        for run in range(args.runs):
            measured = THROUGHPUT + baseline
            order = measured[run % len(measured) :] + measured[: run % len(measured)]
            for name in order + OTHERS:
                if args.only is not None and name not in args.only:
                    continue
                count = (
                    args.drain_count
                    if name.removesuffix(SUFFIX) in ("trio_drain", "raw_flush", "raw_dr_flush")
                    else args.count
                )
                topic = f"bench-{name.replace(SUFFIX, '-base')}-{run}"
                out = measure(name, bootstrap, topic, count, args.size)
                results[name].append(out)
                shown = f"{out['rate']:,.0f} msg/s" if "rate" in out else json.dumps(out)
                print(
                    f"round {run + 1}/{args.runs} {name:<20} {shown}", file=sys.stderr, flush=True
                )
        soak = None
        if args.soak:
            soak = measure("trio_send", bootstrap, "bench-soak", args.soak, args.size)

    if args.only is not None:
        for name in args.only:
            rates = [r.get("rate", r.get("drain_seconds")) for r in results[name]]
            print(f"{name}: {rates}")
        return
    raw = median(results["raw"], "rate")
    table = []
    for name in THROUGHPUT:
        rate = median(results[name], "rate")
        table.append(
            {
                "client": name,
                "msgs_per_s": round(rate),
                "ratio_to_raw": round(rate / raw, 3),
                "rss_peak_mb": round(max(r["rss_peak_mb"] for r in results[name]), 1),
            }
        )
    by = {row["client"]: row["msgs_per_s"] for row in table}
    drain = median(results["trio_drain"], "drain_seconds")
    raw_flush = median(results["raw_flush"], "drain_seconds")
    drain_total = median(results["trio_drain"], "total_seconds")
    raw_total = median(results["raw_flush"], "total_seconds")
    raw_dr_total = median(results["raw_dr_flush"], "total_seconds")
    summary = {
        "date": time.strftime("%Y-%m-%d", time.gmtime(started)),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "count": args.count,
        "size": args.size,
        "runs": args.runs,
        "throughput": table,
        "send_vs_aiokafka": round(by["trio_send"] / by["aiokafka"], 2),
        "send_vs_aio": round(by["trio_send"] / by["aio"], 2),
        "nowait_vs_raw": round(by["trio_nowait"] / by["raw"], 2),
        "many_vs_raw": round(by["trio_many"] / by["raw"], 2),
        "many_vs_raw_dr": round(by["trio_many"] / by["raw_dr"], 2),
        "fanin_vs_aio": round(by["trio_fanin"] / by["aio_fanin"], 2),
        "fanin_vs_aiokafka": round(by["trio_fanin"] / by["aiokafka_fanin"], 2),
        "before_after": {
            name.removesuffix(SUFFIX): {
                "before": _figure(results[name]),
                "after": _figure(results[name.removesuffix(SUFFIX)]),
            }
            for name in baseline
        },
        "send_and_wait_p50_ms": round(median(results["trio_send_and_wait"], "p50_ms"), 3),
        "send_and_wait_p99_ms": round(median(results["trio_send_and_wait"], "p99_ms"), 3),
        "drain_seconds": round(drain, 4),
        "raw_flush_seconds": round(raw_flush, 4),
        "drain_vs_raw_flush": round(drain / raw_flush, 2),
        "accept_and_drain_seconds": round(drain_total, 4),
        "raw_produce_and_flush_seconds": round(raw_total, 4),
        "accept_and_drain_vs_raw": round(drain_total / raw_total, 2),
        "raw_dr_produce_and_flush_seconds": round(raw_dr_total, 4),
        "accept_and_drain_vs_raw_dr": round(drain_total / raw_dr_total, 2),
        "idle_cpu_percent": round(median(results["trio_idle"], "idle_cpu_percent"), 3),
        "errors_only": {
            "nowait_msgs_per_s": round(median(results["trio_nowait_errors"], "rate")),
            "nowait_vs_raw": round(median(results["trio_nowait_errors"], "rate") / raw, 2),
            "many_msgs_per_s": round(median(results["trio_many_errors"], "rate")),
            "many_vs_raw": round(median(results["trio_many_errors"], "rate") / raw, 2),
            "many_vs_raw_dr": round(median(results["trio_many_errors"], "rate") / by["raw_dr"], 2),
        },
        "spool": {
            "send_msgs_per_s": round(median(results["trio_send_spool"], "rate")),
            "send_vs_in_memory": round(
                median(results["trio_send_spool"], "rate") / by["trio_send"], 2
            ),
            "many_msgs_per_s": round(median(results["trio_many_spool"], "rate")),
            "many_vs_in_memory": round(
                median(results["trio_many_spool"], "rate") / by["trio_many"], 2
            ),
            "always_msgs_per_s": round(median(results["trio_send_spool_always"], "rate")),
            "always_p50_ms": round(median(results["trio_send_spool_always"], "p50_ms"), 2),
            "always_p99_ms": round(median(results["trio_send_spool_always"], "p99_ms"), 2),
            "recovery_msgs_per_s": round(median(results["trio_spool_recovery"], "rate")),
        },
        "exactly_once": exactly_once_figures(results, by),
        "soak": None
        if soak is None
        else {
            "messages": args.soak,
            "rate": round(soak["rate"]),
            "rss_mb_at": {str(k): round(v, 1) for k, v in soak["rss_marks_mb"].items()},
            "rss_peak_mb": round(soak["rss_peak_mb"], 1),
        },
        "raw": results,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2))

    head = f"{args.count:,} x {args.size} B, {args.runs} rounds, median msg/s"
    print(f"\n{head} ({summary['machine']})\n")
    print(f"| {'client':<13} | {'msg/s':>9} | {'x raw':>6} | {'peak RSS MB':>11} |")
    print(f"|{'-' * 15}|{'-' * 11}|{'-' * 8}|{'-' * 13}|")
    for row in table:
        print(
            f"| {row['client']:<13} | {row['msgs_per_s']:>9,} | {row['ratio_to_raw']:>6.2f} "
            f"| {row['rss_peak_mb']:>11} |"
        )
    print()
    send_aiokafka = summary["send_vs_aiokafka"]
    send_aio = summary["send_vs_aio"]
    nowait_raw = summary["nowait_vs_raw"]
    idle = summary["idle_cpu_percent"]
    drain_raw_dr = summary["accept_and_drain_vs_raw_dr"]
    checks = [
        ("await send() vs aiokafka", send_aiokafka, ">= 1.6", send_aiokafka >= 1.6),
        ("await send() vs AIOProducer", send_aio, ">= 2", send_aio >= 2),
        ("send_nowait loop vs raw loop", nowait_raw, ">= 0.7", nowait_raw >= 0.7),
        ("send_many vs raw loop", summary["many_vs_raw"], ">= 0.8", summary["many_vs_raw"] >= 0.8),
        (
            "send_many vs raw loop with delivery callbacks",
            summary["many_vs_raw_dr"],
            ">= 1.0",
            summary["many_vs_raw_dr"] >= 1.0,
        ),
        (
            "100 tasks x await send() vs 100 tasks on AIOProducer",
            summary["fanin_vs_aio"],
            ">= 3",
            summary["fanin_vs_aio"] >= 3,
        ),
        (
            "100 tasks x await send() vs 100 tasks on aiokafka",
            summary["fanin_vs_aiokafka"],
            ">= 3",
            summary["fanin_vs_aiokafka"] >= 3,
        ),
        (
            f"{args.drain_count:,} send_nowait + leave block, vs raw produce with "
            "callbacks + flush()",
            drain_raw_dr,
            "<= 1.5",
            drain_raw_dr <= 1.5,
        ),
        ("idle producer CPU %", idle, "~ 0", idle < 0.5),
    ]
    for what, value, target, ok in checks:
        print(f"- {what}: {value} (target {target}) {'ok' if ok else 'MISSED'}")
    errors_only = summary["errors_only"]
    assert isinstance(errors_only, dict)
    print(
        f"- delivery_reports='errors': send_nowait loop {errors_only['nowait_vs_raw']} x raw, "
        f"send_many {errors_only['many_vs_raw']} x raw = {errors_only['many_vs_raw_dr']} x "
        "raw with delivery callbacks"
    )
    print(
        f"- send_and_wait latency: p50 {summary['send_and_wait_p50_ms']} ms, "
        f"p99 {summary['send_and_wait_p99_ms']} ms"
    )
    print(
        f"- the same against a raw loop with delivery callbacks: "
        f"{summary['accept_and_drain_vs_raw_dr']} ({summary['accept_and_drain_seconds']} s vs "
        f"{summary['raw_dr_produce_and_flush_seconds']} s)"
    )
    print(
        f"- leaving the block alone: {summary['drain_seconds']} s; raw flush() alone: "
        f"{summary['raw_flush_seconds']} s (ours also hands the messages to librdkafka)"
    )
    spool_figures = summary["spool"]
    assert isinstance(spool_figures, dict)
    print(
        f"- durable spool (no fsync): await send() {spool_figures['send_msgs_per_s']:,} msg/s "
        f"= {spool_figures['send_vs_in_memory']} x in memory (target >= 0.6); send_many "
        f"{spool_figures['many_msgs_per_s']:,} msg/s = {spool_figures['many_vs_in_memory']} x "
        f"in memory (target >= 0.5); spool_sync='always' with 100 tasks: "
        f"{spool_figures['always_msgs_per_s']:,} msg/s, send p50 "
        f"{spool_figures['always_p50_ms']} ms / p99 {spool_figures['always_p99_ms']} ms; "
        f"recovery {spool_figures['recovery_msgs_per_s']:,} msg/s"
    )
    eo = summary["exactly_once"]
    assert isinstance(eo, dict)
    eo_met = min(eo["send_vs_spool"], eo["many_vs_spool"]) >= 0.5
    for way, what in (("send", "await send()"), ("many", "send_many")):
        per = eo.get(f"{way}_messages_per_transaction")
        per_text = "?" if per is None else f"{per:,}"
        print(
            f"- exactly once, {what}: {eo[f'{way}_msgs_per_s']:,} msg/s = "
            f"{eo[f'{way}_vs_spool']} x the at-least-once spool, "
            f"{eo[f'{way}_vs_spool_idem']} x it with the same settings "
            f"({eo[f'{way}_spool_idem_msgs_per_s']:,} msg/s), {eo[f'{way}_vs_in_memory']} x in "
            f"memory; {per_text} messages per transaction"
        )
    print(
        f"  (commit_interval {eo['commit_interval']} s, idempotent, acks=all; target >= 0.5 x "
        f"the at-least-once spool: {'ok' if eo_met else 'MISSED'}; the open and a first "
        f"message, outside the clock: {eo['open_seconds']} s, at least once with the same "
        f"settings {eo['open_seconds_spool_idem']} s)"
    )
    if baseline:
        print(f"\nbefore ({args.baseline}) / after (this checkout), same rounds, medians:\n")
        print(f"| {'client':<13} | {'before':>12} | {'after':>12} | {'after/before':>12} |")
        print(f"|{'-' * 15}|{'-' * 14}|{'-' * 14}|{'-' * 14}|")
        pairs = summary["before_after"]
        assert isinstance(pairs, dict)
        for name, pair in pairs.items():
            before, after = pair["before"], pair["after"]
            # drain is seconds (lower is better); the rest msg/s (higher is better)
            ratio = before / after if name == "trio_drain" else after / before
            unit = name == "trio_drain"
            cells = [f"{v:,.3f} s" if unit else f"{v:,.0f}" for v in (before, after)]
            print(f"| {name:<13} | {cells[0]:>12} | {cells[1]:>12} | {ratio:>12.2f} |")
    if soak is not None:
        soak_figures = summary["soak"]
        assert isinstance(soak_figures, dict)
        marks = soak_figures["rss_mb_at"]
        print(f"- RSS over {args.soak:,} messages (MB at message #): {marks}")
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()

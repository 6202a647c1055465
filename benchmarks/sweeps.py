"""The sweeps of ``python -m benchmarks --sweep NAME[,NAME]``: how the cost grows.

Each sweep is a list of points; every point is measured for every client in its own
process (``sweep_clients.py``), the clients in a rotated order each round, and the
figures are the medians over the rounds. The JSON keeps every run; ``--plot DIR`` draws
one PNG per sweep from it, and the run prints the tables as reStructuredText.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from trio_producer.testing import EmbeddedBroker, create_topics, delete_topics

HERE = Path(__file__).resolve().parent
KIB, MIB = 1024, 1024 * 1024
NAN = math.nan

#: One colour and one label per client, the same in every plot.
STYLE: dict[str, tuple[str, str]] = {
    "trio": ("tab:blue", "trio_producer await send()"),
    "trio_many": ("tab:cyan", "trio_producer send_many()"),
    "aio": ("tab:orange", "confluent AIOProducer"),
    "aiokafka": ("tab:green", "aiokafka"),
    "raw": ("tab:gray", "raw confluent loop"),
    "raw_dr": ("black", "raw loop + delivery callbacks"),
    "trio@baseline": ("tab:purple", "trio_producer await send(), baseline"),
    "trio_many@baseline": ("tab:pink", "trio_producer send_many(), baseline"),
    "eo_send": ("tab:blue", "await send()"),
    "eo_many": ("tab:cyan", "send_many()"),
    "eo_wait": ("tab:red", "send_and_wait()"),
}
PEERS = ["trio", "aio", "aiokafka", "raw", "raw_dr"]

#: Where a peer cannot do a sweep, and why (shown in the tables and the plots).
CANNOT: dict[tuple[str, str], str] = {
    ("memory", "aiokafka"): (
        "aiokafka's start() needs the broker, and its only buffer is one batch per "
        "partition: send() waits on it (request_timeout_ms), then KafkaTimeoutError"
    ),
    ("latency", "raw"): "the bare loop learns nothing about single messages",
}


def human_size(n: int) -> str:
    for unit, scale in (("MiB", MIB), ("KiB", KIB)):
        if n >= scale:
            return f"{n // scale} {unit}"
    return f"{n} B"


def sweep_points(name: str, smoke: bool, scale: float) -> list[dict[str, Any]]:
    """The points of one sweep. ``scale`` multiplies the message counts."""

    if smoke:
        scale *= 0.02

    def n(full: int, least: int = 1) -> int:
        return max(least, round(full * scale))

    base = {"mode": "throughput", "size": 100, "tasks": 1, "keyed": False}
    base |= {"compression": "none", "partitions": 1}
    if name == "size":
        sizes = [10, 100, KIB, 10 * KIB, 100 * KIB, MIB]
        if smoke:
            sizes = [10, MIB]
        # The same bytes per point where that is under the message cap.
        cap, volume = n(100_000, 10), n(100_000_000, 10_000)
        return [base | {"size": s, "count": max(10, min(cap, volume // s))} for s in sizes]
    if name == "tasks":
        counts = [1, 10, 100, 1_000, 10_000]
        if smoke:
            counts = [1, 1_000]
        # Long-lived senders: started before the clock, at least 50 messages each. And
        # the older point, labelled: 10,000 tasks spawned inside the clock, ~10 each.
        points = [base | {"tasks": t, "count": max(n(100_000), t * n(50))} for t in counts]
        spawned = counts[-1]
        return [
            *points,
            base | {"tasks": spawned, "count": max(spawned, n(100_000)), "spawn": True},
        ]
    if name == "partitions":
        grid = [(p, c) for c in ("none", "lz4", "zstd") for p in (1, 12, 96)]
        if smoke:
            grid = [(1, "none"), (12, "lz4"), (96, "zstd")]
        count = n(100_000)
        return [
            base | {"partitions": p, "compression": c, "keyed": True, "count": count}
            for p, c in grid
        ]
    if name == "memory":
        count, settle = (20_000, 0.2) if smoke else (1_000_000, 1.0)  # not scaled
        return [base | {"mode": "memory", "count": count, "settle": settle}]
    if name == "latency":
        return [
            base | {"mode": "latency", "count": n(50_000, 2_000), "seconds": 0.3 if smoke else 3.0}
        ]
    if name == "soak":
        return [base | {"mode": "soak", "count": 20_000 if smoke else n(3_000_000)}]
    if name == "commit_interval":
        # None: the at-least-once spool, the reference; then exactly once at each interval.
        intervals = [None, 0.01, 0.5] if smoke else [None, *COMMIT_INTERVALS]
        return [
            base
            | {
                "mode": "exactly_once",
                "commit_interval": interval,
                "count": n(100_000),
                "wait_seconds": 0.3 if smoke else 3.0,
                "load_rate": 2_000,
            }
            for interval in intervals
        ]
    raise ValueError(name)


#: The ``commit_interval`` sweep's points (seconds), after the at-least-once reference.
COMMIT_INTERVALS = [0.01, 0.05, 0.1, 0.5]


SWEEPS: dict[str, list[str]] = {
    "size": ["trio", "trio_many", "aio", "aiokafka", "raw", "raw_dr"],
    "tasks": PEERS,
    "partitions": PEERS,
    "memory": ["trio", "aio", "raw", "raw_dr"],
    "latency": ["trio", "aio", "aiokafka", "raw_dr"],
    "soak": PEERS,
    "commit_interval": ["eo_send", "eo_many", "eo_wait"],
}
#: Sweeps that run once (not in rounds) and are not part of "all": ask for them by name.
SLOW = {"soak"}
ONCE = {"memory", "soak"}


def point_label(sweep: str, point: dict[str, Any]) -> str:
    if sweep == "size":
        return human_size(point["size"])
    if sweep == "tasks":
        if point.get("spawn"):
            return f"{point['tasks']:,} spawned, {point['count'] // point['tasks']} each"
        return f"{point['tasks']:,} tasks"
    if sweep == "partitions":
        return f"{point['partitions']} partitions, {point['compression']}"
    if sweep == "commit_interval":
        interval = point["commit_interval"]
        return "at least once" if interval is None else f"exactly once, {interval} s"
    return f"{point['count']:,} x {point['size']} B"


def versions() -> dict[str, str]:
    import confluent_kafka

    out = {
        name: importlib.metadata.version(name)
        for name in ("trio-producer", "trio", "confluent-kafka", "aiokafka")
    }
    out["librdkafka"] = confluent_kafka.libversion()[0]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    )
    out["commit"] = commit.stdout.strip() or "?"
    return out


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{platform.machine()}, {os.cpu_count()} cores{f' ({model})' if model else ''}, "
        f"Python {platform.python_version()}"
    )


#: Seconds one client may take for one point.
TIMEOUT = 300


#: ``--baseline``: a client of this suffix runs with the trio_producer of that checkout.
SUFFIX = "@baseline"


def run_one(
    client: str,
    bootstrap: str,
    topic: str,
    point: dict[str, Any],
    baseline: Path | None = None,
) -> dict[str, Any]:
    if point["mode"] != "memory":
        create_topics(bootstrap, [topic], partitions=point["partitions"])
    args = {"bootstrap": bootstrap, "topic": topic, **point}
    env = None
    if client.endswith(SUFFIX):
        assert baseline is not None
        client = client.removesuffix(SUFFIX)
        # This checkout's clients, with the trio_producer of the baseline first on the path.
        env = {**os.environ, "PYTHONPATH": str(baseline)}
    try:
        proc = subprocess.run(
            [sys.executable, str(HERE / "sweep_clients.py"), client, json.dumps(args)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"failed": f"did not finish within {TIMEOUT} s"}
    finally:
        if point["mode"] != "memory":
            delete_topics(bootstrap, [topic])  # Tansu keeps everything in memory
    if proc.returncode != 0:
        # A peer that cannot do a point is a result: keep its last words.
        errors = [
            line for line in proc.stderr.splitlines() if "Error" in line and ":" in line
        ] or proc.stderr.strip().splitlines()[-1:]
        print(proc.stderr[-3000:], file=sys.stderr)
        return {"failed": errors[-1].strip() if errors else f"exit {proc.returncode}"}
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def run(
    names: list[str],
    *,
    runs: int,
    smoke: bool,
    scale: float,
    baseline: Path | None = None,
    only: list[str] | None = None,
    points_matching: str | None = None,
) -> dict[str, Any]:
    """Run the sweeps; return the JSON-able record (every run, and the medians).

    ``baseline``: another checkout whose trio_producer is measured too, in the same
    rounds (clients ``trio@baseline``, ``trio_many@baseline``). ``only``: these clients
    only. ``points_matching``: only the points whose label holds this text.
    """
    started = time.time()
    record: dict[str, Any] = {
        "date": datetime.datetime.fromtimestamp(started, datetime.UTC).strftime("%Y-%m-%d"),
        "machine": machine(),
        "versions": versions(),
        "runs": runs,
        "smoke": smoke,
        "sweeps": {},
    }
    if baseline is not None:
        record["baseline"] = str(baseline)
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        for name in names:
            clients = list(SWEEPS[name])
            if baseline is not None:
                clients += [c + SUFFIX for c in clients if c.startswith("trio")]
            if only:
                clients = [c for c in clients if c in only]
            points = sweep_points(name, smoke, scale)
            if points_matching:
                points = [pt for pt in points if points_matching in point_label(name, pt)]
            rounds = 1 if name in ONCE else runs
            raw: list[dict[str, list[dict[str, Any]]]] = [{c: [] for c in clients} for _ in points]
            for r in range(rounds):
                for i, point in enumerate(points):
                    order = clients[r % len(clients) :] + clients[: r % len(clients)]
                    for client in order:
                        topic = f"sweep-{name}-{i}-{client}-{r}"
                        topic = topic.replace(SUFFIX, "-base")
                        out = run_one(client, bootstrap, topic, point, baseline)
                        raw[i][client].append(out)
                        print(
                            f"{name} round {r + 1}/{rounds} {point_label(name, point):<24} "
                            f"{client:<10} {shown(out)}",
                            file=sys.stderr,
                            flush=True,
                        )
            record["sweeps"][name] = {
                "clients": clients,
                "points": [
                    {"point": point, "label": point_label(name, point), "runs": raw[i]}
                    | {"median": {c: medians(raw[i][c]) for c in clients}}
                    for i, point in enumerate(points)
                ],
            }
    record["seconds"] = round(time.time() - started, 1)
    return record


def shown(out: dict[str, Any]) -> str:
    if "failed" in out:
        return f"FAILED: {out['failed']}"
    if "levels" in out:
        return ", ".join(
            f"{lv['fraction']:.0%}: {lv['rate']:,.0f} msg/s p50 {lv['p50_ms']:.2f} p99 "
            f"{lv['p99_ms']:.2f} ms"
            for lv in out["levels"]
        )
    if "bytes_per_message" in out:
        return f"{out['bytes_per_message']:,.0f} B RSS per pending message"
    if "alone_p50_ms" in out:
        return (
            f"send_and_wait p50 {out['alone_p50_ms']:.1f} / p99 {out['alone_p99_ms']:.1f} ms "
            f"alone, p50 {out['loaded_p50_ms']:.1f} / p99 {out['loaded_p99_ms']:.1f} ms "
            f"under {out['load_rate']:,} msg/s"
        )
    return f"{out['rate']:,.0f} msg/s, {out['mb_per_s']:,.1f} MB/s"


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over the rounds (latency: per load level)."""
    failed = [r["failed"] for r in runs if "failed" in r]
    runs = [r for r in runs if "failed" not in r]
    if not runs:
        return {"failed": failed[0]}
    first = runs[0]
    out: dict[str, Any] = {"failed_rounds": len(failed)} if failed else {}
    for key, value in first.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in runs)
    if "levels" in first:
        out["levels"] = [
            {
                key: statistics.median(r["levels"][i][key] for r in runs)
                for key in first["levels"][i]
            }
            for i in range(len(first["levels"]))
        ]
    if first.get("rss_marks_mb"):
        out["rss_marks_mb"] = first["rss_marks_mb"]
    return out


# ---- tables -------------------------------------------------------------------------------


def rst_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    rule = "  ".join("=" * w for w in widths)

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([rule, line(header), rule, *(line(r) for r in rows), rule])


def tables(record: dict[str, Any]) -> str:
    """The medians as reStructuredText tables, one per sweep."""
    out = []
    for name, sweep in record["sweeps"].items():
        clients = sweep["clients"]
        points = sweep["points"]
        out.append(f"``{name}``\n")
        if name in ("size", "tasks", "partitions"):
            ratios = [
                (a, b)
                for a, b in (
                    ("trio", "aio"),
                    ("trio", "aiokafka"),
                    ("trio", "raw_dr"),
                    ("trio", "trio" + SUFFIX),
                    ("trio_many", "trio_many" + SUFFIX),
                )
                if a in clients and b in clients
            ]
            header = ["point", *clients, *(f"{a} / {b}" for a, b in ratios)]
            rows = []
            for pt in points:
                m = pt["median"]
                rate = {c: m[c].get("rate") for c in clients}
                cells = [
                    pt["label"],
                    *(f"{rate[c]:,.0f}" if rate[c] else "failed" for c in clients),
                ]
                cells += [
                    f"{rate[a] / rate[b]:.2f}" if rate[a] and rate[b] else "-" for a, b in ratios
                ]
                rows.append(cells)
            out.append("msg/s (medians):\n\n" + rst_table(header, rows))
            if name == "size":
                rows = [
                    [
                        pt["label"],
                        *(f"{pt['median'][c].get('mb_per_s', NAN):,.1f}" for c in clients),
                    ]
                    for pt in points
                ]
                out.append("MB/s (medians):\n\n" + rst_table(["size", *clients], rows))
        elif name == "memory":
            m = points[0]["median"]
            rows = [
                [
                    c,
                    f"{m[c]['bytes_per_message']:,.0f}",
                    f"{m[c]['rss_after_mb']:,.0f}",
                ]
                for c in clients
                if "failed" not in m[c]
            ]
            out.append(
                f"{points[0]['label']} accepted, broker unreachable:\n\n"
                + rst_table(["client", "RSS bytes / message", "RSS MB"], rows)
            )
            out += [f"``{c}``: n/a, {why}." for (s, c), why in CANNOT.items() if s == name]
        elif name == "latency":
            rows = []
            for c in clients:
                m = points[0]["median"][c]
                for lv in m.get("levels", []):
                    rows.append(
                        [
                            c,
                            f"{lv['fraction']:.0%} of {m['max_rate']:,.0f}",
                            f"{lv['rate']:,.0f}",
                            f"{lv['p50_ms']:.2f}",
                            f"{lv['p99_ms']:.2f}",
                        ]
                    )
            out.append(
                "send_and_wait while a paced load runs (medians):\n\n"
                + rst_table(["client", "load", "msg/s", "p50 ms", "p99 ms"], rows)
            )
        elif name == "soak":
            rows = []
            for c in clients:
                m = points[0]["median"][c]
                marks = list(m.get("rss_marks_mb", {}).values())
                rows.append(
                    [c, f"{m.get('rate', NAN):,.0f}", f"{marks[1]:.1f}", f"{marks[-1]:.1f}"]
                    if len(marks) > 1
                    else [c, f"{m['rate']:,.0f}", "?", "?"]
                )
            out.append(
                f"{points[0]['label']}:\n\n"
                + rst_table(["client", "msg/s", "RSS MB at 10 %", "RSS MB at 90 %"], rows)
            )
        elif name == "commit_interval":
            out.append(commit_interval_table(clients, points))
        failures = [
            f"* ``{c}`` at {pt['label']}: {pt['median'][c]['failed']}"
            if "failed" in pt["median"][c]
            else f"* ``{c}`` at {pt['label']}: failed in {pt['median'][c]['failed_rounds']} "
            "of the rounds (the median is of the others)"
            for pt in points
            for c in clients
            if "failed" in pt["median"][c] or "failed_rounds" in pt["median"][c]
        ]
        if failures:
            out.append("\n".join(failures))
    return "\n\n".join(out) + "\n"


def commit_interval_table(clients: list[str], points: list[dict[str, Any]]) -> str:
    """msg/s of ``await send()`` and ``send_many`` (and x the at-least-once spool, the
    first point), messages per transaction, and the ``send_and_wait`` latency."""
    ref = points[0]["median"]

    def rate(m: dict[str, Any], c: str) -> float | None:
        return m.get(c, {}).get("rate") if c in clients else None

    def cell(value: float | None, form: str = "{:,.0f}") -> str:
        return "-" if value is None else form.format(value)

    rows = []
    for pt in points:
        m = pt["median"]
        row = [pt["label"]]
        for c in ("eo_send", "eo_many"):
            here, base = rate(m, c), rate(ref, c)
            per = None
            if here and m[c].get("transactions"):
                per = pt["point"]["count"] / m[c]["transactions"]
            row += [
                cell(here),
                cell(here / base if here and base else None, "{:.2f}"),
                cell(per) if pt["point"]["commit_interval"] is not None else "-",
            ]
        w = m.get("eo_wait", {})
        row += [
            cell(w.get(f"{when}_{q}_ms"), "{:.1f}")
            for when in ("alone", "loaded")
            for q in ("p50", "p99")
        ]
        rows.append(row)
    load = points[0]["point"]["load_rate"]
    header = [
        "commit interval",
        "send msg/s",
        "x ALO",
        "msg/txn",
        "send_many msg/s",
        "x ALO",
        "msg/txn",
        "wait p50 ms",
        "wait p99 ms",
        f"p50 at {load:,}/s",
        f"p99 at {load:,}/s",
    ]
    return (
        f"{points[0]['point']['count']:,} x {points[0]['point']['size']} B, medians; x ALO: "
        "against the at-least-once spool (the first row, same settings); msg/txn: messages "
        "per transaction; send_and_wait latency alone, and while a task sends "
        f"{load:,} msg/s:\n\n" + rst_table(header, rows)
    )


# ---- plots --------------------------------------------------------------------------------


def title(record: dict[str, Any], what: str, name: str = "") -> str:
    v = record["versions"]
    rounds = 1 if name in ONCE else record["runs"]
    return (
        f"{what}\ntrio_producer {v['trio-producer']} ({v['commit']}), confluent-kafka "
        f"{v['confluent-kafka']} (librdkafka {v['librdkafka']}), aiokafka {v['aiokafka']}\n"
        f"{record['machine']}, embedded Tansu, {record['date']}, "
        f"median of {rounds} rounds"
    )


def plot(record: dict[str, Any], directory: Path) -> list[Path]:
    """One PNG per sweep in ``directory``; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, sweep in record["sweeps"].items():
        clients, points = sweep["clients"], sweep["points"]
        draw = {
            "size": _plot_size,
            "tasks": _plot_tasks,
            "partitions": _plot_partitions,
            "memory": _plot_memory,
            "latency": _plot_latency,
            "soak": _plot_soak,
            "commit_interval": _plot_commit_interval,
        }[name]
        fig, what = draw(plt, clients, points)
        fig.suptitle(title(record, what, name), fontsize=9)
        # a figure-wide legend (partitions) sits below the axes
        fig.tight_layout(rect=(0, 0.07, 1, 1) if fig.legends else (0, 0, 1, 1))
        path = directory / f"sweep-{name}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


def _line(ax: Any, client: str, xs: list[float], ys: list[float], **kw: Any) -> None:
    colour, label = STYLE[client]
    dashed = client in ("raw", "raw_dr")
    ax.plot(xs, ys, marker="o", color=colour, label=label, ls="--" if dashed else "-", **kw)


def _plot_size(plt: Any, clients: list[str], points: list[dict[str, Any]]) -> tuple[Any, str]:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    xs = [pt["point"]["size"] for pt in points]
    for ax, key, unit in ((axes[0], "rate", "msg/s"), (axes[1], "mb_per_s", "MB/s")):
        for c in clients:
            _line(ax, c, xs, [pt["median"][c].get(key, NAN) for pt in points])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("message size (bytes)")
        ax.set_ylabel(unit)
        ax.set_xticks(xs, [human_size(x) for x in xs])
        ax.grid(True, which="major", alpha=0.3)
    axes[0].legend(fontsize=8)
    return fig, "Throughput by message size (one partition, no compression)"


def _plot_tasks(plt: Any, clients: list[str], points: list[dict[str, Any]]) -> tuple[Any, str]:
    fig, ax = plt.subplots(figsize=(8, 5))
    spawned = [pt for pt in points if pt["point"].get("spawn")]
    points = [pt for pt in points if not pt["point"].get("spawn")]
    xs = [pt["point"]["tasks"] for pt in points]
    for c in clients:
        _line(ax, c, xs, [pt["median"][c].get("rate", NAN) for pt in points])
        # The older point (tasks spawned inside the clock): a hollow marker beside it.
        for pt in spawned:
            rate = pt["median"][c].get("rate", NAN)
            ax.plot(
                [pt["point"]["tasks"] * 1.15],
                [rate],
                marker="o",
                mfc="none",
                color=STYLE.get(c, ("black", c))[0],
                linestyle="none",
            )
    if spawned:
        ax.plot(
            [],
            [],
            marker="o",
            mfc="none",
            color="gray",
            linestyle="none",
            label=f"hollow: {spawned[0]['label']} (spawned in the clock)",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(xs, [f"{x:,}" for x in xs])
    ax.set_xlabel("concurrent senders, each awaiting send() (raw loops: one thread, for scale)")
    ax.set_ylabel("msg/s")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    size = points[0]["point"]["size"]
    return fig, f"Throughput by number of sending tasks ({size} B, one partition)"


def _plot_partitions(plt: Any, clients: list[str], points: list[dict[str, Any]]) -> tuple[Any, str]:
    codecs = list(dict.fromkeys(pt["point"]["compression"] for pt in points))
    fig, axes = plt.subplots(1, len(codecs), figsize=(4 * len(codecs) + 1, 4.8), sharey=True)
    if len(codecs) == 1:
        axes = [axes]
    for ax, codec in zip(axes, codecs, strict=True):
        mine = [pt for pt in points if pt["point"]["compression"] == codec]
        xs = [pt["point"]["partitions"] for pt in mine]
        for c in clients:
            _line(ax, c, xs, [pt["median"][c].get("rate", NAN) for pt in mine])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("partitions (keyed messages)")
        ax.set_title(f"compression: {codec}", fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("msg/s")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(clients), fontsize=8)
    size = points[0]["point"]["size"]
    return fig, f"Throughput by partitions and compression ({size} B values)"


def _plot_memory(plt: Any, clients: list[str], points: list[dict[str, Any]]) -> tuple[Any, str]:
    fig, ax = plt.subplots(figsize=(8, 4.8))
    m = points[0]["median"]
    ys = [m[c].get("bytes_per_message", NAN) for c in clients]
    labels = [STYLE[c][1] if c != "trio" else "trio_producer send_nowait()" for c in clients]
    bars = ax.bar(labels, ys, color=[STYLE[c][0] for c in clients], alpha=0.85)
    ax.bar_label(bars, fmt="%.0f B", fontsize=8)
    ax.set_ylabel("RSS bytes per pending message")
    ax.tick_params(axis="x", labelsize=8)
    note = " ".join(
        f"aiokafka: n/a ({why})."
        for (s, c), why in CANNOT.items()
        if s == "memory" and c == "aiokafka"
    )
    ax.text(0.01, 0.97, _wrap(note, 95), transform=ax.transAxes, va="top", fontsize=7)
    ax.set_ylim(0, max(ys) * 1.35)
    pt = points[0]["point"]
    return fig, (
        f"Memory: {pt['count']:,} accepted x {pt['size']} B, broker unreachable "
        "(queues raised to hold them all)"
    )


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def _plot_latency(plt: Any, clients: list[str], points: list[dict[str, Any]]) -> tuple[Any, str]:
    fig, ax = plt.subplots(figsize=(8, 5))
    for c in clients:
        levels = points[0]["median"][c].get("levels", [])
        colour, label = STYLE[c]
        xs = [lv["rate"] for lv in levels]
        ax.plot(xs, [lv["p50_ms"] for lv in levels], marker="o", color=colour, label=f"{label} p50")
        ax.plot(
            xs,
            [lv["p99_ms"] for lv in levels],
            marker="^",
            ls=":",
            color=colour,
            label=f"{label} p99",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("load (msg/s): 10 %, 50 %, 90 % of each client's own maximum")
    ax.set_ylabel("send_and_wait latency (ms)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    size = points[0]["point"]["size"]
    return (
        fig,
        f"Latency under load ({size} B, one partition; raw loop: n/a, no per-message result)",
    )


def _plot_soak(plt: Any, clients: list[str], points: list[dict[str, Any]]) -> tuple[Any, str]:
    fig, ax = plt.subplots(figsize=(8, 5))
    for c in clients:
        marks = points[0]["median"][c].get("rss_marks_mb", {})
        _line(ax, c, [int(k) for k in marks], list(marks.values()))
    ax.xaxis.set_major_formatter(lambda x, _: f"{x:,.0f}")
    ax.set_xlabel("messages sent")
    ax.set_ylabel("RSS (MB)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    pt = points[0]["point"]
    return fig, f"RSS over a soak: {pt['count']:,} x {pt['size']} B, fire and forget"


def _plot_commit_interval(
    plt: Any, clients: list[str], points: list[dict[str, Any]]
) -> tuple[Any, str]:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    ref = points[0]["median"]
    eo = [pt for pt in points if pt["point"]["commit_interval"] is not None]
    xs = [pt["point"]["commit_interval"] for pt in eo]
    ax = axes[0]
    for c in ("eo_send", "eo_many"):
        if c not in clients:
            continue
        colour, label = STYLE[c]
        ax.plot(
            xs,
            [pt["median"][c].get("rate", NAN) for pt in eo],
            marker="o",
            color=colour,
            label=f"{label}, exactly once",
        )
        ax.axhline(
            ref[c].get("rate", NAN), color=colour, ls="--", label=f"{label}, at-least-once spool"
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.set_xlabel("commit_interval (s)")
    ax.set_ylabel("msg/s")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[1]
    if "eo_wait" in clients:
        load = points[0]["point"]["load_rate"]
        for when, marker, text in (("alone", "o", "alone"), ("loaded", "^", f"at {load:,} msg/s")):
            for q, ls in (("p50", "-"), ("p99", ":")):
                ax.plot(
                    xs,
                    [pt["median"]["eo_wait"].get(f"{when}_{q}_ms", NAN) for pt in eo],
                    marker=marker,
                    ls=ls,
                    color=STYLE["eo_wait"][0] if when == "alone" else "tab:brown",
                    label=f"{q}, {text}",
                )
        ax.axhline(
            ref["eo_wait"].get("alone_p50_ms", NAN),
            color="gray",
            ls="--",
            label="p50 alone, at-least-once spool",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.set_xlabel("commit_interval (s)")
    ax.set_ylabel("send_and_wait latency (ms)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    pt = points[0]["point"]
    return fig, (
        f"Exactly once by commit interval ({pt['count']:,} x {pt['size']} B, one partition, "
        "spool without fsync, idempotent, acks=all)"
    )

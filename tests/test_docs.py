"""The code examples of the docs, run against the embedded broker so they cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trio_producer.testing import consume_all, create_topics, free_port

pytestmark = pytest.mark.broker

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


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


def test_quickstart(doc_topics: str) -> None:
    before = len(consume_all(doc_topics, "events", idle_timeout=0.5))
    proc = run_example("quickstart.py", doc_topics)
    assert proc.returncode == 0, proc.stderr
    topic, partition, offset = proc.stdout.splitlines()[0].split()
    assert (topic, partition, int(offset)) == ("events", "0", before + 1)
    assert proc.stdout.splitlines()[1] == "2 delivered"


def test_bulk(doc_topics: str) -> None:
    proc = run_example("bulk.py", doc_topics)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "101002 delivered"


def test_persist_undelivered_with_a_dead_broker(tmp_path: Path) -> None:
    spool = tmp_path / "spool.jsonl"
    proc = run_example("persist_undelivered.py", f"127.0.0.1:{free_port()}", SPOOL_FILE=str(spool))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"spooled 100 undelivered message(s) to {spool}"
    records = [json.loads(line) for line in spool.read_text().splitlines()]
    assert sorted(r["value"] for r in records) == sorted(f"order-{i}" for i in range(100))
    assert {r["key"] for r in records} == {"shop-1"}


def test_persist_undelivered_with_a_live_broker(doc_topics: str, tmp_path: Path) -> None:
    proc = run_example("persist_undelivered.py", doc_topics, SPOOL_FILE=str(tmp_path / "s"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "all delivered"


def test_sigterm_drains(doc_topics: str) -> None:
    before = len(consume_all(doc_topics, "ticks", idle_timeout=0.5))
    proc = run_example("sigterm.py", doc_topics, EXAMPLE_STOP_AFTER="1.0")
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.split()
    assert words[0] == "stopped;"
    delivered = int(words[1])
    assert delivered > 10
    assert len(consume_all(doc_topics, "ticks", expected=before + delivered)) == before + delivered


def test_testing_example_runs_with_the_installed_plugin(kafka_bootstrap: str) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(EXAMPLES / "test_example.py"),
        ],
        env={**os.environ, "TRIO_PRODUCER_TEST_BOOTSTRAP": kafka_bootstrap},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=EXAMPLES.parent.parent,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout

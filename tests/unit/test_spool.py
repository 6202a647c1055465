"""The durable spool's storage engine (trio_producer.spool._engine): no broker, no Trio."""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from array import array
from pathlib import Path
from typing import Any

import pytest

from trio_producer.spool import _format
from trio_producer.spool._engine import (
    Spool,
    SpoolDiskFullError,
    SpoolError,
    SpoolFullError,
    SpoolLockedError,
    _seg_name,
)
from trio_producer.spool._format import _HEAD, RECORD_OVERHEAD, SpoolRecord
from trio_producer.spool._format import parse_record as _parse_record

ROOT = Path(__file__).resolve().parents[2]
SEG = 4096


def crash(spool: Spool) -> None:
    """Drop the spool's files and lock as a killed process would: no cleanup at all."""
    spool._release_all()


def segment_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


def record_offsets(seg: Path) -> list[tuple[int, int]]:
    """``(offset, length)`` of every valid record in a segment file, in order."""
    data = seg.read_bytes()
    out: list[tuple[int, int]] = []
    pos = 64
    while True:
        parsed = _parse_record(data, pos, len(data))
        if parsed is None:
            return out
        out.append((pos, parsed[0]))
        pos += parsed[0]


def fields(r: SpoolRecord) -> tuple[Any, ...]:
    return (r.topic, r.value, r.key, r.headers, r.partition, r.timestamp)


MESSAGES: list[tuple[Any, ...]] = [
    ("events", b"v0", None, None, -1, 0),
    ("events", b"v1", b"k1", [("trace", b"abc"), ("empty", None), ("z", b"")], 3, 1_700_000),
    ("ünïcode-topic", None, b"tombstone-key", None, 0, 2**62),
    ("events", b"", b"", [("naïve", b"\x00\xff")], 2**31 - 1, 1),
    ("t", b"\x00" * 300, None, None, -1, 0),  # a value that ends in zero bytes
]


def test_every_field_round_trips(tmp_path: Path) -> None:
    with Spool.open(tmp_path, max_bytes=1 << 20) as spool:
        uuid = spool.uuid
        seqs = [spool.append(*m) for m in MESSAGES]
        first = spool.append_many(MESSAGES)
        assert seqs == [0, 1, 2, 3, 4]
        assert first == 5
        ids = [spool.id_of(s) for s in range(10)]
    with Spool.open(tmp_path, max_bytes=1 << 20) as spool:
        assert [r.seq for r in spool.recovered] == list(range(10))
        assert [fields(r) for r in spool.recovered] == MESSAGES + MESSAGES
        assert [r.id for r in spool.recovered] == ids
        assert ids[7] == uuid + (7).to_bytes(8, "big")
        assert spool.uuid != uuid
        assert spool.recovery.recovered == 10
        assert spool.recovery.duplicates_possible == 0  # none was handed to Kafka
        assert (spool.recovery.torn_tails, spool.recovery.corrupt_records) == (0, 0)
        assert spool.next_seq == 10
        assert spool.id_of(3) == ids[3]  # a recovered record keeps its id


def test_empty_headers_come_back_as_none(tmp_path: Path) -> None:
    with Spool.open(tmp_path, max_bytes=1 << 20) as spool:
        spool.append("t", b"v", None, [])
    with Spool.open(tmp_path, max_bytes=1 << 20) as spool:
        assert spool.recovered[0].headers is None


def test_confirmations_delete_segments_and_free_bytes(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path, max_bytes=16 * SEG, segment_bytes=SEG)
    try:
        value = b"x" * 300
        size = RECORD_OVERHEAD + 1 + 300
        per_segment = (SEG - 64) // size
        seqs = [spool.append("t", value) for _ in range(3 * per_segment)]
        assert len(segment_files(tmp_path)) == 3
        assert spool.used_bytes == 3 * SEG
        assert spool.pending == len(seqs)
        first_seg = segment_files(tmp_path)[0]
        spool.confirm_many(seqs[: per_segment - 1])
        spool.maintain()
        assert first_seg.exists()
        spool.confirm(seqs[per_segment - 1])
        spool.confirm(seqs[0])  # a second confirmation is ignored
        assert spool.maintenance_due
        spool.maintain()
        assert not first_seg.exists()
        assert not first_seg.with_suffix(".ack").exists()
        # 2 live segments and a preallocated spare
        assert spool.used_bytes == 3 * SEG
        assert len(list(tmp_path.glob("spare-*.tmp"))) == 1
        assert spool.pending == 2 * per_segment
        # The active segment stays even when all of it is confirmed.
        spool.confirm_many(seqs[per_segment:])
        spool.maintain()
        assert len(segment_files(tmp_path)) == 1
        assert spool.pending == 0
        spool.confirm(seqs[1])  # in a deleted segment: ignored
        with pytest.raises(ValueError, match="seq 999999 was never appended"):
            spool.confirm(999_999)
    finally:
        spool.close()
    assert segment_files(tmp_path) == []  # close deletes the fully confirmed active one
    with Spool.open(tmp_path, max_bytes=16 * SEG, segment_bytes=SEG) as spool:
        assert spool.recovered == []
        assert spool.next_seq == 0  # a fresh run: new uuid, ids cannot collide


def test_restart_recovers_exactly_the_unconfirmed_in_order(tmp_path: Path) -> None:
    rng = random.Random(12)
    spool = Spool.open(tmp_path, max_bytes=64 * SEG, segment_bytes=SEG)
    seqs = [spool.append("t", f"m{i}".encode(), None) for i in range(300)]
    seqs += range(
        spool.append_many([("t", f"m{i}".encode(), None, None, -1, 0) for i in range(300, 600)]),
        600,
    )
    confirmed = set(rng.sample(seqs, 400))
    spool.confirm_many(sorted(confirmed, key=lambda _: rng.random()))
    crash(spool)  # no close: a kill -9 after the confirmations were written
    expected = [s for s in seqs if s not in confirmed]
    spool = Spool.open(tmp_path, max_bytes=64 * SEG, segment_bytes=SEG)
    assert [r.seq for r in spool.recovered] == expected
    assert [r.value for r in spool.recovered] == [f"m{s}".encode() for s in expected]
    assert spool.next_seq == 600
    # Confirm half of them, append more, restart again.
    spool.confirm_many(expected[::2])
    new = [spool.append("t", f"m{i}".encode()) for i in range(600, 650)]
    spool.confirm_many(new[:10])
    spool.close()
    with Spool.open(tmp_path, max_bytes=64 * SEG, segment_bytes=SEG) as spool:
        assert [r.seq for r in spool.recovered] == expected[1::2] + new[10:]


def _one_segment_spool(path: Path, n: int = 6) -> Path:
    spool = Spool.open(path, max_bytes=1 << 20, segment_bytes=64 << 10)
    for i in range(n):
        spool.append("events", f"value-{i}".encode() * 3, b"key", [("h", b"x")], i, 1000 + i)
    crash(spool)
    (seg,) = segment_files(path)
    return seg


@pytest.mark.parametrize("how", ["truncated", "zeroed"])
def test_torn_tail_is_cut_and_counted_at_every_offset(tmp_path: Path, how: str) -> None:
    """A partly written last record is a torn tail; a file that ends inside one is damage
    (a preallocated file cannot shrink through a crash): counted lost, not cut."""
    seg = _one_segment_spool(tmp_path / "orig")
    original = seg.read_bytes()
    start, length = record_offsets(seg)[-1]
    for cut in range(start, start + length):
        work = tmp_path / f"{how}-{cut}"
        shutil.copytree(seg.parent, work)
        torn = work / seg.name
        if how == "truncated":
            os.truncate(torn, cut)
        else:
            torn.write_bytes(original[:cut] + bytes(len(original) - cut))
        with Spool.open(work, max_bytes=1 << 20, segment_bytes=64 << 10) as spool:
            assert [r.seq for r in spool.recovered] == [0, 1, 2, 3, 4], cut
            assert spool.recovered[4].value == b"value-4" * 3
            tail = len(original[start:cut].rstrip(b"\0"))
            if how == "truncated":
                assert spool.recovery.torn_tail_bytes == 0, cut
                assert spool.recovery.corrupt_records == (1 if cut > start else 0), cut
            else:
                assert spool.recovery.torn_tail_bytes == tail, cut
                assert spool.recovery.torn_tails == (1 if tail else 0), cut
                assert spool.recovery.corrupt_records == 0
        # The tail was cut (the damage was not: found again).
        with Spool.open(work, max_bytes=1 << 20, segment_bytes=64 << 10) as spool:
            assert len(spool.recovered) == 5
            assert spool.recovery.torn_tails == 0
            if how == "truncated":
                assert spool.recovery.corrupt_records == (1 if cut > start else 0), cut
        shutil.rmtree(work)


@pytest.mark.parametrize(
    "where", ["magic", "length", "seq", "topic", "value", "header", "crc", "last byte"]
)
def test_corrupt_middle_record_is_skipped_counted_and_logged(
    tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    seg = _one_segment_spool(tmp_path, n=10)
    start, length = record_offsets(seg)[4]
    offset = {
        "magic": 0,
        "length": 4,
        "seq": 8,
        "topic": _HEAD.size + 2,
        "value": _HEAD.size + len("events") + len("key") + 1,
        "header": length - 6,
        "crc": length - 2,
        "last byte": length - 1,
    }[where]
    data = bytearray(seg.read_bytes())
    data[start + offset] ^= 0x40
    seg.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR, logger="trio_producer"):
        spool = Spool.open(tmp_path, max_bytes=1 << 20, segment_bytes=64 << 10)
    with spool:
        assert [r.seq for r in spool.recovered] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
        assert spool.recovered[4].value == b"value-5" * 3
        assert spool.recovery.corrupt_records == 1
        assert spool.recovery.corrupt_bytes == length
        assert spool.recovery.torn_tails == 0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].name == "trio_producer"
    assert "1 corrupt record(s) skipped" in errors[0].getMessage()
    assert "seqs 4..4 lost" in errors[0].getMessage()


def test_an_uncommitted_batch_is_torn_not_corrupt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool.open(tmp_path, max_bytes=1 << 20)
    for i in range(3):
        spool.append("t", b"single %d" % i)
    spool.append_many([("t", b"batch %d" % i, None, None, -1, 0) for i in range(5)])
    crash(spool)
    (seg,) = segment_files(tmp_path)
    start, _ = record_offsets(seg)[3]
    end = sum(record_offsets(seg)[-1])
    data = bytearray(seg.read_bytes())
    data[start : start + 4] = bytes(4)  # killed before append_many wrote its first magic
    seg.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="trio_producer"):
        spool = Spool.open(tmp_path, max_bytes=1 << 20)
    with spool:
        assert [r.value for r in spool.recovered] == [b"single 0", b"single 1", b"single 2"]
        assert spool.recovery.torn_tails == 1
        assert spool.recovery.torn_tail_bytes == end - start
        assert spool.recovery.corrupt_records == 0
    assert caplog.records == []


def test_corrupt_ack_batch_means_sent_again(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path, max_bytes=1 << 20)
    for i in range(10):
        spool.append("t", b"%d" % i)
    spool.confirm_many([0, 1, 2])
    spool.confirm_many([5, 6])
    crash(spool)
    (ack,) = tmp_path.glob("*.ack")
    data = bytearray(ack.read_bytes())
    data[10] ^= 1  # in the first batch's seqs
    ack.write_bytes(bytes(data) + b"\x07\x00")  # and a torn third batch
    with Spool.open(tmp_path, max_bytes=1 << 20) as spool:
        assert [r.seq for r in spool.recovered] == [0, 1, 2, 3, 4, 7, 8, 9]
        assert spool.recovery.corrupt_acks == 1
        spool.confirm_many([0, 1])
    with Spool.open(tmp_path, max_bytes=1 << 20) as spool:  # appended after the cut tail
        assert [r.seq for r in spool.recovered] == [2, 3, 4, 7, 8, 9]


def test_a_second_open_in_this_process_is_refused(tmp_path: Path) -> None:
    with Spool.open(tmp_path, max_bytes=1 << 20) as spool:
        spool.append("t", b"v")
        with pytest.raises(SpoolLockedError) as info:
            Spool.open(tmp_path, max_bytes=1 << 20)
        assert info.value.path == tmp_path
        assert info.value.pid == os.getpid()
        assert str(info.value) == (
            f"spool {str(tmp_path)!r} is locked by process {os.getpid()}: "
            "one producer per spool directory"
        )
    with Spool.open(tmp_path, max_bytes=1 << 20) as spool:  # unlocked by close
        assert len(spool.recovered) == 1


HOLDER = """
import sys
from trio_producer.spool._engine import Spool, SpoolLockedError
try:
    spool = Spool.open(sys.argv[1], max_bytes=1 << 20)
except SpoolLockedError as exc:
    print("locked", exc.pid, exc, flush=True)
    raise SystemExit(0)
spool.append("t", b"from the child")
print("ready", flush=True)
sys.stdin.readline()
spool.close()
"""


def test_a_second_process_is_refused(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", HOLDER, str(tmp_path)]
    with Spool.open(tmp_path, max_bytes=1 << 20):
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == (
            f"locked {os.getpid()} spool {str(tmp_path)!r} is locked by process "
            f"{os.getpid()}: one producer per spool directory"
        )
    child = subprocess.Popen(
        cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdin is not None
        assert child.stdout.readline() == "ready\n"
        with pytest.raises(SpoolLockedError, match=f"locked by process {child.pid}"):
            Spool.open(tmp_path, max_bytes=1 << 20)
        child.stdin.write("\n")
        child.stdin.close()
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()  # type: ignore[union-attr]
    with Spool.open(tmp_path, max_bytes=1 << 20) as spool:
        assert [r.value for r in spool.recovered] == [b"from the child"]


def test_a_full_spool_refuses_without_writing_and_frees_up(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path, max_bytes=4 * SEG, segment_bytes=SEG)
    try:
        value = b"x" * 500
        size = RECORD_OVERHEAD + 1 + 500
        seqs = []
        while spool.has_room(size):
            seqs.append(spool.append("t", value))
        assert spool.used_bytes == 4 * SEG
        assert len(seqs) == 4 * ((SEG - 64) // size)
        with pytest.raises(SpoolFullError, match=r"is full \(16384 of 16384 bytes\)"):
            spool.append("t", value)
        with pytest.raises(SpoolFullError):
            spool.append_many([("t", value, None, None, -1, 0)] * 10)
        assert spool.next_seq == len(seqs)  # nothing was written
        assert not spool.has_room(size)
        assert spool.has_room(0)
        spool.confirm_many(seqs[:3])  # not a whole segment yet
        spool.maintain()
        assert not spool.has_room(size)
        spool.confirm_many(seqs[3:7])
        spool.maintain()  # the first segment is deleted; a spare takes its place
        assert spool.has_room(size)
        more = spool.append_many([("t", value, None, None, -1, 0)] * 7)
        assert more == len(seqs)
    finally:
        spool.close()
    with Spool.open(tmp_path, max_bytes=4 * SEG, segment_bytes=SEG) as spool:
        assert [r.seq for r in spool.recovered] == list(range(7, len(seqs) + 7))


def test_a_record_larger_than_a_segment_is_refused(tmp_path: Path) -> None:
    with Spool.open(tmp_path, max_bytes=4 * SEG, segment_bytes=SEG) as spool:
        with pytest.raises(SpoolError, match="does not fit in a spool segment of 4096 bytes"):
            spool.append("t", b"x" * SEG)
        assert spool.next_seq == 0


def test_append_many_across_segments_is_in_order(tmp_path: Path) -> None:
    items = [("t", b"%05d" % i * 20, None, None, -1, 0) for i in range(500)]
    with Spool.open(tmp_path, max_bytes=256 * SEG, segment_bytes=SEG) as spool:
        assert spool.append_many(items[:1]) == 0
        assert spool.append_many(items[1:]) == 1
        assert spool.append_many([]) == 500
        assert len(segment_files(tmp_path)) > 10
    with Spool.open(tmp_path, max_bytes=256 * SEG, segment_bytes=SEG) as spool:
        assert [r.value for r in spool.recovered] == [i[1] for i in items]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_bytes": 100}, "max_bytes must be an int >= 8192, not 100"),
        ({"max_bytes": 1 << 20, "segment_bytes": 1 << 20}, "segment_bytes must be an int from"),
        ({"max_bytes": 1 << 20, "sync": "sometimes"}, "sync must be one of"),
        ({"max_bytes": 1 << 20, "sync_interval": 0}, "sync_interval must be a number"),
    ],
)
def test_bad_settings(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Spool.open(tmp_path, **kwargs)


@pytest.mark.parametrize("policy", ["never", "interval", "always"])
def test_sync_and_maintain_in_another_thread(tmp_path: Path, policy: str) -> None:
    spool = Spool.open(tmp_path, max_bytes=64 * SEG, segment_bytes=SEG, sync=policy)  # type: ignore[arg-type]
    stop = threading.Event()
    errors: list[BaseException] = []

    def background() -> None:
        try:
            while not stop.is_set():
                spool.sync()
                spool.maintain()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=background)
    thread.start()
    try:
        unconfirmed = []
        for i in range(3000):
            seq = spool.append("t", b"%d" % i * 10)
            if i % 50 == 49:
                spool.confirm_many(range(seq - 49, seq - 1))  # all but the last two
                unconfirmed += [seq - 1, seq]
            if i % 500 == 0:
                time.sleep(0.001)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert spool.sync() == 2999
    assert spool.synced_seq == 2999
    spool.close()
    with Spool.open(tmp_path, max_bytes=64 * SEG, segment_bytes=SEG) as spool:
        assert [r.seq for r in spool.recovered] == unconfirmed
        spool.confirm_many(unconfirmed)
        spool.maintain()
    assert spool.used_bytes == 0
    assert sorted(tmp_path.iterdir()) == [tmp_path / "HANDED", tmp_path / "LOCK"]


CHILD = """
import sys
from trio_producer.spool._engine import Spool
path, mode = sys.argv[1], sys.argv[2]
spool = Spool.open(path, max_bytes=1 << 30, segment_bytes=64 << 10)
print("open", spool.uuid.hex(), flush=True)
i = 0
while True:
    if mode == "single":
        seq = spool.append("t", b"value-%d" % i, b"k", [("n", b"%d" % i)], -1, i + 1)
        print("a", seq, flush=True)
        if seq % 3 == 0:
            spool.confirm(seq)
            print("c", seq, flush=True)
        i += 1
    else:
        batch = [("t", b"value-%d" % j, b"k", [("n", b"%d" % j)], -1, j + 1)
                 for j in range(i, i + 37)]
        first = spool.append_many(batch)
        print("a", *range(first, first + 37), flush=True)
        spool.confirm_many(range(first, first + 37, 3))
        print("c", *range(first, first + 37, 3), flush=True)
        i += 37
"""


@pytest.mark.parametrize(
    "mode",
    ["single", pytest.param("batch", marks=pytest.mark.slow)],  # (4 s each)
)
def test_kill_9_loses_nothing_appended(tmp_path: Path, mode: str) -> None:
    """SIGKILL a child that appends (and confirms every third message) at a random moment.

    Keys are record ids (run uuid, seq): every fully printed "a" line must be recovered
    unless its confirmation may have been written; no fully printed "c" may come back.
    Records recovered in one round must come back in the next (nobody confirms them).
    """
    rng = random.Random(f"kill-9-{mode}")
    carried: set[bytes] = set()
    for round_ in range(4):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path), mode],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        try:
            assert child.stdout is not None
            opened, run = child.stdout.readline().split()
            assert opened == b"open"
            time.sleep(rng.uniform(0.02, 0.4))
            child.send_signal(signal.SIGKILL)
            out = child.stdout.read()
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
            child.stdout.close()  # type: ignore[union-attr]
        assert child.returncode == -signal.SIGKILL
        uuid = bytes.fromhex(run.decode())
        appended: set[bytes] = set()
        maybe_confirmed: set[bytes] = set()
        confirmed: set[bytes] = set()
        lines = out.split(b"\n")[:-1]  # the last piece has no newline: not fully printed
        assert lines, f"round {round_}: nothing printed"
        for line in lines:
            kind, *numbers = line.split()
            ids = [uuid + int(n).to_bytes(8, "big") for n in numbers]
            if kind == b"a":
                appended.update(ids)
                maybe_confirmed.update(ids[::3] if mode == "batch" else ids[:1])
            else:
                confirmed.update(ids)
        if mode == "single":
            maybe_confirmed = {i for i in maybe_confirmed if int.from_bytes(i[16:]) % 3 == 0}
        with Spool.open(tmp_path, max_bytes=1 << 30, segment_bytes=64 << 10) as spool:
            got = {r.id: r for r in spool.recovered}
            assert spool.recovery.corrupt_records == 0
        missing = (appended - maybe_confirmed) | carried
        assert missing <= got.keys(), f"round {round_}: lost {len(missing - got.keys())}"
        assert not confirmed & got.keys(), f"round {round_}: confirmed but recovered again"
        for r in got.values():
            assert r.value is not None
            n = int(r.value.removeprefix(b"value-"))
            assert (r.key, r.headers, r.timestamp) == (b"k", [("n", b"%d" % n)], n + 1)
        carried = set(got)


def test_read_from_gives_back_this_runs_records_across_segments(tmp_path: Path) -> None:
    """Store and forward: what was spooled but not kept in memory is read back in order,
    also after its segment was sealed and closed by maintain() (in another thread)."""
    spool = Spool.open(tmp_path / "s", max_bytes=1 << 20, segment_bytes=8192)
    try:
        seqs = [
            spool.append("t", b"v%d" % i, key=b"k" if i % 2 else None, headers=[("h", b"%d" % i)])
            for i in range(300)
        ]
        assert spool.recovery.segments == 0
        spool.maintain()  # closes the sealed segments' own mappings
        got = []
        seq = seqs[0]
        while seq < spool.next_seq:
            chunk = spool.read_from(seq, 37)
            assert chunk
            got.extend(chunk)
            seq = chunk[-1].seq + 1
        assert [r.seq for r in got] == seqs
        assert [r.value for r in got] == [b"v%d" % i for i in range(300)]
        assert [r.headers for r in got] == [[("h", b"%d" % i)] for i in range(300)]
        assert [r.id for r in got] == [spool.id_of(s) for s in seqs]
        assert spool.read_from(spool.next_seq, 10) == []
        assert [r.seq for r in spool.read_from(150, 3)] == [150, 151, 152]  # random access
        with pytest.raises(ValueError, match="is not a record of this run"):
            spool.read_from(spool.next_seq + 1, 1)
    finally:
        spool.close()


# ---- the producer's bulk path: append_values, confirmations of whole batches -------------

VALUES: list[bytes | None] = [b"v0", None, b"", b"\x00" * 300, b"v4"]
KEYS: list[bytes | None] = [b"k0", b"k1", None, b"", None]


def test_append_values_writes_what_append_many_writes(tmp_path: Path) -> None:
    """The same records, byte for byte (after the segment header), for plain values,
    None values and keys; read back with the same fields and in order."""
    plain = [b"p%d" % i * 7 for i in range(20)]
    batches: list[tuple[list[bytes | None], list[bytes | None] | None]] = [
        (list(plain), None),
        (VALUES, None),
        (VALUES, KEYS),
    ]
    for how in ("many", "values"):
        with Spool.open(tmp_path / how, max_bytes=1 << 20) as spool:
            for values, keys in batches:
                if how == "values":
                    first = spool.append_values("tøpic", values, keys)
                else:
                    ks = keys if keys is not None else [None] * len(values)
                    first = spool.append_many(
                        [("tøpic", v, k, None, -1, 0) for v, k in zip(values, ks, strict=True)]
                    )
                assert first == spool.next_seq - len(values)
            crash(spool)
    (many,) = segment_files(tmp_path / "many")
    (values_seg,) = segment_files(tmp_path / "values")
    assert many.read_bytes()[64:] == values_seg.read_bytes()[64:]
    with Spool.open(tmp_path / "values", max_bytes=1 << 20) as spool:
        expected = [(v, None) for v in plain] + list(zip(VALUES, [None] * 5, strict=True))
        expected += list(zip(VALUES, KEYS, strict=True))
        assert [(r.value, r.key) for r in spool.recovered] == expected
        assert {(r.topic, r.headers, r.partition, r.timestamp) for r in spool.recovered} == {
            ("tøpic", None, -1, 0)
        }
        assert [r.seq for r in spool.recovered] == list(range(30))


def test_append_values_across_segments_is_in_order(tmp_path: Path) -> None:
    values = [b"%05d" % i * 20 for i in range(500)]
    with Spool.open(tmp_path, max_bytes=256 * SEG, segment_bytes=SEG) as spool:
        assert spool.append_values("t", values[:1]) == 0
        assert spool.segment_room == SEG - 64 - (RECORD_OVERHEAD + 1 + 100)
        assert spool.append_values("t", values[1:]) == 1
        assert spool.append_values("t", []) == 500
        assert len(segment_files(tmp_path)) > 10
    assert spool.segment_room == 0  # closed
    with Spool.open(tmp_path, max_bytes=256 * SEG, segment_bytes=SEG) as spool:
        assert [r.value for r in spool.recovered] == values


def test_an_empty_batch_writes_nothing(tmp_path: Path) -> None:
    """Found while adding append_values: append_many([]) wrote a lone magic at the end
    of the segment, which recovery then counted as a torn tail."""
    spool = Spool.open(tmp_path, max_bytes=1 << 20)
    spool.append("t", b"one")
    assert spool.append_many([]) == 1
    assert spool.append_values("t", []) == 1
    crash(spool)
    with Spool.open(tmp_path, max_bytes=1 << 20) as spool:
        assert [r.value for r in spool.recovered] == [b"one"]
        assert (spool.recovery.torn_tails, spool.recovery.torn_tail_bytes) == (0, 0)


def test_confirming_whole_batches_in_any_order(tmp_path: Path) -> None:
    """The delivery reports of a batch, in any order, in one confirm_many (the fast
    path); repeated, already confirmed and cross-segment lists count each seq once."""
    rng = random.Random(7)
    spool = Spool.open(tmp_path, max_bytes=64 * SEG, segment_bytes=SEG)
    try:
        first = spool.append_values("t", [b"x" * 100] * 200)  # 7 segments
        seqs = list(range(first, first + 200))
        batch = seqs[5:25]  # in the first segment
        rng.shuffle(batch)
        spool.confirm_many(batch)
        assert spool.pending == 180
        spool.confirm_many(seqs[:12])  # 5 new, 7 again
        assert spool.pending == 175
        # 12 seqs from 30 to 41, like a range, but 30 twice and no 40:
        spool.confirm_many([*seqs[30:40], seqs[30], seqs[41]])
        assert spool.pending == 164
        spool.confirm_many(seqs[100:120])  # across a segment boundary
        assert spool.pending == 144
    finally:
        crash(spool)
    confirmed = set(seqs[:25] + seqs[30:40] + seqs[41:42] + seqs[100:120])
    with Spool.open(tmp_path, max_bytes=64 * SEG, segment_bytes=SEG) as spool:
        assert [r.seq for r in spool.recovered] == [s for s in seqs if s not in confirmed]


def test_a_repeated_confirmation_from_a_deleted_segment_is_ignored(tmp_path: Path) -> None:
    """Found while adding the fast path: a segment's confirmation marks grow ahead while
    it is active; a seq of a later, deleted segment, confirmed again, was counted in the
    earlier one, which was then deleted with a record never confirmed (lost)."""
    spool = Spool.open(tmp_path, max_bytes=64 * SEG, segment_bytes=SEG)
    try:
        spool.confirm(spool.append("t", b"x" * 300))  # while segment A is active
        seqs = [0] + [spool.append("t", b"x" * 300) for _ in range(39)]
        per_segment = spool._firsts[1]
        second = [s for s in seqs if per_segment <= s < 2 * per_segment]
        spool.confirm_many(second)  # all of segment B: deleted
        spool.maintain()
        spool.confirm_many([second[3]])  # B's again: ignored
        spool.confirm_many(seqs[1 : per_segment - 1])  # all of A but its last
        spool.maintain()
        assert spool.pending == 40 - 1 - per_segment - (per_segment - 2)
    finally:
        crash(spool)
    with Spool.open(tmp_path, max_bytes=64 * SEG, segment_bytes=SEG) as spool:
        assert spool.recovered[0].seq == per_segment - 1


CHILD_VALUES = """
import random, sys
from trio_producer.spool._engine import Spool
path = sys.argv[1]
rng = random.Random(sys.argv[2])
spool = Spool.open(path, max_bytes=1 << 30, segment_bytes=64 << 10)
print("open", spool.uuid.hex(), flush=True)
i = 0
while True:
    n = rng.randrange(1, 300)
    values = [b"value-%d" % j for j in range(i, i + n)]
    keys = [b"k%d" % j for j in range(i, i + n)] if i % 2 else None
    first = spool.append_values("t", values, keys)
    print("a", *range(first, first + n), flush=True)
    if rng.random() < 0.5:
        seqs = list(range(first, first + n))
        rng.shuffle(seqs)
        spool.confirm_many(seqs)
        print("c", *seqs, flush=True)
    i += n
"""


def test_kill_9_loses_no_batch_appended(tmp_path: Path) -> None:
    """SIGKILL a child that appends batches with append_values (some crossing segments)
    and confirms half of them whole: every batch it reported is recovered, unless
    confirmed; no batch it reported confirmed comes back."""
    rng = random.Random("kill-9-values")
    carried: set[bytes] = set()
    for round_ in range(4):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD_VALUES, str(tmp_path), str(round_)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        try:
            assert child.stdout is not None
            opened, run = child.stdout.readline().split()
            assert opened == b"open"
            time.sleep(rng.uniform(0.02, 0.4))
            child.send_signal(signal.SIGKILL)
            out = child.stdout.read()
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
            child.stdout.close()  # type: ignore[union-attr]
        uuid = bytes.fromhex(run.decode())
        appended: set[bytes] = set()
        confirmed: set[bytes] = set()
        lines = out.split(b"\n")[:-1]  # only whole lines
        assert lines, f"round {round_}: nothing printed"
        last_appended: set[bytes] = set()
        for line in lines:
            kind, *numbers = line.split()
            ids = {uuid + int(n).to_bytes(8, "big") for n in numbers}
            if kind == b"a":
                appended |= ids
                last_appended = ids
            else:
                confirmed |= ids
        # The last batch may have been confirmed without "c" printed yet.
        missing = (appended - confirmed - last_appended) | carried
        with Spool.open(tmp_path, max_bytes=1 << 30, segment_bytes=64 << 10) as spool:
            got = {r.id: r for r in spool.recovered}
            assert spool.recovery.corrupt_records == 0
        assert missing <= got.keys(), f"round {round_}: lost {len(missing - got.keys())}"
        assert not confirmed & got.keys(), f"round {round_}: confirmed but recovered again"
        for r in got.values():
            assert r.value is not None
            n = int(r.value.removeprefix(b"value-"))
            assert r.key in (None, b"k%d" % n)
        carried = set(got)


class _Report:
    """A failed delivery report's message, as librdkafka hands it to the callback."""

    def __init__(self, value: bytes, key: bytes | None = None) -> None:
        self._value, self._key = value, key

    def topic(self) -> str:
        return "t"

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def partition(self) -> int:
        return 0

    def timestamp(self) -> tuple[int, int]:
        return (0, 0)


def test_a_run_confirms_at_the_stop_only_what_it_can_tell_was_delivered() -> None:
    """A spooled run's failure reports do not say which of its messages failed: they are
    matched by key and value. While the producer runs every settled message leaves the
    spool (handed back or delivered); at the stop a purged one stays, and so does every
    message of the run that a kept failure cannot be told apart from."""
    from confluent_kafka import KafkaError

    from trio_producer._delivery import Epoch
    from trio_producer.spool._reports import Confirmations, SpooledRun

    def run_of(*payloads: tuple[bytes | None, bytes]) -> tuple[Epoch, SpooledRun]:
        epoch = Epoch()
        run = SpooledRun(epoch)
        for seq, (key, value) in enumerate(payloads):
            item: Any = {"topic": "t", "value": value, "ticket": seq}
            if key is not None:
                item["key"] = key
            run.items.append(item)
        epoch.runs.append(run)
        return epoch, run

    purged = KafkaError(KafkaError._PURGE_QUEUE)
    payloads = [(None, b"a"), (None, b"b"), (None, b"a"), (b"k", b"c"), (None, b"c")]

    def settle(failed: list[tuple[bytes | None, bytes]], *, stopping: bool) -> list[int]:
        epoch, run = run_of(*payloads)
        confirmed: list[int] = []
        confirmations = Confirmations(confirmed.extend)
        for _ in range(len(payloads) - len(failed) - 1):
            run(None, None)
        confirmations.after_reports(epoch, (), False)  # one report missing: not settled yet
        assert confirmed == []
        assert epoch.runs == [run]
        if len(failed) < len(payloads):
            run(None, None)
        for key, value in failed:
            run(purged, _Report(value, key))
        confirmations.after_reports(epoch, (), stopping)
        assert epoch.runs == []
        assert [f.error.message.value for f in epoch.failures] == [v for _, v in failed]
        return confirmed

    assert settle([], stopping=True) == [0, 1, 2, 3, 4]
    assert settle([(None, b"b")], stopping=False) == [0, 1, 2, 3, 4]  # handed back: out
    assert settle([(None, b"b")], stopping=True) == [0, 2, 3, 4]
    assert settle([(None, b"a")], stopping=True) == [1, 3, 4]  # 0 or 2? both stay
    assert settle([(b"k", b"c")], stopping=True) == [0, 1, 2, 4]
    assert settle([(None, b"a"), (None, b"c")], stopping=True) == [1, 3]
    assert settle(payloads, stopping=True) == []


def _three_segment_spool(path: Path) -> tuple[list[Path], int]:
    """Three segments of 10-byte-valued records, crashed: the first two sealed by
    rotation, the third active. Returns the segment files and records per segment."""
    spool = Spool.open(path, max_bytes=16 * SEG, segment_bytes=SEG)
    per_segment = (SEG - 64) // (RECORD_OVERHEAD + 1 + 10)
    for i in range(2 * per_segment + 5):
        spool.append("t", b"value%05d" % i)
    crash(spool)
    segs = segment_files(path)
    assert len(segs) == 3
    return segs, per_segment


@pytest.mark.parametrize("how", ["flipped", "zeroed"])
@pytest.mark.parametrize("which", ["first", "middle", "last", "last two", "only part of last"])
def test_damage_in_a_sealed_segment_is_corruption_never_a_torn_tail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, which: str, how: str
) -> None:
    """Found by the attack on #22: a damaged last record of a segment that a later one
    follows was counted as a torn tail (INFO, "never accepted"). Only the active
    segment can end in a torn write: a sealed one's records were all written whole."""
    segs, per = _three_segment_spool(tmp_path)
    offsets = record_offsets(segs[0])
    assert len(offsets) == per
    index = {"first": [0], "middle": [per // 2], "last": [per - 1], "last two": [per - 2, per - 1]}
    damaged = index.get(which, [per - 1])
    data = bytearray(segs[0].read_bytes())
    for i in damaged:
        start, length = offsets[i]
        if which == "only part of last":
            lo, hi = start + length // 2, start + length
        else:
            lo, hi = start, start + length
        if how == "zeroed":
            data[lo:hi] = bytes(hi - lo)
        else:
            data[lo + 9] ^= 0x40  # in the seq (or, for a part, in the value)
            data[hi - 1] ^= 0x40
    segs[0].write_bytes(bytes(data))
    with caplog.at_level(logging.INFO, logger="trio_producer"):
        spool = Spool.open(tmp_path, max_bytes=16 * SEG, segment_bytes=SEG)
    with spool:
        total = 2 * per + 5
        assert [r.seq for r in spool.recovered] == [s for s in range(total) if s not in damaged]
        assert spool.recovery.torn_tails == 0
        assert spool.recovery.torn_tail_bytes == 0
        assert spool.recovery.corrupt_records == len(damaged)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, errors
    lost = f"{damaged[0]}..{damaged[-1]}"
    assert f"seqs {lost} lost" in errors[0]
    # Reported again by the next recovery (not cut as if it were never accepted).
    crash(spool)
    with Spool.open(tmp_path, max_bytes=16 * SEG, segment_bytes=SEG) as spool:
        assert spool.recovery.corrupt_records == len(damaged)
        assert spool.recovery.torn_tails == 0


def test_a_torn_write_at_the_end_of_the_active_segment_stays_a_torn_tail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    segs, per = _three_segment_spool(tmp_path)
    start, length = record_offsets(segs[2])[-1]
    data = bytearray(segs[2].read_bytes())
    data[start + length - 3 : start + length] = bytes(3)  # the copy did not finish
    segs[2].write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="trio_producer"):
        spool = Spool.open(tmp_path, max_bytes=16 * SEG, segment_bytes=SEG)
    with spool:
        assert [r.seq for r in spool.recovered] == list(range(2 * per + 4))
        assert (spool.recovery.torn_tails, spool.recovery.corrupt_records) == (1, 0)
    assert caplog.records == []


def test_a_corrupt_header_of_a_sealed_segment_keeps_its_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    segs, per = _three_segment_spool(tmp_path)
    data = bytearray(segs[1].read_bytes())
    data[20] ^= 1  # in the uuid
    segs[1].write_bytes(bytes(data))
    with caplog.at_level(logging.INFO, logger="trio_producer"):
        spool = Spool.open(tmp_path, max_bytes=16 * SEG, segment_bytes=SEG)
    with spool:
        assert [r.seq for r in spool.recovered] == list(range(2 * per + 5))
        assert (spool.recovery.torn_tails, spool.recovery.corrupt_records) == (0, 0)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        f"spool {tmp_path}: segment {segs[1].name} has a corrupt header; its records get new ids"
    ]


class DiskFull:
    """An injection seam: the spool's writes fail with ENOSPC while ``full`` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import trio_producer.spool._engine as module

        self.full = False
        self.calls = 0
        real_write, real_fallocate = module._write, module._fallocate

        def write(fd: int, data: bytes) -> int:
            if self.full:
                self.calls += 1
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)

        def fallocate(fd: int, offset: int, length: int) -> None:
            if self.full:
                self.calls += 1
                raise OSError(errno.ENOSPC, "No space left on device")
            real_fallocate(fd, offset, length)

        monkeypatch.setattr(module, "_write", write)
        monkeypatch.setattr(module, "_fallocate", fallocate)


def test_a_full_disk_refuses_the_next_segment_at_the_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    disk = DiskFull(monkeypatch)
    spool = Spool.open(tmp_path, max_bytes=64 * SEG, segment_bytes=SEG)
    try:
        disk.full = True
        seqs = []
        with caplog.at_level(logging.WARNING, logger="trio_producer"):
            while spool.segment_room >= RECORD_OVERHEAD + 1 + 100:
                seqs.append(spool.append("t", b"x" * 100))  # preallocated: accepted
            for _ in range(3):
                with pytest.raises(SpoolDiskFullError) as info:
                    spool.append("t", b"x" * 100)
            with pytest.raises(SpoolDiskFullError):
                spool.append_values("t", [b"y" * 100] * 5)
        assert str(info.value) == (
            f"spool {str(tmp_path)!r}: no space left on the device for a new segment "
            f"({SEG} bytes): nothing of the call was accepted ([Errno 28] No space left "
            "on device)"
        )
        assert isinstance(info.value, SpoolError)
        assert info.value.path == tmp_path
        assert spool.next_seq == len(seqs)  # nothing of the refused calls was written
        assert spool.disk_error == (
            f"no space left on the device ({str(tmp_path)!r}): [Errno 28] No space left on device"
        )
        errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert [r.levelno for r in errors] == [logging.ERROR]  # once, not per call
        disk.full = False
        assert spool.append("t", b"x" * 100) == len(seqs)  # in a new segment
        assert spool.disk_error is None
    finally:
        crash(spool)
    with Spool.open(tmp_path, max_bytes=64 * SEG, segment_bytes=SEG) as spool:
        assert [r.seq for r in spool.recovered] == [*seqs, len(seqs)]


def test_a_full_disk_under_the_ack_log_keeps_confirming_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    disk = DiskFull(monkeypatch)
    spool = Spool.open(tmp_path, max_bytes=64 * SEG, segment_bytes=SEG)
    seqs = [spool.append("t", b"x" * 100) for _ in range(100)]  # 4 segments
    spool.confirm_many(seqs[:3])
    disk.full = True
    with caplog.at_level(logging.WARNING, logger="trio_producer"):
        spool.confirm_many(seqs[3:10])  # no exception: delivery goes on
        spool.confirm(seqs[10])
        spool.confirm_many(seqs[11:20])
    assert spool.pending == 80
    assert spool.unrecorded_confirmations == 17
    assert spool.disk_error == (
        f"no space left on the device ({str(tmp_path)!r}): [Errno 28] No space left on device"
    )
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == [
        f"spool {str(tmp_path)!r}: no space left on the device for the confirmation log "
        "([Errno 28] No space left on device): delivery goes on; messages confirmed "
        "from now on are sent again by the next run unless the log can be written "
        "before it ends"
    ]
    crash(spool)  # a crash before the disk had room: those 17 come back
    disk.full = False
    spool = Spool.open(tmp_path, max_bytes=64 * SEG, segment_bytes=SEG)
    assert [r.seq for r in spool.recovered] == seqs[3:]
    spool.confirm_many(seqs[3:10])
    disk.full = True
    spool.confirm_many(seqs[10:20])
    assert spool.unrecorded_confirmations == 10
    disk.full = False
    spool.confirm_many(seqs[20:21])  # the disk has room again: the held ones go first
    assert spool.unrecorded_confirmations == 0
    assert spool.disk_error is None
    crash(spool)
    with Spool.open(tmp_path, max_bytes=64 * SEG, segment_bytes=SEG) as spool:
        assert [r.seq for r in spool.recovered] == seqs[21:]


def test_a_short_ack_write_is_cut_so_later_batches_stay_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trio_producer.spool._engine as module

    real_write = module._write
    short = [True]

    def write(fd: int, data: bytes) -> int:
        if short[0]:
            short[0] = False
            return real_write(fd, data[:5])  # the disk filled in the middle
        return real_write(fd, data)

    spool = Spool.open(tmp_path, max_bytes=1 << 20)
    seqs = [spool.append("t", b"%d" % i) for i in range(10)]
    monkeypatch.setattr(module, "_write", write)
    spool.confirm_many(seqs[:4])  # written in part: cut, held
    assert spool.unrecorded_confirmations == 4
    spool.confirm_many(seqs[4:6])
    assert spool.unrecorded_confirmations == 0
    crash(spool)
    with Spool.open(tmp_path, max_bytes=1 << 20) as spool:
        assert [r.seq for r in spool.recovered] == seqs[6:]
        assert spool.recovery.corrupt_acks == 0


def test_reopening_on_a_full_disk_recovers_and_refuses_only_new_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = DiskFull(monkeypatch)
    spool = Spool.open(tmp_path, max_bytes=64 * SEG, segment_bytes=SEG)
    seqs = [spool.append("t", b"%d" % i) for i in range(50)]
    crash(spool)
    disk.full = True
    with Spool.open(tmp_path, max_bytes=64 * SEG, segment_bytes=SEG) as spool:
        assert [r.seq for r in spool.recovered] == seqs
        assert spool.disk_error is not None
        with pytest.raises(SpoolDiskFullError, match="no space left on the device"):
            spool.append("t", b"new")
        spool.confirm_many(seqs)  # delivered: the segment goes, space comes back
        spool.maintain()
        disk.full = False
        assert spool.append("t", b"new") == 50
    with Spool.open(tmp_path, max_bytes=64 * SEG, segment_bytes=SEG) as spool:
        assert [r.value for r in spool.recovered] == [b"new"]


def test_store_and_forward_reads_back_after_the_directory_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    spool = Spool.open(path, max_bytes=64 * SEG, segment_bytes=SEG)
    try:
        first = spool.append_values("t", [b"%05d" % i * 10 for i in range(200)])
        shutil.rmtree(path)
        records = spool.read_from(first, 200)
        assert [r.value for r in records] == [b"%05d" % i * 10 for i in range(200)]
        with pytest.raises(SpoolError, match="cannot create a new segment") as info:
            while True:
                spool.append("t", b"x" * 100)
        assert not isinstance(info.value, SpoolDiskFullError)
        spool.confirm_many(range(200))  # no exception
    finally:
        spool.close()  # logs, does not raise


def test_duplicates_possible_counts_what_was_handed_to_kafka(tmp_path: Path) -> None:
    """Found by the attack on #22: every recovered record counted as a possible
    duplicate, even when none could have been sent. Only records at or below the
    hand-off mark (written before the producer hands records to Kafka) can be."""
    spool = Spool.open(tmp_path, max_bytes=64 * SEG, segment_bytes=SEG)
    seqs = [spool.append("t", b"%d" % i) for i in range(10)]
    spool.note_handed(5)
    spool.note_handed(3)  # never goes back
    crash(spool)
    spool = Spool.open(tmp_path, max_bytes=64 * SEG, segment_bytes=SEG)
    assert [r.seq for r in spool.recovered] == seqs
    assert spool.recovery.duplicates_possible == 6  # seqs 0..5
    spool.confirm_many(seqs[:2])
    more = [spool.append("t", b"new") for _ in range(4)]
    crash(spool)  # this run handed nothing: the mark it carried over still holds
    spool = Spool.open(tmp_path, max_bytes=64 * SEG, segment_bytes=SEG)
    assert [r.seq for r in spool.recovered] == seqs[2:] + more
    assert spool.recovery.duplicates_possible == 4  # seqs 2..5
    spool.note_handed(spool.next_seq - 1)
    crash(spool)
    (tmp_path / "HANDED").write_bytes(b"\x00" * 12)  # damaged: unknown, so all of them
    with Spool.open(tmp_path, max_bytes=64 * SEG, segment_bytes=SEG) as spool:
        assert spool.recovery.duplicates_possible == len(spool.recovered) == 12


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A real 256 KiB file system (tmpfs); skipped where it cannot be mounted."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_real_full_disk(small_disk: Path) -> None:
    """The seam's story on a real file system that fills: refused at the call, nothing
    accepted lost, room again once confirmations delete segments."""
    path = small_disk / "spool"
    spool = Spool.open(path, max_bytes=1 << 30, segment_bytes=16 * SEG)
    seqs: list[int] = []
    try:
        with pytest.raises(SpoolDiskFullError, match="no space left on the device"):
            while True:
                seqs.append(spool.append("t", b"x" * 1000))
        assert spool.next_seq == len(seqs)
        assert 150 < len(seqs) < 260  # 256 KiB of ~1 KiB records
        spool.confirm_many(seqs[:-1])  # held or written, delivery goes on
        spool.maintain()  # the sealed segments go: room again
        assert spool.append("t", b"after") == len(seqs)
    finally:
        crash(spool)
    with Spool.open(path, max_bytes=1 << 30, segment_bytes=16 * SEG) as spool:
        assert [r.value for r in spool.recovered] == [b"x" * 1000, b"after"]


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]


@pytest.mark.parametrize("sealed_by", ["rotation", "recovery"])
def test_a_sealed_segment_left_newest_keeps_its_damage_corruption(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, sealed_by: str
) -> None:
    """Found by the attack after #22: once the later, fully confirmed segment was
    deleted (by close(), or the empty one a recovering run made), a sealed segment was
    the newest file again and damage at its last record was cut as a torn tail. The seal
    is written into its header, so it survives the deletion of the segments after it."""
    spool = Spool.open(tmp_path, max_bytes=16 * SEG, segment_bytes=SEG)
    if sealed_by == "rotation":
        while len(segment_files(tmp_path)) < 2:
            spool.append("t", b"x" * 200)
        first1 = spool._segments[1].first_seq
        spool.append("t", b"x" * 200)
        spool.confirm_many(range(first1, spool.next_seq))  # the later segment: delivered
        spool.close()
    else:
        for _ in range(10):
            spool.append("t", b"x" * 200)
        first1 = spool.next_seq
        crash(spool)
        Spool.open(tmp_path, max_bytes=16 * SEG, segment_bytes=SEG).close()  # recovers
    segs = segment_files(tmp_path)
    assert [s.name for s in segs] == ["0000000000000000.seg"]
    start, length = record_offsets(segs[0])[-1]
    data = bytearray(segs[0].read_bytes())
    data[start + length - 10] ^= 0xFF
    segs[0].write_bytes(bytes(data))
    with caplog.at_level(logging.INFO, logger="trio_producer"):
        spool = Spool.open(tmp_path, max_bytes=16 * SEG, segment_bytes=SEG)
    with spool:
        assert [r.seq for r in spool.recovered] == list(range(first1 - 1))
        assert (spool.recovery.torn_tails, spool.recovery.corrupt_records) == (0, 1)
        assert spool.next_seq == first1
    errors = _errors(caplog)
    assert len(errors) == 1, errors
    assert f"seqs {first1 - 1}..{first1 - 1} lost" in errors[0]


def test_a_missing_middle_segment_with_its_ack_log_left_is_counted_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the attack after #22: a middle segment file gone while its ack log
    stayed: its unconfirmed records vanished silently and the orphan log was deleted."""
    spool = Spool.open(tmp_path, max_bytes=32 * SEG, segment_bytes=SEG)
    while len(spool._segments) < 3:
        spool.append("t", b"x" * 200)
    first1, first2 = spool._segments[1].first_seq, spool._segments[2].first_seq
    spool.confirm_many([0, first1])
    total = spool.next_seq
    crash(spool)
    (tmp_path / _seg_name(1)).unlink()
    with caplog.at_level(logging.INFO, logger="trio_producer"):
        spool = Spool.open(tmp_path, max_bytes=32 * SEG, segment_bytes=SEG)
    with spool:
        expected = [s for s in range(total) if s != 0 and not first1 <= s < first2]
        assert [r.seq for r in spool.recovered] == expected
        assert spool.recovery.corrupt_records == first2 - first1 - 1
    errors = _errors(caplog)
    assert len(errors) == 1, errors
    assert f"seqs {first1}..{first2 - 1} missing" in errors[0]
    assert f"{first2 - first1 - 1} unconfirmed record(s) lost" in errors[0]


@pytest.mark.parametrize("evidence", ["handed", "acked"])
def test_a_zeroed_magic_in_the_newest_segment_before_accepted_records_is_corruption(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, evidence: str
) -> None:
    """Found by the attack after #22: a zeroed magic in the middle of the newest segment
    was taken for an unfinished batch and everything after it cut (and zeroed), though
    the hand-off mark or the ack log proved those records accepted."""
    spool = Spool.open(tmp_path, max_bytes=32 * SEG, segment_bytes=4 * SEG)
    for i in range(20):
        spool.append("t", b"msg%02d" % i)
    if evidence == "handed":
        spool.note_handed(19)
    spool.confirm_many([15, 16])
    crash(spool)
    seg = segment_files(tmp_path)[0]
    start, _ = record_offsets(seg)[10]
    data = bytearray(seg.read_bytes())
    data[start : start + 4] = bytes(4)
    seg.write_bytes(bytes(data))
    expected = [s for s in range(20) if s not in (10, 15, 16)]
    for _ in range(2):  # and nothing was cut: the next recovery finds the same
        with caplog.at_level(logging.INFO, logger="trio_producer"):
            spool = Spool.open(tmp_path, max_bytes=32 * SEG, segment_bytes=4 * SEG)
        assert [r.seq for r in spool.recovered] == expected
        assert (spool.recovery.torn_tails, spool.recovery.corrupt_records) == (0, 1)
        crash(spool)
    errors = _errors(caplog)
    assert len(errors) == 2, errors
    assert "seqs 10..10 lost" in errors[0]


@pytest.mark.parametrize("handed", [False, True])
def test_a_truncated_newest_segment_is_damage_never_a_torn_tail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, handed: bool
) -> None:
    """Found by the attack after #22: a preallocated file cannot shrink through a
    crash; cut short in the middle of its records it was taken for a torn tail."""
    spool = Spool.open(tmp_path, max_bytes=32 * SEG, segment_bytes=4 * SEG)
    for i in range(20):
        spool.append("t", b"msg%02d" % i + b"." * 100)
    if handed:
        spool.note_handed(19)
    crash(spool)
    seg = segment_files(tmp_path)[0]
    start, _ = record_offsets(seg)[10]
    os.truncate(seg, start + 20)
    with caplog.at_level(logging.INFO, logger="trio_producer"):
        spool = Spool.open(tmp_path, max_bytes=32 * SEG, segment_bytes=4 * SEG)
    with spool:
        assert [r.seq for r in spool.recovered] == list(range(10))
        lost = 10 if handed else 1
        assert (spool.recovery.torn_tails, spool.recovery.corrupt_records) == (0, lost)
        assert spool.next_seq == 20 if handed else spool.next_seq == 11
    errors = _errors(caplog)
    assert len(errors) == 1, errors
    assert f"seqs 10..{9 + lost} lost" in errors[0]


def test_a_damaged_header_counts_the_lost_records_from_the_neighbouring_seqs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the attack after #22: with the header and first records of a sealed
    segment zeroed, "at least 1" was counted where 3 were lost."""
    segs, per = _three_segment_spool(tmp_path)
    offsets = record_offsets(segs[1])
    cut = offsets[3][0]  # the header and the first 3 records
    data = bytearray(segs[1].read_bytes())
    data[:cut] = bytes(cut)
    segs[1].write_bytes(bytes(data))
    with caplog.at_level(logging.INFO, logger="trio_producer"):
        spool = Spool.open(tmp_path, max_bytes=16 * SEG, segment_bytes=SEG)
    with spool:
        lost = [per, per + 1, per + 2]
        assert [r.seq for r in spool.recovered] == [s for s in range(2 * per + 5) if s not in lost]
        assert (spool.recovery.torn_tails, spool.recovery.corrupt_records) == (0, 3)
    errors = _errors(caplog)
    assert f"seqs {per}..{per + 2} lost" in errors[-1], errors


def test_reopening_when_the_new_segment_cannot_be_renamed_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the attack after #22: only the new segment's creation was guarded at
    open: a full disk refusing its rename made Spool.open raise (nothing recovered) and
    leaked the spare file and its descriptor."""
    spool = Spool.open(tmp_path, max_bytes=16 * SEG, segment_bytes=SEG)
    seqs = [spool.append("t", b"m%d" % i) for i in range(5)]
    spool.close()
    fds = len(os.listdir("/proc/self/fd"))

    def rename(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "rename", rename)
        with caplog.at_level(logging.ERROR, logger="trio_producer"):
            spool = Spool.open(tmp_path, max_bytes=16 * SEG, segment_bytes=SEG)
    assert [r.seq for r in spool.recovered] == seqs
    assert spool.disk_error is not None
    assert "no space left" in spool.disk_error
    assert not list(tmp_path.glob("spare-*"))
    assert "opened without a segment for new messages" in _errors(caplog)[0]
    assert spool.append("t", b"new") == 5  # the disk has room again
    spool.close()
    assert len(os.listdir("/proc/self/fd")) == fds


# ---- the format: encoded and parsed in one module, the same bytes as before it moved there


#: Bytes the spool wrote before its format moved into spool/_format.py (#23): a spool
#: directory an earlier version left must stay readable, byte for byte.
GOLDEN_RECORD_WITH_HEADERS = bytes.fromhex(
    "1e0d5a7c4f0000000700000000000000a0f0190000000000030000000200000002000000060002006576"
    "656e74736b31763105000300000074726163656162630500ffffffff656d7074791e95abf7"
)
GOLDEN_PLAIN_RECORD = bytes.fromhex(
    "1e0d5a7c3300000008000000000000000000000000000000ffffffffffffffff010000000600000065"
    "76656e747376d419b596"
)


def test_the_record_bytes_are_those_of_the_format_before_it_moved() -> None:
    headers = [("trace", b"abc"), ("empty", None)]
    assert (
        _format.encode_record(7, b"events", b"v1", b"k1", headers, 3, 1_700_000)
        == GOLDEN_RECORD_WITH_HEADERS
    )
    assert _format.encode_record(8, b"events", b"v", None, None, -1, 0) == GOLDEN_PLAIN_RECORD
    assert _format.parse_record(GOLDEN_RECORD_WITH_HEADERS, 0, 79) == (
        79,
        7,
        ("events", b"v1", b"k1", headers, 3, 1_700_000),
    )


def test_the_bulk_encoders_make_exactly_the_records_encode_record_makes() -> None:
    values = [b"v", b"", b"x" * 300]
    parts = _format.encode_values(8, b"events", values)
    expected = [
        _format.encode_record(8 + i, b"events", v, None, None, -1, 0) for i, v in enumerate(values)
    ]
    assert _format.pair_up(parts) == expected
    assert b"".join(parts) == b"".join(expected)
    assert expected[0] == GOLDEN_PLAIN_RECORD
    topics: dict[str, bytes] = {}
    records = [("events", v, None, None, -1, 0) for v in values]
    assert _format.encode_records(8, records, topics) == expected
    assert topics == {"events": b"events"}


def test_segment_head_seal_acks_and_mark_bytes_are_those_of_before() -> None:
    head = _format.segment_head(b"u" * 16, 5, 2)
    assert head.hex() == (
        "545053504f4f4c3101000000757575757575757575757575757575750500000000000000"
        "020000000000000074cc22e6"
    )
    assert _format.parse_segment_head(head) == (b"u" * 16, 5, 2)
    seal = _format.seal_bytes(head, 9)
    assert seal.hex() == "090000000000000095383ab4"
    full = bytearray(head + seal)
    assert _format.read_seal(full) == 9
    frame = _format.ack_frame(array("Q", [5, 6]))
    assert frame.hex() == "02000000c49f8d5005000000000000000600000000000000"
    assert _format.parse_ack_frames(frame + b"\x01\x00") == ([array("Q", [5, 6])], [], 24)
    assert _format.handed_bytes(4).hex() == "040000000000000093d168e1"
    assert _format.parse_handed(_format.handed_bytes(4)) == 4

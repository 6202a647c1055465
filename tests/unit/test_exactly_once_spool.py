"""The exactly-once spool's committer (``spool._exactly_once``) without a broker.

A real spool and a real :class:`~trio_producer._client.KafkaClient`, over a fake
confluent producer that runs transactions: it keeps what a transaction produced, serves
the delivery reports at the commit (as librdkafka's commit flushes), fails the messages
it is told to, and refuses the commit (abortable) when one of them failed -- as Kafka
does. These tests pin the commit protocol: order, what is confirmed when, what is handed
back and what is sent again. The broker tests (tests/broker/test_exactly_once_*.py) run
it against Apache Kafka, kills included.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import trio
from confluent_kafka import KafkaError, KafkaException

from trio_producer import ConfigError, DeliveryError, ProducerConfig
from trio_producer._client import KafkaClient, TrackedReport
from trio_producer.spool import _exactly_once as eo
from trio_producer.spool._keeper import open_keeper

if TYPE_CHECKING:
    from pathlib import Path

    from trio_producer._message import KafkaErrorInfo

TID = "tid-1"


class Msg:
    """What a delivery report carries (the parts ``_client`` reads)."""

    def __init__(self, m: dict[str, Any], offset: int) -> None:
        self._m = m
        self._offset = offset

    def topic(self) -> str:
        return str(self._m["topic"])

    def value(self) -> bytes | None:
        return self._m.get("value")  # type: ignore[no-any-return]

    def key(self) -> bytes | None:
        return self._m.get("key")  # type: ignore[no-any-return]

    def partition(self) -> int:
        return int(self._m.get("partition", 0))

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (0, 0)

    def headers(self) -> None:
        return None


class TxnConfluent:
    """A confluent producer that runs transactions in memory."""

    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf
        #: Values to fail with an error name, each time they are produced.
        self.fail: dict[bytes, str] = {}
        #: Values to refuse at the batch call (librdkafka's ``_error`` on the message).
        self.refuse: dict[bytes, str] = {}
        #: Refuse the next progress records at the call with these errors, in turn.
        self.refuse_progress: list[str] = []
        #: Fail every message of a transaction that holds b"big" (a batch refused).
        self.fail_all_with_big = False
        #: What committed transactions wrote, in order (dicts as produced).
        self.log: list[dict[str, Any]] = []
        self.open: list[tuple[dict[str, Any], Any]] | None = None
        self.aborted = 0
        self.calls: list[str] = []

    def begin_transaction(self) -> None:
        assert self.open is None, "begin inside a transaction"
        self.calls.append("begin")
        self.open = []

    def produce_batch(self, topic: str, messages: list[dict[str, Any]], *, on_delivery: Any) -> int:
        assert self.open is not None, "produce outside a transaction"
        queued = 0
        for m in messages:
            name = self.refuse.get(m["value"])
            if name is not None:
                m["_error"] = KafkaError(getattr(KafkaError, name))
                continue
            self.open.append(({"topic": topic, **m}, m.get("callback", on_delivery)))
            queued += 1
        return queued

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int,
        on_delivery: Any,
        *,
        timestamp: int,
        headers: object,
    ) -> None:
        assert self.open is not None, "produce outside a transaction"
        if topic != "t" and self.refuse_progress:
            name = self.refuse_progress.pop(0)
            raise KafkaException(KafkaError(getattr(KafkaError, name)))
        m = {"topic": topic, "value": value, "key": key, "partition": max(partition, 0)}
        self.open.append((m, on_delivery))

    def commit_transaction(self, timeout: float) -> None:
        assert self.open is not None
        self.calls.append("commit")
        failed = False
        batch_refused = self.fail_all_with_big and any(m["value"] == b"big" for m, _ in self.open)
        for i, (m, callback) in enumerate(self.open):
            name = self.fail.get(m["value"])
            if batch_refused and m["topic"] == "t":
                name = "MSG_SIZE_TOO_LARGE"
            if name is not None:
                failed = True
                callback(KafkaError(getattr(KafkaError, name)), Msg(m, -1))
            else:
                callback(None, Msg(m, len(self.log) + i))
        if failed:
            raise KafkaException(
                KafkaError(KafkaError._INCONSISTENT, "a message failed", txn_requires_abort=True)
            )
        self.log += [m for m, _ in self.open]
        self.open = None

    def abort_transaction(self, timeout: float) -> None:
        self.calls.append("abort")
        self.aborted += 1
        self.open = None

    def poll(self, timeout: float) -> int:
        return 0

    def __len__(self) -> int:
        return 0


@attrs.define
class State:
    """The parts of ``ProducerState`` the committer uses."""

    handed_back: list[DeliveryError] = attrs.Factory(list)
    fatal: KafkaErrorInfo | None = None

    def route_failure(self, failure: DeliveryError) -> None:
        self.handed_back.append(failure)

    def on_fatal(self, error: KafkaErrorInfo) -> None:
        self.fatal = error


async def run_exclusive(fn: Any, *args: Any, abandon_on_cancel: bool = False) -> object:
    await trio.lowlevel.checkpoint()
    return fn(*args)


async def open_committer(
    path: Path, position: int = -1, **fields: Any
) -> tuple[eo.Committer, TxnConfluent, State, Any]:
    fakes: list[TxnConfluent] = []

    def factory(conf: dict[str, Any]) -> TxnConfluent:
        fakes.append(TxnConfluent(conf))
        return fakes[-1]

    cfg = ProducerConfig(
        "fake:9092",
        spool_path=str(path),
        exactly_once=True,
        librdkafka={"transactional.id": TID},
        **fields,
    )
    client = KafkaClient(cfg.librdkafka_config(), producer_class=factory)
    keeper = await open_keeper(str(path), 1 << 22, "never", 0.5, None)
    state = State()
    committer = eo.Committer(keeper, client, position, keeper.spool.recovered, "0" * 32, cfg)
    return committer, fakes[0], state, keeper


def spool(keeper: Any, committer: eo.Committer, values: list[bytes], key: bytes = b"k") -> None:
    for value in values:
        item: Any = {"topic": "t", "value": value, "key": key}
        seq = keeper.spool_item(item, None)
        committer.accepted(seq, {"topic": "t", "value": value, "key": key}, None)


def data(log: list[dict[str, Any]]) -> list[bytes]:
    return [m["value"] for m in log if m["topic"] == "t"]


def positions(fake: TxnConfluent) -> list[int]:
    """The committed positions: the progress records' seqs, in order."""
    return [json.loads(m["value"])["seq"] for m in fake.log if m["topic"] != "t"]


# ---- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"librdkafka": {"transactional.id": "x"}}, "exactly_once=True needs spool_path"),
        ({"spool_path": "/tmp/s"}, "exactly_once=True needs librdkafka={'transactional.id'"),
        (
            {
                "spool_path": "/tmp/s",
                "librdkafka": {"transactional.id": "x"},
                "delivery_reports": "errors",
            },
            "delivery_reports='errors' cannot be combined with exactly_once",
        ),
        (
            {
                "spool_path": "/tmp/s",
                "librdkafka": {"transactional.id": "x", "enable.idempotence": False},
            },
            "exactly_once=True needs an idempotent producer",
        ),
        ({"exactly_once": 1}, "exactly_once must be True or False, not 1"),
        ({"exactly_once_topic": "a b"}, "exactly_once_topic:"),
        ({"commit_interval": -1}, "commit_interval"),
    ],
)
def test_what_exactly_once_needs_is_refused_at_the_config(
    fields: dict[str, Any], words: str
) -> None:
    if "exactly_once" not in fields:
        fields = {"exactly_once": True, **fields}
    with pytest.raises(ConfigError) as info:
        ProducerConfig("localhost:9092", **fields)
    assert words in str(info.value)


def test_the_position_codec() -> None:
    origin = "ab" * 16
    value = eo.encode_position(origin, 41)
    assert value == b'{"spool":"' + origin.encode() + b'","seq":41}'
    assert eo.decode_position(value, origin) == (41, None)
    assert eo.decode_position(None, origin) == (-1, None)
    seq, why = eo.decode_position(eo.encode_position("cd" * 16, 7), origin)
    assert seq == -1
    assert why == f"its last progress record names another spool directory ({'cd' * 16})"
    seq, why = eo.decode_position(b"junk", origin)
    assert seq == -1
    assert why is not None
    assert why.startswith("its last progress record cannot be read")
    cfg = ProducerConfig(
        "h:1", spool_path="/s", exactly_once=True, librdkafka={"transactional.id": "t|x"}
    )
    assert eo.progress_key(cfg, origin) == b"t|x|" + origin.encode()


def test_the_origin_is_made_once_and_kept(tmp_path: Path) -> None:
    first, made = eo.read_or_create_origin(tmp_path)
    assert made
    assert len(first) == 32
    assert int(first, 16) >= 0
    assert eo.read_or_create_origin(tmp_path) == (first, False)
    assert not (tmp_path / "ORIGIN.tmp").exists()
    (tmp_path / "ORIGIN").write_text("not an identity\n")
    second, made = eo.read_or_create_origin(tmp_path)
    assert made
    assert second != first
    assert len(second) == 32


def test_the_progress_clients_take_only_how_to_reach_the_cluster() -> None:
    props = {
        "bootstrap.servers": "b:1",
        "security.protocol": "SASL_SSL",
        "sasl.username": "u",
        "ssl.ca.location": "/ca",
        "transactional.id": "t",
        "acks": "all",
        "linger.ms": 5,
        "error_cb": print,
    }
    assert eo.client_conf(props) == {
        "bootstrap.servers": "b:1",
        "security.protocol": "SASL_SSL",
        "sasl.username": "u",
        "ssl.ca.location": "/ca",
    }


# ---- the commit protocol ----------------------------------------------------------------


async def test_each_transaction_commits_its_messages_with_the_position(tmp_path: Path) -> None:
    committer, fake, state, keeper = await open_committer(tmp_path, commit_interval=0)
    steps: list[str] = []
    eo.STEP_HOOK = steps.append
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(committer.run, run_exclusive, state)
            spool(keeper, committer, [b"a", b"b", b"c"])
            await committer.wait_done(2)
            spool(keeper, committer, [b"d"])
            await committer.wait_done(3)
            nursery.cancel_scope.cancel()
    finally:
        eo.STEP_HOOK = None
    assert data(fake.log) == [b"a", b"b", b"c", b"d"]
    # The position is the last record of each transaction, after its messages.
    assert fake.log[-1]["topic"] == "trio-producer-progress"
    assert fake.log[-1]["key"] == f"{TID}|{'0' * 32}".encode()
    assert fake.log[-1]["partition"] == 0
    assert positions(fake)[-1] == 3
    assert positions(fake) == sorted(positions(fake))
    assert steps[:4] == ["begin", "produced", "committed", "confirmed"]
    assert keeper.spool.pending == 0  # confirmed: out of the spool
    assert committer.committed == 4
    assert state.handed_back == []
    assert state.fatal is None
    await keeper.aclose()


async def test_a_message_that_fails_on_its_own_is_handed_back_and_the_rest_sent_again(
    tmp_path: Path,
) -> None:
    committer, fake, state, keeper = await open_committer(tmp_path, commit_interval=0)
    fake.fail[b"big"] = "MSG_SIZE_TOO_LARGE"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(committer.run, run_exclusive, state)
        spool(keeper, committer, [b"a", b"big", b"c"])
        await committer.wait_done(2)
        nursery.cancel_scope.cancel()
    # 1. All three share one callback: the failure says no message; abort, and
    # 2. again, each with its own callback: "big" failed (a suspect); abort, and
    # 3. "a" alone, 4. "big" alone: it fails on its own (handed back), 5. "c".
    assert fake.calls == [
        *("begin", "commit", "abort"),
        *("begin", "commit", "abort"),
        *("begin", "commit"),
        *("begin", "commit", "abort"),
        *("begin", "commit"),
    ]
    assert data(fake.log) == [b"a", b"c"]  # in order, once each
    assert [f.message.value for f in state.handed_back] == [b"big"]
    assert state.handed_back[0].error.name == "MSG_SIZE_TOO_LARGE"
    assert keeper.spool.pending == 0  # the handed-back one is confirmed too: never resent
    assert committer.aborts == 3
    assert committer.committed == 2
    assert committer.handed_back == 1
    await keeper.aclose()


async def test_a_batch_refused_whole_hands_back_only_the_message_at_fault(
    tmp_path: Path,
) -> None:
    # A broker that refuses a batch fails every message in it with the same error.
    committer, fake, state, keeper = await open_committer(tmp_path, commit_interval=0)
    fake.fail_all_with_big = True
    async with trio.open_nursery() as nursery:
        nursery.start_soon(committer.run, run_exclusive, state)
        spool(keeper, committer, [b"a", b"b", b"big", b"c", b"d"])
        await committer.wait_done(4)
        nursery.cancel_scope.cancel()
    assert data(fake.log) == [b"a", b"b", b"c", b"d"]
    assert [f.message.value for f in state.handed_back] == [b"big"]
    assert keeper.spool.pending == 0
    await keeper.aclose()


async def test_a_message_librdkafka_refuses_at_once_is_handed_back_not_counted(
    tmp_path: Path,
) -> None:
    # Refused at the call, it never is in the transaction, which commits without it.
    committer, fake, state, keeper = await open_committer(tmp_path, commit_interval=0)
    fake.refuse[b"huge"] = "MSG_SIZE_TOO_LARGE"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(committer.run, run_exclusive, state)
        spool(keeper, committer, [b"a", b"huge", b"c"])
        await committer.wait_done(2)
        nursery.cancel_scope.cancel()
    assert data(fake.log) == [b"a", b"c"]
    assert [f.message.value for f in state.handed_back] == [b"huge"]
    assert state.handed_back[0].error.name == "MSG_SIZE_TOO_LARGE"
    assert committer.committed == 2
    assert committer.handed_back == 1
    assert keeper.spool.pending == 0
    await keeper.aclose()


async def test_messages_failed_by_the_abort_itself_are_sent_again(tmp_path: Path) -> None:
    committer, fake, state, keeper = await open_committer(tmp_path, commit_interval=0)
    fake.fail[b"b"] = "_PURGE_QUEUE"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(committer.run, run_exclusive, state)
        spool(keeper, committer, [b"a", b"b"])
        await trio.sleep(0.35)  # a few aborted tries (0.1 s, 0.2 s backoff)
        del fake.fail[b"b"]
        await committer.wait_done(1)
        nursery.cancel_scope.cancel()
    assert data(fake.log) == [b"a", b"b"]
    assert state.handed_back == []
    assert fake.aborted >= 2
    assert keeper.spool.pending == 0
    await keeper.aclose()


async def test_aborts_without_end_fail_the_producer_and_keep_the_messages(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    committer, fake, state, keeper = await open_committer(tmp_path, commit_interval=0)
    fake.fail[b"a"] = "_PURGE_INFLIGHT"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(committer.run, run_exclusive, state)
        spool(keeper, committer, [b"a"])
        with pytest.raises(trio_producer_closed()):
            await committer.wait_done(0)
    assert fake.aborted == eo.MAX_ABORTS
    assert state.fatal is not None
    assert state.fatal.name == "_EXACTLY_ONCE"
    assert f"{eo.MAX_ABORTS} transactions in a row were aborted" in state.fatal.reason
    assert committer.pending() == 1
    assert keeper.spool.pending == 1
    await keeper.aclose()


def trio_producer_closed() -> type[Exception]:
    from trio_producer import ProducerClosedError

    return ProducerClosedError


async def test_a_fatal_commit_error_fails_the_producer_at_once(tmp_path: Path) -> None:
    committer, fake, state, keeper = await open_committer(tmp_path, commit_interval=0)

    def fenced(timeout: float) -> None:
        raise KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True))

    fake.commit_transaction = fenced  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(committer.run, run_exclusive, state)
        spool(keeper, committer, [b"a", b"b"])
        with pytest.raises(trio_producer_closed()):
            await committer.wait_done(1)
    assert state.fatal is not None
    assert state.fatal.name == "_FENCED"
    assert committer.pending() == 2
    assert keeper.spool.pending == 2
    assert fake.calls == ["begin"]  # the commit tried once, not retried
    await keeper.aclose()


async def test_recovered_records_above_the_position_go_first_in_order(tmp_path: Path) -> None:
    # An earlier run spooled 5 records and committed through seq 2, then died unconfirmed.
    committer, _fake, state, keeper = await open_committer(tmp_path / "s", commit_interval=0)
    spool(keeper, committer, [b"r0", b"r1", b"r2", b"r3", b"r4"])
    await keeper.aclose()
    keeper = await open_keeper(str(tmp_path / "s"), 1 << 22, "never", 0.5, None)
    recovered = keeper.spool.recovered
    assert [r.seq for r in recovered] == [0, 1, 2, 3, 4]
    cfg = ProducerConfig(
        "fake:9092",
        spool_path=str(tmp_path / "s"),
        exactly_once=True,
        commit_interval=0,
        librdkafka={"transactional.id": TID},
    )
    fake2 = TxnConfluent({})
    client = KafkaClient(cfg.librdkafka_config(), producer_class=lambda conf: fake2)
    again = [r for r in recovered if r.seq > 2]
    committer = eo.Committer(keeper, client, 2, again, "0" * 32, cfg)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(committer.run, run_exclusive, state)
        spool(keeper, committer, [b"n5"])
        await committer.wait_done(5)
        nursery.cancel_scope.cancel()
    assert data(fake2.log) == [b"r3", b"r4", b"n5"]
    assert positions(fake2) == [5]
    await keeper.aclose()


def test_step_names_are_the_documented_ones() -> None:
    doc = eo.__doc__ or ""
    for step in ("fenced", "recovered", "begin", "produced", "committed", "confirmed"):
        assert f'"{step}"' in doc
    assert os.path.basename(eo.__file__) == "_exactly_once.py"


async def test_a_progress_record_refused_for_the_transactions_state_is_sent_again(
    tmp_path: Path,
) -> None:
    # After a message failed, librdkafka refuses what comes next in the transaction
    # (_STATE): the transaction is aborted and sent again, not the producer failed.
    committer, fake, state, keeper = await open_committer(tmp_path, commit_interval=0)
    fake.refuse_progress = ["_STATE"]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(committer.run, run_exclusive, state)
        spool(keeper, committer, [b"a", b"b"])
        await committer.wait_done(1)
        nursery.cancel_scope.cancel()
    assert state.fatal is None
    assert fake.calls == ["begin", "abort", "begin", "commit"]
    assert data(fake.log) == [b"a", b"b"]
    assert positions(fake) == [1]
    await keeper.aclose()


async def test_a_progress_topic_that_refuses_the_record_fails_the_producer(
    tmp_path: Path,
) -> None:
    committer, fake, state, keeper = await open_committer(tmp_path, commit_interval=0)
    fake.refuse_progress = ["TOPIC_AUTHORIZATION_FAILED"]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(committer.run, run_exclusive, state)
        spool(keeper, committer, [b"a"])
        with pytest.raises(trio_producer_closed()):
            await committer.wait_done(0)
    assert state.fatal is not None
    assert state.fatal.name == "TOPIC_AUTHORIZATION_FAILED"
    assert fake.calls == ["begin", "abort"]  # never committed without its position
    assert fake.log == []
    assert keeper.spool.pending == 1
    await keeper.aclose()


async def test_past_the_exits_deadline_the_transaction_is_left_open_and_waiters_released(
    tmp_path: Path,
) -> None:
    # A cluster that does not answer: the commit only times out. At the exit's deadline
    # the committer gives up (the transaction stays open for the next producer to fence,
    # the messages stay in the spool), the client will close without waiting on it, and
    # a send_and_wait caller gets its message back instead of waiting forever.
    committer, fake, state, keeper = await open_committer(tmp_path, commit_interval=0)

    def no_answer(timeout: float) -> None:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "timed out", retriable=True))

    fake.commit_transaction = no_answer  # type: ignore[method-assign]
    event = trio.Event()
    tracked = TrackedReport(None, event)
    item: Any = {"topic": "t", "value": b"waited", "key": b"k"}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(committer.run, run_exclusive, state)
        seq = keeper.spool_item(item, event)
        committer.accepted(seq, {"topic": "t", "value": b"waited", "key": b"k"}, tracked)
        await trio.sleep(0.25)  # a few tries, not given up yet
        assert not event.is_set()
        committer.hurry(trio.current_time())
        await event.wait()
    assert tracked.failure is not None
    assert tracked.failure.error.name == "_KEPT_IN_SPOOL"
    assert tracked.failure.message.value == b"waited"
    assert committer._client._transaction_left_open
    assert state.fatal is None  # not a failure of the producer: the exit's deadline
    assert keeper.spool.pending == 1  # kept for the next producer
    await keeper.aclose()

"""Exactly once: a consume-transform-produce loop with ``Producer.send_offsets`` (issue #15).

The main test runs the loop of docs/exactly_once.rst on Apache Kafka: a consumer group
reads an input topic, each polled batch is transformed and sent in one transaction
together with the consumer's next offsets, and the run is cancelled in the middle of a
transaction twice and restarted with a new consumer (same group) and a new producer (same
``transactional.id``). The output read with read_committed must hold every input record
exactly once, in order per partition, while a read_uncommitted read shows the records of
the aborted transactions really were written.

Tansu does not implement read_committed (nor are its group joins fast), so the tests that
need the broker's transaction machinery run on Apache Kafka only::

    python tests/harness/apache_kafka.py -- \
        python -m pytest -m broker tests/broker/test_exactly_once.py
"""

from __future__ import annotations

import logging
import os
import random
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import attrs
import confluent_kafka
import pytest
import trio
import trio.lowlevel
from confluent_kafka import TopicPartition

from trio_producer import TransactionError, TrioProducerError, open_producer
from trio_producer._client import check_offsets
from trio_producer.testing import consume_all, create_topics

if TYPE_CHECKING:
    from collections.abc import Sequence

    from trio_producer import Producer
    from trio_producer.testing import ConsumedRecord

pytestmark = [pytest.mark.broker, pytest.mark.transactions]

#: Set by tests/harness/apache_kafka.py (as .ci/run uses it) when the suite runs on Apache Kafka.
BROKER_KIND = os.environ.get("TRIO_PRODUCER_TEST_BROKER_KIND", "tansu")

apache_only = pytest.mark.skipif(
    BROKER_KIND != "apache-kafka",
    reason="needs Apache Kafka (read_committed, transactional offset commits, fast group "
    "joins): run under `python tests/harness/apache_kafka.py -- python -m pytest -m broker ...`",
)

#: librdkafka's consumer logs go to logging (not stderr), like trio_producer's own.
consumer_log = logging.getLogger("tests.exactly_once.consumer")

PARTITIONS = 3
MESSAGES = 10_000
BATCH = 500
#: The seed of the cancellation plan (which transactions, after how many sends).
SEED = 15


def unique(name: str) -> str:
    return f"{name}-{os.getpid()}-{time.monotonic_ns()}"


def make_consumer(bootstrap: str, group: str) -> confluent_kafka.Consumer:
    return confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # Small fetches (about one 100-record batch of the input per partition), so
            # that each polled batch mixes the partitions.
            "max.partition.fetch.bytes": 4096,
            "logger": consumer_log,
        }
    )


async def close_consumer(consumer: confluent_kafka.Consumer) -> None:
    # Leaves the group, so that the next member's join does not wait for a timeout.
    with trio.CancelScope(shield=True):
        await trio.to_thread.run_sync(consumer.close)


def group_metadata(bootstrap: str, group: str) -> bytes:
    """The group metadata of a consumer that never joins (generation -1: the broker
    commits for the group without checking a member, as for assign()-based consumers)."""
    consumer = make_consumer(bootstrap, group)
    try:
        metadata: bytes = consumer.consumer_group_metadata()
        return metadata
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    """The group's committed offsets for ``topic`` (-1001 where nothing is committed)."""
    consumer = make_consumer(bootstrap, group)
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], 30)
        return [tp.offset for tp in sorted(tps, key=lambda tp: tp.partition)]
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str, partitions: int) -> list[int]:
    """The high watermark of each partition of ``topic``."""
    consumer = make_consumer(bootstrap, unique("eos-watermarks"))
    try:
        return [
            consumer.get_watermark_offsets(TopicPartition(topic, p), 30)[1]
            for p in range(partitions)
        ]
    finally:
        consumer.close()


def next_offsets(batch: Sequence[Any]) -> list[TopicPartition]:
    """Per partition in ``batch``: the offset to resume from (the last one + 1)."""
    last: dict[tuple[str, int], int] = {}
    for msg in batch:
        last[msg.topic(), msg.partition()] = msg.offset()
    return [TopicPartition(t, p, offset + 1) for (t, p), offset in last.items()]


async def read(bootstrap: str, topic: str, **kwargs: Any) -> list[ConsumedRecord]:
    return await trio.to_thread.run_sync(
        partial(consume_all, bootstrap, topic, idle_timeout=1.0, **kwargs)
    )


def input_key(p: int, i: int) -> bytes:
    return b"%d:%d" % (p, i)


def transform(value: bytes) -> bytes:
    return b"out:" + value


def input_value(p: int, i: int) -> bytes:
    return b"in-%d-%05d" % (p, i)


# ---- the consume-transform-produce loop -------------------------------------------------


@attrs.define
class Run:
    """What the pipeline did, across its restarts."""

    #: The next offset per input partition, as of the last committed transaction.
    positions: dict[int, int]
    transactions: int = 0
    committed: int = 0
    restarts: int = 0
    #: Records sent in transactions that were then cancelled (aborted).
    aborted_sends: int = 0
    #: What each cancellation did: (transaction number, records sent, offsets sent).
    cancellations: list[tuple[int, int, bool]] = attrs.Factory(list)
    #: ``positions`` when each cancellation happened (where the restart must resume).
    resume_points: list[dict[int, int]] = attrs.Factory(list)


def cancellation_plan(rng: random.Random) -> dict[int, str]:
    """Two cancellations, each after at least one committed transaction (so a restart
    that ignored the committed offsets would reprocess them): the first in the middle of a
    batch's sends, the second after send_offsets, just before the commit."""
    first = rng.randrange(3, 6)
    second = first + rng.randrange(3, 6)
    return {first: "sends", second: "offsets"}


async def transform_batch(
    producer: Producer,
    consumer: confluent_kafka.Consumer,
    batch: Sequence[Any],
    out_topic: str,
    cancel_after: int | None,
    scope: trio.CancelScope,
) -> int:
    """One transaction: transform and send ``batch``, then add the consumer's offsets.
    With ``cancel_after``, ``scope`` is cancelled after that many sends (``len(batch)``:
    after send_offsets). Returns how many records were sent."""
    sent = 0
    async with producer.transaction():
        for msg in batch:
            if sent == cancel_after:
                scope.cancel(reason="test: cancelled in the middle of the transaction")
            await producer.send(
                out_topic, transform(msg.value()), key=msg.key(), partition=msg.partition()
            )
            sent += 1
        await producer.send_offsets(next_offsets(batch), consumer.consumer_group_metadata())
        if sent == cancel_after:
            scope.cancel(reason="test: cancelled after send_offsets, before the commit")
    return sent


async def run_pipeline(
    bootstrap: str,
    *,
    in_topic: str,
    out_topic: str,
    group: str,
    transactional_id: str,
    end: dict[int, int],
    plan: dict[int, str],
    rng: random.Random,
) -> Run:
    run = Run(positions=dict.fromkeys(end, 0))
    while run.positions != end:
        # A (re)start: a new member of the same group, a new producer with the same
        # transactional.id (its init_transactions fences any earlier one).
        consumer = make_consumer(bootstrap, group)
        try:
            consumer.subscribe([in_topic])
            async with open_producer(
                bootstrap_servers=bootstrap,
                librdkafka={"transactional.id": transactional_id},
            ) as producer:
                while run.positions != end:
                    batch = await trio.to_thread.run_sync(consumer.consume, BATCH, 0.5)
                    if not batch:
                        continue
                    for msg in batch:
                        if msg.error() is not None:
                            raise confluent_kafka.KafkaException(msg.error())
                    run.transactions += 1
                    where = plan.get(run.transactions)
                    cancel_after = None
                    if where == "sends" and len(batch) < 2:
                        del plan[run.transactions]  # no "middle": cancel the next one
                        plan[run.transactions + 1] = where
                        where = None
                    if where == "sends":
                        cancel_after = rng.randrange(1, len(batch))
                    elif where == "offsets":
                        cancel_after = len(batch)
                    with trio.CancelScope() as scope:
                        sent = await transform_batch(
                            producer, consumer, batch, out_topic, cancel_after, scope
                        )
                    if scope.cancelled_caught:
                        assert cancel_after is not None
                        run.aborted_sends += cancel_after
                        run.cancellations.append(
                            (run.transactions, cancel_after, where == "offsets")
                        )
                        run.resume_points.append(dict(run.positions))
                        break  # restart
                    assert cancel_after is None, "the cancellation did not land"
                    run.committed += sent
                    for tp in next_offsets(batch):
                        assert tp.offset > run.positions[tp.partition], "a replay after commit"
                        run.positions[tp.partition] = tp.offset
        finally:
            await close_consumer(consumer)
        if run.positions != end:
            run.restarts += 1
    return run


@apache_only
@pytest.mark.timeout(60)
async def test_consume_transform_produce_is_exactly_once_across_cancellations(
    kafka_bootstrap: str,
) -> None:
    start = time.monotonic()
    in_topic, out_topic = unique("eos-in"), unique("eos-out")
    group, transactional_id = unique("eos-group"), unique("eos-txn")
    await trio.to_thread.run_sync(
        partial(create_topics, kafka_bootstrap, [in_topic, out_topic], partitions=PARTITIONS)
    )

    # The input: message j is record i = j // 3 of partition p = j % 3; confirmed.
    async with open_producer(
        bootstrap_servers=kafka_bootstrap, librdkafka={"batch.num.messages": 100}
    ) as producer:
        for j in range(MESSAGES):
            p, i = j % PARTITIONS, j // PARTITIONS
            await producer.send(in_topic, input_value(p, i), key=input_key(p, i), partition=p)
    assert producer.statistics().delivered == MESSAGES
    end = {p: len(range(p, MESSAGES, PARTITIONS)) for p in range(PARTITIONS)}
    input_end = await trio.to_thread.run_sync(end_offsets, kafka_bootstrap, in_topic, PARTITIONS)
    assert input_end == [end[p] for p in range(PARTITIONS)]
    produced = time.monotonic()

    rng = random.Random(SEED)
    plan = cancellation_plan(rng)
    run = await run_pipeline(
        kafka_bootstrap,
        in_topic=in_topic,
        out_topic=out_topic,
        group=group,
        transactional_id=transactional_id,
        end=end,
        plan=plan,
        rng=rng,
    )
    processed = time.monotonic()
    context = f"seed {SEED}, plan {plan}, {run}"
    assert run.restarts == 2, context
    assert [where for _, _, where in run.cancellations] == [False, True], context
    # Each restart had committed offsets to resume from on every partition (a restart
    # from the beginning of any partition would duplicate records).
    assert all(0 not in point.values() for point in run.resume_points), context
    assert run.committed == MESSAGES, context  # the in-memory view; the broker's follows

    # The committed output: every input record exactly once, in order per partition.
    # (No `expected=`: read until the topic is idle, so that duplicates cannot hide.)
    committed = await read(kafka_bootstrap, out_topic, isolation_level="read_committed")
    for p in range(PARTITIONS):
        got = [(r.key, r.value) for r in committed if r.partition == p]
        want = [(input_key(p, i), transform(input_value(p, i))) for i in range(end[p])]
        if got != want:
            seen = [k for k, _ in got]
            duplicates = len(seen) - len(set(seen))
            pytest.fail(
                f"partition {p}: {len(got)} committed records, {duplicates} duplicates, "
                f"expected {end[p]} in order ({context})"
            )
    assert len(committed) == MESSAGES

    # The aborted transactions' records were written (so the cancellations landed in the
    # middle of transactions) and read_committed hid them.
    everything = await read(kafka_bootstrap, out_topic)
    assert run.aborted_sends > 0
    assert len(everything) == MESSAGES + run.aborted_sends, context
    assert {(r.key, r.value) for r in everything} == {(r.key, r.value) for r in committed}

    # The group's offsets are the input's end: a restart now would process nothing.
    offsets = await trio.to_thread.run_sync(
        committed_offsets, kafka_bootstrap, group, in_topic, PARTITIONS
    )
    assert offsets == input_end
    print(
        f"exactly once: {MESSAGES} records, {run.transactions} transactions "
        f"({len(run.cancellations)} cancelled: {run.cancellations}), {run.restarts} restarts, "
        f"{run.aborted_sends} aborted records; produce {produced - start:.1f} s, "
        f"pipeline {processed - produced:.1f} s, total {time.monotonic() - start:.1f} s"
    )


# ---- small tests ------------------------------------------------------------------------


async def test_send_offsets_outside_a_transaction_raises(kafka_bootstrap: str) -> None:
    metadata = await trio.to_thread.run_sync(group_metadata, kafka_bootstrap, unique("g"))
    offsets = [TopicPartition("some-topic", 0, 1)]
    message = (
        r"^send_offsets\(\) must be called inside producer\.transaction\(\): the offsets "
        r"are committed with the transaction$"
    )
    async with open_producer(
        bootstrap_servers=kafka_bootstrap,
        librdkafka={"transactional.id": unique("eos-outside")},
    ) as producer:
        with pytest.raises(TrioProducerError, match=message):
            await producer.send_offsets(offsets, metadata)
        async with producer.transaction():
            pass
        with pytest.raises(TrioProducerError, match=message):  # nor after one ended
            await producer.send_offsets(offsets, metadata)
    async with open_producer(bootstrap_servers=kafka_bootstrap) as plain:
        with pytest.raises(TrioProducerError, match=message):
            await plain.send_offsets(offsets, metadata)


BAD_ARGUMENTS = [
    pytest.param(
        TopicPartition("t", 0, 1),
        None,
        TypeError,
        r"^offsets must be a list of confluent_kafka\.TopicPartition \(e\.g\. "
        r"consumer\.position\(consumer\.assignment\(\)\)\), not TopicPartition$",
        id="one-TopicPartition",
    ),
    pytest.param(
        {TopicPartition("t", 0, 1)},
        None,
        TypeError,
        r"^offsets must be a list of confluent_kafka\.TopicPartition .*, not set$",
        id="a-set",
    ),
    pytest.param(
        [("t", 0, 1)],
        None,
        TypeError,
        r"^offsets must hold confluent_kafka\.TopicPartition, not tuple \('t', 0, 1\)$",
        id="tuples",
    ),
    pytest.param(
        [TopicPartition("t", 0, 1), TopicPartition("", 0, 1)],
        None,
        ValueError,
        r"^offsets\[1\]: topic must be a non-empty str, not ''$",
        id="empty-topic",
    ),
    pytest.param(
        [TopicPartition("a topic", 0, 1)],
        None,
        ValueError,
        r"^offsets\[0\]: topic 'a topic' is not a valid Kafka topic name: use 1 to 249 of "
        r"the characters a-z A-Z 0-9 \. _ - \(and not '\.' or '\.\.'\)$",
        id="bad-topic",
    ),
    pytest.param(
        [TopicPartition("t", 0, 1)],
        "my-group",
        TypeError,
        r"^group_metadata must be what consumer\.consumer_group_metadata\(\) returns "
        r"\(an opaque bytes object\), not str 'my-group'$",
        id="group-id-for-metadata",
    ),
    pytest.param(
        [TopicPartition("t", 0, 1)],
        b"",
        TypeError,
        r"^group_metadata must be .*, not bytes b''$",
        id="empty-metadata",
    ),
]


@pytest.mark.parametrize(("offsets", "metadata", "error", "message"), BAD_ARGUMENTS)
async def test_send_offsets_bad_arguments(
    kafka_bootstrap: str,
    kafka_topic: str,
    offsets: object,
    metadata: object,
    error: type[Exception],
    message: str,
) -> None:
    """Bad arguments raise at the call, naming the problem; nothing is sent, and the
    transaction goes on (here it commits)."""
    if metadata is None:
        metadata = await trio.to_thread.run_sync(group_metadata, kafka_bootstrap, unique("g"))
    async with open_producer(
        bootstrap_servers=kafka_bootstrap, librdkafka={"transactional.id": unique("eos-args")}
    ) as producer:
        async with producer.transaction():
            with pytest.raises(error, match=message):
                await producer.send_offsets(offsets, metadata)  # type: ignore[arg-type]
            await producer.send(kafka_topic, b"still in the transaction")
    assert producer.statistics().delivered == 1


@apache_only
@pytest.mark.timeout(60)
async def test_offsets_of_an_aborted_transaction_are_not_committed(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    group = unique("eos-abort")
    metadata = await trio.to_thread.run_sync(group_metadata, kafka_bootstrap, group)
    nothing = confluent_kafka.OFFSET_INVALID
    async with open_producer(
        bootstrap_servers=kafka_bootstrap,
        transaction_timeout=3.0,
        librdkafka={"transactional.id": unique("eos-abort")},
    ) as producer:
        with pytest.raises(ValueError, match=r"^no\n") as raised:
            async with producer.transaction():
                await producer.send(kafka_topic, b"aborted")
                await producer.send_offsets([TopicPartition(kafka_topic, 0, 7)], metadata)
                raise ValueError("no")
        assert raised.value.__notes__ == ["trio_producer: the transaction was aborted"]
        offsets = await trio.to_thread.run_sync(
            committed_offsets, kafka_bootstrap, group, kafka_topic, 1
        )
        assert offsets == [nothing]

        # A refused send_offsets (the broker does not know the topic) is abortable:
        # the transaction is aborted, the producer goes on. (librdkafka retries until
        # the call's timeout: it takes the whole transaction_timeout.)
        start = time.monotonic()
        with pytest.raises(TransactionError, match="UNKNOWN_TOPIC_OR_PART") as refused:
            async with producer.transaction():
                await producer.send(kafka_topic, b"aborted too")
                await producer.send_offsets([TopicPartition(unique("nowhere"), 0, 3)], metadata)
        assert time.monotonic() - start < 3.0 + 2.0
        assert refused.value.abortable
        assert refused.value.__notes__ == ["trio_producer: the transaction was aborted"]

        # The same call in a transaction that commits does commit them.
        async with producer.transaction():
            await producer.send(kafka_topic, b"committed")
            await producer.send_offsets([TopicPartition(kafka_topic, 0, 7)], metadata)
    offsets = await trio.to_thread.run_sync(
        committed_offsets, kafka_bootstrap, group, kafka_topic, 1
    )
    assert offsets == [7]
    values = [r.value for r in await read(kafka_bootstrap, kafka_topic)]
    assert values == [b"aborted", b"aborted too", b"committed"]
    committed = await read(kafka_bootstrap, kafka_topic, isolation_level="read_committed")
    assert [r.value for r in committed] == [b"committed"]


async def join_group(bootstrap: str, group: str, topic: str) -> confluent_kafka.Consumer:
    """A consumer subscribed to ``topic`` that has joined ``group`` (got its partitions)."""
    consumer = make_consumer(bootstrap, group)
    consumer.subscribe([topic])
    with trio.fail_after(20):
        while not consumer.assignment():
            await trio.to_thread.run_sync(consumer.poll, 0.2)
    return consumer


@apache_only
@pytest.mark.timeout(60)
async def test_offsets_of_a_zombie_member_are_refused(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    """The group metadata fences a consumer that is no longer a member (KIP-447): its
    offsets are refused (abortable) and the producer goes on with the live member's."""
    group = unique("eos-zombie")
    zombie = await join_group(kafka_bootstrap, group, kafka_topic)
    stale = zombie.consumer_group_metadata()
    await close_consumer(zombie)  # it left; the group moves on to a new generation
    member = await join_group(kafka_bootstrap, group, kafka_topic)
    try:
        async with open_producer(
            bootstrap_servers=kafka_bootstrap,
            transaction_timeout=5.0,
            librdkafka={"transactional.id": unique("eos-zombie")},
        ) as producer:
            with pytest.raises(TransactionError, match="UNKNOWN_MEMBER_ID") as refused:
                async with producer.transaction():
                    # (No send before it here: see the next test.)
                    await producer.send_offsets([TopicPartition(kafka_topic, 0, 1)], stale)
            assert refused.value.abortable
            assert refused.value.__notes__ == ["trio_producer: the transaction was aborted"]
            async with producer.transaction():
                await producer.send(kafka_topic, b"from the member")
                await producer.send_offsets(
                    [TopicPartition(kafka_topic, 0, 1)], member.consumer_group_metadata()
                )
    finally:
        await close_consumer(member)
    offsets = await trio.to_thread.run_sync(
        committed_offsets, kafka_bootstrap, group, kafka_topic, 1
    )
    assert offsets == [1]
    committed = await read(kafka_bootstrap, kafka_topic, isolation_level="read_committed")
    assert [r.value for r in committed] == [b"from the member"]


@apache_only
@pytest.mark.timeout(60)
async def test_producer_goes_on_after_send_offsets_is_refused(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    """send_offsets raises an abortable TransactionError (a zombie member); transaction()
    aborts and the producer goes on. A message of the transaction still in the batch
    (linger) cannot be flushed first: librdkafka refuses it (_STATE) or purges it. Without
    on_delivery_error, that failure is handed back with the transaction's exception
    (``transaction_undelivered``, and a note) -- exactly once -- instead of failing the
    whole producer. (Before the fix: the next transaction was cancelled and open_producer
    raised that DeliveryError.)
    """
    group = unique("eos-refused")
    zombie = await join_group(kafka_bootstrap, group, kafka_topic)
    stale = zombie.consumer_group_metadata()
    await close_consumer(zombie)
    async with open_producer(
        bootstrap_servers=kafka_bootstrap,
        linger=3600,  # the message is still in the batch when send_offsets fails
        transaction_timeout=5.0,
        librdkafka={"transactional.id": unique("eos-refused")},
    ) as producer:
        with pytest.raises(TransactionError, match="UNKNOWN_MEMBER_ID") as refused:
            async with producer.transaction():
                await producer.send(kafka_topic, b"in the refused transaction")
                await producer.send_offsets([TopicPartition(kafka_topic, 0, 1)], stale)
        assert refused.value.abortable
        handed_back = refused.value.transaction_undelivered  # type: ignore[attr-defined]
        assert [f.message.value for f in handed_back] == [b"in the refused transaction"]
        assert refused.value.__notes__ == [
            "trio_producer: the transaction was aborted; 1 of its messages were not written "
            "before the abort and are handed back in this exception's `transaction_undelivered`"
        ]
        async with producer.transaction():
            await producer.send(kafka_topic, b"next")
        stats = producer.statistics()
    assert (stats.delivered, stats.failed) == (1, 1)
    assert producer.undelivered == ()
    committed = await read(kafka_bootstrap, kafka_topic, isolation_level="read_committed")
    assert [r.value for r in committed] == [b"next"]


def test_logical_offsets_are_skipped_like_librdkafka_does() -> None:
    """consumer.position(consumer.assignment()) holds OFFSET_INVALID (-1001) for a
    partition nothing was consumed from yet: passing it as it is must work."""
    offsets = [
        TopicPartition("t", 0, 5),
        TopicPartition("t", 1, confluent_kafka.OFFSET_INVALID),
        TopicPartition("t", 2, confluent_kafka.OFFSET_BEGINNING),
        TopicPartition("t", 3, 0),
    ]
    kept = check_offsets(offsets, b"metadata")
    assert [(tp.partition, tp.offset) for tp in kept] == [(0, 5), (3, 0)]


async def test_send_offsets_from_other_tasks_while_the_transaction_commits(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    """librdkafka runs one transactional call at a time: a send_offsets from another task
    racing the commit made the commit fail with _CONFLICT and wedged the producer (every
    later begin_transaction: _STATE InTransaction). Two concurrent send_offsets failed
    with _PREV_IN_PROGRESS. Now they are ordered: concurrent ones both succeed, and one
    that comes once the commit has begun is refused at the call."""
    metadata = await trio.to_thread.run_sync(group_metadata, kafka_bootstrap, unique("race"))
    late: list[str] = []
    async with open_producer(
        bootstrap_servers=kafka_bootstrap,
        transaction_timeout=10.0,
        librdkafka={"transactional.id": unique("eos-race")},
    ) as producer:
        async with producer.transaction():
            await producer.send(kafka_topic, b"m")
            async with trio.open_nursery() as nursery:
                for offset in (1, 2):
                    nursery.start_soon(
                        producer.send_offsets, [TopicPartition(kafka_topic, 0, offset)], metadata
                    )

        async def keep_sending_offsets(started: trio.Event) -> None:
            await started.wait()
            for _ in range(50):
                try:
                    await producer.send_offsets([TopicPartition(kafka_topic, 0, 1)], metadata)
                except TrioProducerError as exc:
                    late.append(str(exc))
                    return
                late.append("ok")
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            started = trio.Event()
            nursery.start_soon(keep_sending_offsets, started)
            async with producer.transaction():
                await producer.send(kafka_topic, b"n")
                started.set()
                await trio.lowlevel.checkpoint()
        async with producer.transaction():
            await producer.send(kafka_topic, b"after")
        stats = producer.statistics()
    assert (stats.delivered, stats.failed) == (3, 0)
    assert late[-1] in (
        "send_offsets() came too late: the transaction is already committing or aborting "
        "(call it inside the transaction block, before it ends)",
        "send_offsets() must be called inside producer.transaction(): the offsets are "
        "committed with the transaction",
    )
    assert set(late[:-1]) <= {"ok"}

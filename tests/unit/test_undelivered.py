"""undelivered_messages(exc): every undelivered message, whatever ended the block.

Each ending of ``async with open_producer(...)`` raises something else (see
tests/unit/test_exit.py); one function collects the messages from all of them. A closed port
keeps messages undelivered; librdkafka refuses an oversized one locally, at once.
"""

from __future__ import annotations

import pytest
import trio

from trio_producer import (
    DeliveryError,
    KafkaErrorInfo,
    KafkaFatalError,
    Message,
    UndeliveredMessagesError,
    open_producer,
    undelivered_failures,
    undelivered_messages,
)
from trio_producer.testing import free_port

pytestmark = pytest.mark.broker

BIG = b"x" * 2000


def dead() -> str:
    return f"127.0.0.1:{free_port()}"


def values(exc: BaseException) -> list[bytes | None]:
    return [m.value for m in undelivered_messages(exc)]


def names(exc: BaseException) -> list[str]:
    return [f.error.name for f in undelivered_failures(exc)]


async def test_normal_exit_with_messages_not_delivered() -> None:
    with pytest.raises(UndeliveredMessagesError) as caught:
        async with open_producer(bootstrap_servers=dead(), close_timeout=0) as producer:
            await producer.send("t", b"a")
            await producer.send("t", b"b", key=b"k")
    assert sorted(values(caught.value)) == [b"a", b"b"]
    assert undelivered_messages(caught.value) == caught.value.messages


async def test_the_body_raised() -> None:
    with pytest.raises(ValueError, match="boom") as caught:
        async with open_producer(bootstrap_servers=dead(), close_timeout=0) as producer:
            await producer.send("t", b"a")
            await producer.send("t", b"b")
            raise ValueError("boom")
    assert sorted(values(caught.value)) == [b"a", b"b"]
    assert undelivered_failures(caught.value) == producer.undelivered


async def test_the_block_was_cancelled() -> None:
    with trio.move_on_after(0.2):
        with pytest.raises(UndeliveredMessagesError) as caught:
            async with open_producer(bootstrap_servers=dead(), close_timeout=0) as producer:
                await producer.send("t", b"a")
                await trio.sleep_forever()
    assert values(caught.value) == [b"a"]


async def test_keyboard_interrupt() -> None:
    with pytest.raises(KeyboardInterrupt) as caught:
        async with open_producer(bootstrap_servers=dead(), close_timeout=0) as producer:
            await producer.send("t", b"a")
            await producer.send("t", b"b")
            raise KeyboardInterrupt
    assert sorted(values(caught.value)) == [b"a", b"b"]


async def test_send_and_wait_failed_with_fire_and_forget_ones_in_flight() -> None:
    """The body's DeliveryError (of send_and_wait) wins; the others were only in
    ``Producer.undelivered`` and a note. Collected: all three."""
    with pytest.raises(DeliveryError) as caught:
        async with open_producer(
            bootstrap_servers=dead(), close_timeout=0, librdkafka={"message.max.bytes": 1000}
        ) as producer:
            await producer.send("t", b"a")
            await producer.send("t", b"b")
            await producer.send_and_wait("t", BIG)
    assert caught.value.message.value == BIG
    collected = values(caught.value)
    assert (collected[0], sorted(collected[1:])) == (BIG, [b"a", b"b"])
    assert names(caught.value)[0] == "MSG_SIZE_TOO_LARGE"


async def test_one_oversized_fire_and_forget_message_mid_run() -> None:
    """A bare DeliveryError (not an UndeliveredMessagesError): collected all the same."""
    with pytest.raises(DeliveryError) as caught:
        async with open_producer(
            bootstrap_servers=dead(), close_timeout=0, librdkafka={"message.max.bytes": 1000}
        ) as producer:
            await producer.send("t", BIG, key=b"big")
            await trio.sleep_forever()
    assert type(caught.value) is DeliveryError
    assert [(m.key, m.value) for m in undelivered_messages(caught.value)] == [(b"big", BIG)]


def failure(value: bytes) -> DeliveryError:
    return DeliveryError(Message("t", value), KafkaErrorInfo(-152, "_PURGE_QUEUE", "purged"))


def test_groups_causes_and_attachments_are_walked_each_failure_once() -> None:
    a, b, c, d = (failure(v) for v in (b"a", b"b", b"c", b"d"))
    undelivered = UndeliveredMessagesError([a, b])
    undelivered.__cause__ = a  # (the one that failed the producer: counted once)
    fatal = KafkaFatalError(KafkaErrorInfo(-150, "_FENCED", "fenced", fatal=True), [c])
    user = ValueError("mine")
    user.transaction_undelivered = (d,)  # type: ignore[attr-defined]
    group = BaseExceptionGroup("several", [undelivered, ExceptionGroup("inner", [fatal, user])])
    outer = RuntimeError("wrapped")
    outer.__cause__ = group
    assert undelivered_failures(outer) == (a, b, c, d)
    assert undelivered_messages(None) == ()
    assert undelivered_messages(ValueError("nothing")) == ()

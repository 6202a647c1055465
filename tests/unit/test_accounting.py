"""The per-message ledger (tests/harness/accounting.py) catches every way of breaking the promise.

No broker: a fake producer, and hand-made hand-backs and read-backs.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
import trio

from trio_producer import (
    DeliveryError,
    KafkaErrorInfo,
    KafkaFatalError,
    Message,
    Producer,
    RecordMetadata,
    UndeliveredMessagesError,
)

from ..harness.accounting import KINDS, Ledger, payload_prefix

if TYPE_CHECKING:
    from collections.abc import Iterable

PURGED = KafkaErrorInfo(-152, "_PURGE_QUEUE", "purged")


def failure(value: bytes | None) -> DeliveryError:
    return DeliveryError(Message("t", value), PURGED)


class FakeProducer(Producer):
    """Accepts what it is given, fails the values in ``fail``, raises ``raises`` once."""

    def __init__(self, fail: Iterable[int] = (), raises: BaseException | None = None) -> None:
        self.undelivered = ()
        self.sent: list[bytes] = []
        self.fail = set(fail)  # send_and_wait: the n-th call raises DeliveryError
        self.raises = raises
        self.calls = 0

    async def send(self, topic: str, value: Any, **kwargs: Any) -> None:
        await trio.lowlevel.checkpoint()
        if self.raises is not None:
            exc, self.raises = self.raises, None
            raise exc
        self.sent.append(value)

    async def send_and_wait(self, topic: str, value: Any, **kwargs: Any) -> RecordMetadata:
        self.calls += 1
        if self.calls in self.fail:
            raise failure(value)
        await self.send(topic, value)
        return RecordMetadata(topic=topic, partition=0, offset=len(self.sent) - 1, timestamp=None)

    async def send_many(self, topic: str, messages: Any) -> int:
        count = 0
        for value in messages:
            self.sent.append(value)
            count += 1
            if count == 3 and self.raises is not None:
                raise self.raises
        return count


def attempts(ledger: Ledger, accepted: int, refused: int = 0) -> list[bytes]:
    """``accepted`` payloads whose send returned, then ``refused`` whose send raised."""
    out = []
    for i in range(accepted + refused):
        payload = ledger.new_payload()
        if i < accepted:
            ledger.mark_accepted(payload)
        out.append(payload)
    return out


def kinds(ledger: Ledger) -> dict[str, int]:
    return {kind: len(found) for kind, found in ledger.problems().items()}


def test_payloads_are_unique_sorted_padded_and_carry_the_prefix() -> None:
    ledger = Ledger("unit-a", size=40)
    first, second = ledger.new_payload(), ledger.new_payload()
    assert first == b"unit-a:msg-000000" + b"." * 23
    assert len(second) == 40
    assert sorted([second, first]) == [first, second]
    assert payload_prefix(first) == b"unit-a"
    assert payload_prefix(b"no mark") is None
    assert payload_prefix(None) is None
    with pytest.raises(ValueError, match="must not contain"):
        Ledger("a:msg-b")


def test_a_kept_promise_passes() -> None:
    ledger = Ledger("ok")
    delivered, handed, refused, uncertain = [*attempts(ledger, 2, 1), ledger.new_payload()]
    ledger.mark_uncertain(uncertain)  # nowhere: fine
    ledger.hand_back(failure(handed), "test")
    ledger.record_topic([delivered])
    ledger.check()
    assert ledger.counts() == {
        "attempted": 4,
        "accepted": 2,
        "uncertain": 1,
        "delivered": 1,
        "in_topic": 1,
        "handed_back": 1,
        "hook_calls": 0,
    }
    assert refused not in ledger.accepted


def test_check_needs_the_topic_read_first() -> None:
    ledger = Ledger("unread")
    with pytest.raises(AssertionError, match="read the topic back"):
        ledger.check()


def test_every_broken_promise_is_caught_with_its_kind() -> None:
    ledger = Ledger("bad")
    (
        _lost,
        doubled,
        twice,
        both,
        fine,
        handed_not_accepted,
        delivered_not_accepted,
    ) = attempts(ledger, 5, 2)
    uncertain_twice = ledger.new_payload()
    ledger.mark_uncertain(uncertain_twice)
    ledger.hand_back(failure(twice), "its send_and_wait")
    ledger.hand_back(failure(twice), "on_delivery_error hook")
    ledger.hand_back(failure(both), "producer.undelivered")
    ledger.hand_back(failure(handed_not_accepted), "producer.undelivered")
    ledger.hand_back(failure(uncertain_twice), "exit exception")
    ledger.hand_back(failure(b"bad:msg-999999"), "exit exception")  # ours, never made
    ledger.hand_back(failure(None), "exit exception")
    ledger.record_topic(
        [fine, doubled, doubled, both, delivered_not_accepted, uncertain_twice, b"stranger"]
    )
    assert kinds(ledger) == {
        "lost": 1,
        "doubled": 1,
        "handed-back-twice": 1,
        "delivered-and-handed-back": 1,
        "handed-back-but-never-accepted": 1,
        "delivered-but-never-accepted": 1,
        "uncertain-in-two-places": 1,
        "handed-back-but-never-attempted": 2,
        "delivered-but-never-attempted": 1,
    }
    assert ledger.problems()["lost"] == ["bad:msg-000000 (topic x0, handed back: no)"]
    assert ledger.problems()["handed-back-twice"] == [
        "bad:msg-000002 (topic x0, handed back: ['its send_and_wait', 'on_delivery_error hook'])"
    ]
    assert ledger.problems()["handed-back-but-never-attempted"] == [
        "bad:msg-999999 (['exit exception'])",
        "None (['exit exception'])",
    ]
    assert ledger.problems()["delivered-but-never-attempted"] == ["b'stranger' (topic x1)"]
    with pytest.raises(AssertionError) as info:
        ledger.check()
    text = str(info.value)
    assert text.startswith(
        "the promise is broken -- ledger bad: attempted=8 accepted=5 uncertain=1 delivered=5 "
        "in_topic=6 handed_back=7 hook_calls=0\n"
    )
    assert "\n  lost: 1: bad:msg-000000 (topic x0, handed back: no)\n" in text
    assert "\n  doubled: 1: bad:msg-000001 (topic x2, handed back: no)\n" in text
    assert [line.split(":")[0].strip() for line in text.splitlines()[1:]] == [
        kind for kind in KINDS if kind in ledger.problems()
    ]


def test_a_long_list_of_offenders_is_cut_at_ten() -> None:
    ledger = Ledger("many")
    attempts(ledger, 12)
    ledger.record_topic([])
    with pytest.raises(AssertionError, match=r"lost: 12: many:msg-000000 .* and 2 more$"):
        ledger.check()


def test_a_shared_topic_is_split_by_prefix_an_own_topic_has_strangers() -> None:
    mine, theirs = Ledger("mine"), Ledger("theirs")
    (sent,) = attempts(mine, 1)
    (other,) = attempts(theirs, 1)
    topic = [sent, other, None, b"mine:msg-000007"]
    mine.record_topic(topic, shared=True)
    assert kinds(mine) == {"delivered-but-never-attempted": 1}  # ours, never made
    own = Ledger("own")
    attempts(own, 0)
    own.record_topic([other, None])
    assert own.problems() == {
        "delivered-but-never-attempted": ["theirs:msg-000000 (topic x1)", "None (topic x1)"]
    }


def test_collect_walks_groups_producers_and_counts_each_object_once() -> None:
    ledger = Ledger("col")
    a, b, c, d = attempts(ledger, 4)
    fa, fb, fc, fd = (failure(p) for p in (a, b, c, d))
    undelivered = UndeliveredMessagesError([fa])
    fatal = KafkaFatalError(PURGED, [fb])
    group = BaseExceptionGroup("g", [fatal, KeyboardInterrupt(), fc])
    producer = FakeProducer()
    producer.undelivered = (fd,)
    for source in (undelivered, group, producer, undelivered, group, producer, None):
        ledger.collect(source)
    ledger.record_topic([])
    ledger.check()
    assert ledger.handed == {
        a: ["exit exception: UndeliveredMessagesError.failures"],
        b: ["exit exception (in a group): KafkaFatalError.failures"],
        c: ["exit exception (in a group): DeliveryError"],
        d: ["producer.undelivered"],
    }


def test_one_message_in_two_hand_backs_is_caught() -> None:
    """The same failure in producer.undelivered and in the exit exception (two objects
    that hand it back), or in the hook and in the exit exception: handed back twice."""
    ledger = Ledger("two")
    a, b = attempts(ledger, 2)
    fa, fb = failure(a), failure(b)
    producer = FakeProducer()
    producer.undelivered = (fa,)
    ledger.collect(producer)
    ledger.collect(UndeliveredMessagesError([fa, fb]))
    ledger.hook(fb)
    ledger.record_topic([])
    assert kinds(ledger) == {"handed-back-twice": 2}
    assert ledger.hook_calls == 1


async def test_send_records_accepted_only_when_send_returns() -> None:
    ledger = Ledger("send")
    producer = FakeProducer()
    payload = await ledger.send(producer, "t")
    producer.raises = ValueError("refused")
    with pytest.raises(ValueError, match="refused"):
        await ledger.send(producer, "t")
    assert ledger.accepted == {payload}
    assert len(ledger.attempted) == 2
    ledger.record_topic(producer.sent)
    ledger.check()


async def test_send_and_wait_delivery_error_is_handed_back_an_interruption_is_uncertain() -> None:
    ledger = Ledger("saw")
    producer = FakeProducer(fail=[2])
    assert await ledger.send_and_wait(producer, "t") is not None
    assert await ledger.send_and_wait(producer, "t") is None  # DeliveryError: handed back
    with trio.CancelScope() as scope:
        scope.cancel()
        await ledger.send_and_wait(producer, "t")
    ok, failed, cancelled = ledger.attempted
    assert ledger.accepted == {ok, failed}
    assert ledger.uncertain == {cancelled}
    assert ledger.handed == {failed: ["its send_and_wait"]}
    ledger.record_topic(producer.sent)
    ledger.check()


async def test_send_many_records_what_it_consumed_and_names_its_loss() -> None:
    ledger = Ledger("many")
    producer = FakeProducer(raises=RuntimeError("stop"))
    with pytest.raises(RuntimeError, match="stop"):
        await ledger.send_many(producer, "t", 10)
    assert len(ledger.attempted) == 3
    assert ledger.accepted == ledger.via_send_many == set(ledger.attempted)
    ledger.record_topic(producer.sent[:2])  # the third one vanished
    assert ledger.problems() == {
        "lost-consumed-by-send_many": ["many:msg-000002 (topic x0, handed back: no)"]
    }


def test_books_survive_json_for_a_child_process() -> None:
    child = Ledger("child-0")
    kept, handed, _refused = attempts(child, 2, 1)
    uncertain = child.new_payload()
    child.mark_uncertain(uncertain)
    child.via_send_many.add(kept)
    child.hand_back(failure(handed), "producer.undelivered")
    child.hand_back(failure(handed), "exit exception")
    child.hand_back(failure(None), "exit exception")
    books = json.loads(json.dumps(child.books()))
    parent = Ledger.from_books("child-0", books)
    assert parent.attempted == child.attempted
    assert parent.accepted == child.accepted
    assert parent.uncertain == child.uncertain
    assert parent.via_send_many == child.via_send_many
    assert parent.handed == {
        handed: ["child: producer.undelivered", "child: exit exception"],
        None: ["child: exit exception"],
    }
    parent.record_topic([], shared=True)
    assert kinds(parent) == {
        "lost-consumed-by-send_many": 1,
        "handed-back-twice": 1,
        "handed-back-but-never-attempted": 1,
    }

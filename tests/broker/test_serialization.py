"""Serializers: applied at the call, before a message is accepted; read back exactly.

Per-message accounting: a message whose serializer fails is not accepted (not in the
topic, not counted, not handed back); every neighbour is in the topic once, in order.
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio
from confluent_kafka.serialization import (
    MessageField,
    SerializationContext,
    Serializer,
    StringSerializer,
)

from trio_producer import SerializationError, open_producer
from trio_producer.serialization import (
    JsonSerializer,
    SerializerHeaders,
    json_serializer,
    string_serializer,
)

from ..harness.typecheck import mypy_strict

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ..conftest import ReadBack

pytestmark = pytest.mark.broker


def records(got: list[Any]) -> list[tuple[bytes | None, bytes | None]]:
    return [(r.key, r.value) for r in got]


async def test_json_values_and_string_keys_round_trip(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    async with open_producer(
        bootstrap_servers=kafka_bootstrap,
        key_serializer=string_serializer,
        value_serializer=json_serializer,
    ) as producer:
        await producer.send(kafka_topic, {"id": 1, "name": "Zoë"}, key="k1")
        producer.send_nowait(kafka_topic, [1, 2.5, None, True])
        accepted = await producer.send_many(kafka_topic, [{"n": 3}, ("k4", "four"), None])
        metadata = await producer.send_and_wait(kafka_topic, 6, key="k6")
        await producer.send(kafka_topic, None, key="tombstone")
    assert accepted == 3
    assert metadata.offset == 5
    got = await read_back(kafka_topic, expected=7)
    assert records(got) == [
        (b"k1", '{"id":1,"name":"Zoë"}'.encode()),
        (None, b"[1,2.5,null,true]"),
        (None, b'{"n":3}'),
        (b"k4", b'"four"'),
        (None, None),  # None is a tombstone, never serialized
        (b"k6", b"6"),
        (b"tombstone", None),
    ]


async def test_a_failing_serializer_accepts_nothing_and_names_the_message(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    async with open_producer(
        bootstrap_servers=kafka_bootstrap, value_serializer=json_serializer
    ) as producer:
        await producer.send(kafka_topic, {"i": 0})
        with pytest.raises(SerializationError) as raised:
            await producer.send(kafka_topic, {"bad": {1, 2}})
        producer.send_nowait(kafka_topic, {"i": 1})
        with pytest.raises(SerializationError) as raised_nowait:
            producer.send_nowait(kafka_topic, float("nan"))
        with pytest.raises(SerializationError):
            await producer.send_and_wait(kafka_topic, object())
        await producer.send(kafka_topic, {"i": 2})
        await producer.flush()
        stats = producer.statistics()
    assert (stats.delivered, stats.failed, stats.queued, stats.in_flight) == (3, 0, 0, 0)
    error = raised.value
    assert (error.field, error.topic, error.obj, error.index) == (
        "value",
        kafka_topic,
        {"bad": {1, 2}},
        None,
    )
    assert isinstance(error.__cause__, TypeError)
    assert str(error) == (
        f"value_serializer failed for a message to topic {kafka_topic!r}: TypeError: Object "
        "of type set is not JSON serializable (value was dict {'bad': {1, 2}}); nothing "
        "was accepted"
    )
    assert isinstance(raised_nowait.value.__cause__, ValueError)  # NaN is not JSON
    got = await read_back(kafka_topic, expected=3)
    assert [r.value for r in got] == [b'{"i":0}', b'{"i":1}', b'{"i":2}']


async def test_a_serializer_must_return_bytes(kafka_bootstrap: str, kafka_topic: str) -> None:
    def as_text(obj: object, topic: str, headers: SerializerHeaders) -> bytes:
        return str(obj)  # type: ignore[return-value]  # the mistake under test

    async with open_producer(bootstrap_servers=kafka_bootstrap, key_serializer=as_text) as p:
        with pytest.raises(
            SerializationError, match=r"key_serializer returned str: a serializer must return bytes"
        ) as raised:
            await p.send(kafka_topic, b"v", key=7)
        assert raised.value.field == "key"
        assert p.statistics().delivered == 0


async def test_serializers_see_topic_and_headers_and_may_add_headers(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    seen: list[tuple[object, str, list[tuple[str, bytes | str | None]]]] = []

    def tagging(obj: str, topic: str, headers: SerializerHeaders) -> bytes:
        seen.append((obj, topic, list(headers)))
        headers.append(("content-type", "text/plain"))
        return obj.encode()

    async with open_producer(bootstrap_servers=kafka_bootstrap, value_serializer=tagging) as p:
        await p.send(kafka_topic, "a", headers={"trace": b"t1"})
        await p.send(kafka_topic, "b")
        await p.send(kafka_topic, None)  # a tombstone: the serializer is not called
    assert seen == [("a", kafka_topic, [("trace", b"t1")]), ("b", kafka_topic, [])]
    got = await read_back(kafka_topic, expected=3)
    assert [(r.value, r.headers) for r in got] == [
        (b"a", [("trace", b"t1"), ("content-type", b"text/plain")]),
        (b"b", [("content-type", b"text/plain")]),
        (None, None),
    ]


async def test_confluent_serializer_objects_get_a_serialization_context(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    contexts: list[tuple[str, str, object]] = []

    class Upper(Serializer):  # type: ignore[misc]  # (confluent is untyped)
        def __call__(self, obj: str, ctx: SerializationContext | None = None) -> bytes:
            assert ctx is not None
            contexts.append((ctx.topic, ctx.field, ctx.headers))
            return obj.upper().encode()

    async with open_producer(
        bootstrap_servers=kafka_bootstrap,
        key_serializer=StringSerializer("utf_8"),
        value_serializer=Upper(),
    ) as producer:
        await producer.send(kafka_topic, "hello", key="clé")
        await producer.send_many(kafka_topic, [("k2", "world")])
    assert contexts == [(kafka_topic, MessageField.VALUE, [])] * 2
    got = await read_back(kafka_topic, expected=2)
    assert records(got) == [("clé".encode(), b"HELLO"), (b"k2", b"WORLD")]


async def test_send_many_consumes_exactly_up_to_the_bad_element(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    values: list[object] = [{"i": i} for i in range(10)]
    values[6] = {"i": {6}}  # not JSON
    it = iter(values)
    async with open_producer(
        bootstrap_servers=kafka_bootstrap, value_serializer=json_serializer
    ) as producer:
        with pytest.raises(SerializationError) as raised:
            await producer.send_many(kafka_topic, it)
        assert raised.value.index == 6
        assert "(send_many element 6)" in str(raised.value)
        assert next(it) == {"i": 7}  # the bad element was consumed, nothing after it
        await producer.flush()
        assert producer.statistics().delivered == 6
    got = await read_back(kafka_topic, expected=6)
    assert [r.value for r in got] == [f'{{"i":{i}}}'.encode() for i in range(6)]


async def test_send_many_refuses_headers_added_by_a_serializer(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    def tagging(obj: bytes, topic: str, headers: SerializerHeaders) -> bytes:
        headers.append(("schema", b"1"))
        return obj

    async with open_producer(bootstrap_servers=kafka_bootstrap, value_serializer=tagging) as p:
        with pytest.raises(SerializationError, match=r"cannot carry: use send\(\)") as raised:
            await p.send_many(kafka_topic, [b"a"])
        assert raised.value.index == 0
        assert p.statistics().delivered == 0
        await p.send(kafka_topic, b"b")  # send() carries them


# ---- async serializers -------------------------------------------------------------------


async def slow_upper(obj: str, topic: str, headers: SerializerHeaders) -> bytes:
    await trio.sleep(0.01)
    return obj.upper().encode()


async def test_async_serializers_are_awaited(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    async with open_producer(
        bootstrap_servers=kafka_bootstrap, key_serializer=slow_upper, value_serializer=slow_upper
    ) as producer:
        await producer.send(kafka_topic, "a", key="k")
        assert await producer.send_many(kafka_topic, ["b", ("k2", "c"), None]) == 3
        metadata = await producer.send_and_wait(kafka_topic, "d")
        with pytest.raises(TypeError, match=r"^send_nowait cannot await this producer's async"):
            producer.send_nowait(kafka_topic, "e")
    assert metadata.offset == 4
    got = await read_back(kafka_topic, expected=5)
    assert records(got) == [(b"K", b"A"), (None, b"B"), (b"K2", b"C"), (None, None), (None, b"D")]


async def test_cancelled_while_an_async_serializer_runs_nothing_is_accepted(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    """Cancel 40 sends at random points of their serializer: each message is either in
    the topic exactly once (the send returned) or absent (the send raised Cancelled)."""
    returned: list[str] = []
    raised: list[str] = []

    async def one(producer: Any, value: str, delay: float) -> None:
        with trio.move_on_after(delay):
            try:
                await producer.send(kafka_topic, value)
            except trio.Cancelled:
                raised.append(value)
                raise
            returned.append(value)

    async with open_producer(
        bootstrap_servers=kafka_bootstrap, value_serializer=slow_upper
    ) as producer:
        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(one, producer, f"m{i}", (i % 8) * 0.003)
    assert sorted(returned + raised) == sorted(f"m{i}" for i in range(40))
    assert returned  # both outcomes happened
    assert raised
    got = await read_back(kafka_topic, expected=len(returned))
    assert sorted(r.value for r in got) == sorted(v.upper().encode() for v in returned)


async def test_async_serializer_errors_accept_nothing(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    async def picky(obj: str, topic: str, headers: SerializerHeaders) -> bytes:
        await trio.lowlevel.checkpoint()
        if obj == "bad":
            raise ValueError("no bad values")
        return obj.encode()

    it = iter(["a", "b", "bad", "c"])
    async with open_producer(bootstrap_servers=kafka_bootstrap, value_serializer=picky) as p:
        with pytest.raises(SerializationError, match="no bad values") as raised:
            await p.send_many(kafka_topic, it)
        assert raised.value.index == 2
        assert list(it) == ["c"]
    got = await read_back(kafka_topic, expected=2)
    assert [r.value for r in got] == [b"a", b"b"]


# ---- with a durable spool ----------------------------------------------------------------


async def test_serializers_with_a_spool(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack, tmp_path: Path
) -> None:
    async with open_producer(
        bootstrap_servers=kafka_bootstrap,
        spool_path=tmp_path / "spool",
        value_serializer=JsonSerializer(sort_keys=True),
    ) as producer:
        await producer.send(kafka_topic, {"b": 1, "a": 2})
        producer.send_nowait(kafka_topic, [1])
        await producer.send_many(kafka_topic, iter([{"z": 0}, "s"]))
        with pytest.raises(SerializationError):
            await producer.send(kafka_topic, {"x": object()})
        assert producer.statistics().spooled in range(5)
    got = await read_back(kafka_topic, expected=4)
    assert [r.value for r in got] == [b'{"a":2,"b":1}', b"[1]", b'{"z":0}', b'"s"']


# ---- bad configuration -------------------------------------------------------------------


async def test_a_serializer_that_is_not_callable_is_refused_before_opening() -> None:
    with pytest.raises(TypeError, match=r"^value_serializer must be a callable"):
        async with open_producer(bootstrap_servers="127.0.0.1:1", value_serializer="json"):  # type: ignore[arg-type]
            pass


def dumps(obj: object) -> bytes:
    return repr(obj).encode()


async def test_a_one_argument_serializer_is_refused_at_open_with_the_fix() -> None:
    """aiokafka's serializers take only the object: said at open, not at the first send."""
    with pytest.raises(TypeError) as caught:
        async with open_producer(bootstrap_servers="127.0.0.1:1", value_serializer=dumps):  # type: ignore[arg-type]
            pass  # pragma: no cover
    assert str(caught.value) == (
        f"value_serializer {dumps!r:.60} takes one argument (aiokafka's obj -> bytes); a "
        "trio_producer serializer takes (obj, topic, headers): wrap it, "
        "value_serializer=lambda obj, topic, headers: f(obj)"
    )


def test_string_serializer_refuses_other_types() -> None:
    with pytest.raises(TypeError, match="string_serializer takes str, not bytes"):
        string_serializer(b"x", "t", [])  # type: ignore[arg-type]


# ---- typing ------------------------------------------------------------------------------

SNIPPET = """\
from trio_producer import Producer, open_producer
from trio_producer.serialization import json_serializer, string_serializer


async def orders(p: Producer[str, dict[str, int]]) -> None:
    await p.send("t", {"a": 1}, key="k")


def to_bytes(obj: dict[str, int], topic: str, headers: object) -> bytes:
    return b""


async def main() -> None:
    async with open_producer(bootstrap_servers="x") as raw:
        reveal_type(raw)
        await raw.send("t", {"a": 1})
    async with open_producer(bootstrap_servers="x", value_serializer=json_serializer) as js:
        reveal_type(js)
        await js.send("t", {"a": 1}, key=b"k")
    async with open_producer(
        bootstrap_servers="x", key_serializer=string_serializer, value_serializer=to_bytes
    ) as typed:
        reveal_type(typed)
        await typed.send("t", {"a": 1}, key="k")
        await typed.send("t", {"a": "x"}, key="k")
        await typed.send("t", {"a": 1}, key=b"k")
        await typed.send_many("t", [{"a": 1}, ("k", {"b": 2}), None])
        await orders(typed)
    from confluent_kafka.serialization import StringSerializer
    async with open_producer(bootstrap_servers="x", key_serializer=StringSerializer()) as cs:
        reveal_type(cs)


def bare(p: Producer) -> None:
    p.send_nowait("t", b"v", key="k")
"""


def test_the_handle_is_typed_by_its_serializers(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    proc = mypy_strict(SNIPPET, tmp_path)
    lines = [line.split("snippet.py:", 1)[1] for line in proc.stdout.splitlines() if ":" in line]
    errors = {int(line.split(":")[0]) for line in lines if ": error:" in line}
    reveals = {
        # (older mypy versions spell builtins.str)
        int(line.split(":")[0]): line.split('"')[1].replace("builtins.", "")
        for line in lines
        if "Revealed type" in line
    }
    assert reveals == {
        15: "trio_producer._producer.Producer[bytes | str, bytes | str]",
        18: "trio_producer._producer.Producer[bytes | str, object]",
        23: "trio_producer._producer.Producer[str, dict[str, int]]",
        31: "trio_producer._producer.Producer[str | None, bytes | str]",  # confluent's
    }, proc.stdout
    # 16: a dict is not bytes/str; 25: a str where an int goes; 26: bytes is not a str key
    assert errors == {16, 25, 26}, proc.stdout


# ---- interrupted while serializing (from an independent attack) ---------------------------


async def checkpointing(obj: str, topic: str, headers: SerializerHeaders) -> bytes:
    await trio.lowlevel.checkpoint()
    return obj.encode()


async def test_send_many_cancelled_while_an_async_serializer_runs_says_what_was_accepted(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack, tmp_path: Path
) -> None:
    """The element in hand when the call is cancelled was consumed, not accepted: the
    Cancelled carries a note with the count (before: nothing told the caller)."""
    scope = trio.CancelScope()

    def elements() -> Iterator[str]:
        for i in range(5):
            if i == 4:
                scope.cancel()  # m4 is taken; its serializer's checkpoint is cancelled
            yield f"m{i}"

    async with open_producer(
        bootstrap_servers=kafka_bootstrap, value_serializer=checkpointing
    ) as producer:
        with scope:
            with pytest.raises(trio.Cancelled) as raised:
                await producer.send_many(kafka_topic, elements())
            notes = raised.value.__notes__
            raise raised.value
    assert notes == [
        "trio_producer: send_many accepted 4 elements; the next one it took (being "
        "serialized or sent) was not accepted"
    ]
    got = await read_back(kafka_topic, expected=4)
    assert [r.value for r in got] == [b"m0", b"m1", b"m2", b"m3"]


async def test_send_many_with_an_async_serializer_returns_once_all_are_accepted(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    """Cancelled after the last element was accepted: it returns the count (before: a
    final unshielded checkpoint raised Cancelled with everything accepted)."""
    scope = trio.CancelScope()

    def elements() -> Iterator[str]:
        yield from ("a", "b")
        scope.cancel()

    async with open_producer(
        bootstrap_servers=kafka_bootstrap, value_serializer=checkpointing
    ) as producer:
        with scope:
            assert await producer.send_many(kafka_topic, elements()) == 2
    got = await read_back(kafka_topic, expected=2)
    assert [r.value for r in got] == [b"a", b"b"]


async def test_cancelled_async_key_serializer_leaves_no_coroutine_unawaited(
    kafka_bootstrap: str, kafka_topic: str
) -> None:
    """Before: both serializers were called before either was awaited, so a cancelled
    key left the value's coroutine never awaited (a RuntimeWarning: an error here)."""

    async def slow(obj: str, topic: str, headers: SerializerHeaders) -> bytes:
        await trio.sleep(1)
        return obj.encode()

    async with open_producer(
        bootstrap_servers=kafka_bootstrap, key_serializer=slow, value_serializer=slow
    ) as producer:
        with trio.move_on_after(0.05):
            await producer.send(kafka_topic, "v", key="k")
        assert producer.statistics().delivered == 0
    gc.collect()


BLOCKING_APP = Path(__file__).resolve().parents[1] / "harness" / "apps" / "blocking_serializer.py"


def blocked_notes(kind: str, method: str, topic: str) -> list[str]:
    """The notes on the KeyboardInterrupt out of a serializer that ``method`` called."""
    notes = [
        f"trio_producer: interrupted while the value_serializer ran for a message to topic "
        f"{topic!r}: that message was not accepted"
    ]
    if method == "send_many" and kind == "plain":  # the bulk path
        notes.append(
            "trio_producer: send_many element 0 was being serialized: consumed, not "
            "accepted (the ones before it were)"
        )
    elif method == "send_many":
        notes.append(
            "trio_producer: send_many accepted 0 elements; the next one it took (being "
            "serialized or sent) was not accepted"
        )
    return notes


@pytest.mark.parametrize(
    ("kind", "method"),
    [
        ("plain", "send"),
        ("plain", "send_nowait"),
        ("plain", "send_many"),
        ("coroutine", "send"),
        ("coroutine", "send_and_wait"),
        ("coroutine", "send_many"),
        ("confluent", "send"),
        ("confluent-async", "send"),
        ("threaded", "send"),
        ("registry-inline", "send"),
    ],
)
async def test_ctrl_c_is_not_held_off_by_a_blocking_serializer(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack, kind: str, method: str
) -> None:
    """A serializer that blocks (a registry call without a timeout) is interrupted by a
    real SIGINT within 2 s, not after its 4 s, whatever kind it is and whichever send
    calls it; the message it was serializing was not accepted (a note says so), and the
    three accepted before it are in the topic. Before: an ``async def`` serializer (and
    confluent's async ones, and ThreadedSerializer's inline calls) ran KI-protected,
    since only the call that creates the coroutine was unprotected: 4 s."""
    if kind == "registry-inline":
        pytest.importorskip("confluent_kafka.schema_registry.avro")  # the extra
    proc = await trio.run_process(
        [sys.executable, str(BLOCKING_APP), kafka_bootstrap, kafka_topic, kind, method],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert report["outcome"] == "KeyboardInterrupt", report
    assert report["seconds"] < 2.0, report  # the serializer alone blocks for 4 s
    assert report["notes"] == blocked_notes(kind, method, kafka_topic), report
    got = await read_back(kafka_topic, expected=3)
    values = [r.value for r in got]
    if kind == "registry-inline":  # confluent's framing: magic byte, schema id, then Avro
        values = [v[5:] if v is not None else None for v in values]
        assert values == [b"\x02a", b"\x02b", b"\x02c"]
    else:
        assert values == [b"a", b"b", b"c"]

"""Schema Registry serializers under Trio: trio_producer.schema_registry.ThreadedSerializer.

No Schema Registry server can be installed on the machines these tests run on, so the
registry is confluent's in-process mock: ``SchemaRegistryClient.new_client({"url":
"mock://..."})`` returns a ``MockSchemaRegistryClient``. Each mock client has its own store
-- two clients with the same ``mock://`` URL do **not** share schemas -- so the
serializers and the deserializers of a test share one client object.

The registry's HTTP is stood in for by a mock client whose registration blocks (a
``threading.Event``), and, for confluent's *async* stack, by a small fake HTTP registry
in a thread (``FakeRegistry``): that is where the async stack fails under Trio.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing

pytest.importorskip("confluent_kafka.schema_registry.avro")  # the [schema-registry] extra

from cachetools import LRUCache
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient, SchemaRegistryClient
from confluent_kafka.schema_registry._sync.mock_schema_registry_client import (
    MockSchemaRegistryClient,
)
from confluent_kafka.schema_registry.avro import (
    AsyncAvroSerializer,
    AvroDeserializer,
    AvroSerializer,
)
from confluent_kafka.serialization import (
    MessageField,
    SerializationContext,
    StringSerializer,
)

from trio_producer import SerializationError, open_producer
from trio_producer.schema_registry import ThreadedSerializer

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ..conftest import ReadBack

USER = json.dumps(
    {
        "type": "record",
        "name": "User",
        "namespace": "example",
        "fields": [
            {"name": "name", "type": "string"},
            {"name": "age", "type": "long"},
            {"name": "score", "type": "double"},
            {"name": "admin", "type": "boolean"},
            {"name": "email", "type": ["null", "string"], "default": None},
            {"name": "tags", "type": {"type": "array", "items": "string"}},
            {"name": "avatar", "type": "bytes"},
        ],
    }
)
KEY = '"string"'


def user(i: int) -> dict[str, Any]:
    return {
        "name": f"user-{i} Zoë",
        "age": 20 + i,
        "score": i / 4,
        "admin": i % 3 == 0,
        "email": None if i % 2 else f"u{i}@example.org",
        "tags": [f"t{j}" for j in range(i % 4)],
        "avatar": bytes(range(i % 7)),
    }


def mock_registry() -> MockSchemaRegistryClient:
    client = SchemaRegistryClient.new_client({"url": "mock://trio-producer-tests"})
    assert isinstance(client, MockSchemaRegistryClient)
    return client


def schema_id(data: bytes | None) -> int:
    """The schema id of confluent's wire format: magic byte 0, then a 4-byte big-endian id."""
    assert data is not None
    assert data[0] == 0
    return int.from_bytes(data[1:5], "big")


class GatedRegistry(MockSchemaRegistryClient):  # type: ignore[misc, unused-ignore]
    """A mock registry whose registration waits for ``release`` (as HTTP would), and
    records the thread it ran in."""

    def __init__(self) -> None:
        super().__init__({"url": "mock://gated"})
        self.release = threading.Event()
        self.registering = trio.Event()
        self.threads: list[threading.Thread] = []

    def register_schema_full_response(self, *args: Any, **kwargs: Any) -> Any:
        self.threads.append(threading.current_thread())
        trio.from_thread.run_sync(self.registering.set)  # in a Trio worker thread only
        assert self.release.wait(timeout=10), "registration never released"
        return super().register_schema_full_response(*args, **kwargs)


class RecordingAvro(AvroSerializer):  # type: ignore[misc, unused-ignore]
    """An AvroSerializer that records the thread of every call."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.threads: list[threading.Thread] = []

    def __call__(self, obj: Any, ctx: SerializationContext | None = None) -> bytes | None:
        self.threads.append(threading.current_thread())
        out: bytes | None = super().__call__(obj, ctx)
        return out


# ---- the round trip, on a real broker ----------------------------------------------------


@pytest.mark.broker
async def test_avro_round_trip(kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack) -> None:
    """Serialize -> produce -> consume -> deserialize with the same registry: equal, in order,
    framed with the ids the registry gave the key and value subjects."""
    registry = mock_registry()
    values = [user(i) for i in range(40)]
    keys = [f"key-{i}" for i in range(40)]
    async with open_producer(
        bootstrap_servers=kafka_bootstrap,
        key_serializer=ThreadedSerializer(AvroSerializer(registry, KEY)),  # type: ignore[arg-type]
        value_serializer=ThreadedSerializer(AvroSerializer(registry, USER)),  # type: ignore[arg-type]
    ) as producer:
        for k, v in zip(keys[:30], values[:30], strict=True):
            await producer.send(kafka_topic, v, key=k)
        assert await producer.send_many(kafka_topic, zip(keys[30:], values[30:], strict=True)) == 10
    got = await read_back(kafka_topic, expected=40)
    assert len(got) == 40

    value_id = registry.get_latest_version(f"{kafka_topic}-value").schema_id
    key_id = registry.get_latest_version(f"{kafka_topic}-key").schema_id
    assert value_id != key_id
    assert sorted(registry.get_subjects()) == [f"{kafka_topic}-key", f"{kafka_topic}-value"]
    assert registry.get_versions(f"{kafka_topic}-value") == [1]  # registered once
    assert [schema_id(r.value) for r in got] == [value_id] * 40
    assert [schema_id(r.key) for r in got] == [key_id] * 40

    deserialize = AvroDeserializer(registry)
    value_ctx = SerializationContext(kafka_topic, MessageField.VALUE)
    key_ctx = SerializationContext(kafka_topic, MessageField.KEY)
    assert [deserialize(r.value, value_ctx) for r in got] == values
    assert [deserialize(r.key, key_ctx) for r in got] == keys


@pytest.mark.broker
async def test_a_record_that_does_not_match_the_schema_is_not_accepted(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    """A bad record raises SerializationError at the send, nothing of it is accepted, and
    its neighbours are delivered -- on the first call (in the thread) and on a warm one."""
    registry = mock_registry()
    serializer = ThreadedSerializer(AvroSerializer(registry, USER))
    bad = {"name": "no age"}
    async with open_producer(
        bootstrap_servers=kafka_bootstrap,
        value_serializer=serializer,  # type: ignore[arg-type]
    ) as producer:
        with pytest.raises(SerializationError) as first:
            await producer.send(kafka_topic, bad)  # the first call: in the thread
        assert not serializer.is_warm(kafka_topic, "value")
        await producer.send(kafka_topic, user(1))
        assert serializer.is_warm(kafka_topic, "value")
        with pytest.raises(SerializationError) as warm:
            await producer.send(kafka_topic, {**user(2), "age": "old"})  # inline
        await producer.send(kafka_topic, user(3))
        await producer.flush()
        stats = producer.statistics()
        assert (stats.delivered, stats.failed, stats.queued, stats.in_flight) == (2, 0, 0, 0)
    for raised, obj in ((first, bad), (warm, {**user(2), "age": "old"})):
        assert (raised.value.field, raised.value.topic, raised.value.obj) == (
            "value",
            kafka_topic,
            obj,
        )
    assert isinstance(first.value.__cause__, ValueError)
    assert str(first.value.__cause__) == "no value and no default for age"
    assert isinstance(warm.value.__cause__, TypeError)
    got = await read_back(kafka_topic, expected=2)
    deserialize = AvroDeserializer(registry)
    ctx = SerializationContext(kafka_topic, MessageField.VALUE)
    assert [deserialize(r.value, ctx) for r in got] == [user(1), user(3)]


@pytest.mark.broker
async def test_send_nowait_refuses_the_threaded_serializer(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    registry = mock_registry()
    async with open_producer(
        bootstrap_servers=kafka_bootstrap,
        value_serializer=ThreadedSerializer(AvroSerializer(registry, USER)),  # type: ignore[arg-type]
    ) as producer:
        with pytest.raises(TypeError, match=r"^send_nowait cannot await this producer's async"):
            producer.send_nowait(kafka_topic, user(0))
        await producer.send(kafka_topic, user(1))
    assert registry.get_subjects() == [f"{kafka_topic}-value"]
    got = await read_back(kafka_topic, expected=1)
    ctx = SerializationContext(kafka_topic, MessageField.VALUE)
    assert [AvroDeserializer(registry)(r.value, ctx) for r in got] == [user(1)]


@pytest.mark.broker
async def test_the_first_call_does_not_block_the_event_loop(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    """Three tasks send the first message of a subject at once, and the registration is
    held up (as HTTP would be): it runs once, in a worker thread, while the Trio loop keeps
    running; the other two wait without a thread, then serialize on the Trio thread."""
    registry = GatedRegistry()
    avro = RecordingAvro(registry, USER)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0.01)
            ticks += 1

    with trio.fail_after(20):
        async with open_producer(
            bootstrap_servers=kafka_bootstrap,
            value_serializer=ThreadedSerializer(avro),  # type: ignore[arg-type]
        ) as producer:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ticker)
                async with trio.open_nursery() as senders:
                    for i in range(3):
                        senders.start_soon(producer.send, kafka_topic, user(i))
                    await registry.registering.wait()
                    before = ticks
                    await trio.sleep(0.3)  # the registration is still held up
                    assert ticks - before >= 5  # the loop ran all along
                    assert len(registry.threads) == 1
                    assert len(avro.threads) == 1  # the others wait without a thread
                    registry.release.set()
                nursery.cancel_scope.cancel()
            await producer.send(kafka_topic, user(3))
    main = threading.main_thread()
    assert registry.threads[0] is not main
    assert avro.threads[0] is registry.threads[0]
    assert avro.threads[1:] == [main] * 3  # warm: inline on the Trio thread
    got = await read_back(kafka_topic, expected=4)
    deserialize = AvroDeserializer(registry)
    ctx = SerializationContext(kafka_topic, MessageField.VALUE)
    assert sorted((deserialize(r.value, ctx) for r in got[:3]), key=lambda u: u["age"]) == [
        user(0),
        user(1),
        user(2),
    ]
    assert deserialize(got[3].value, ctx) == user(3)


@pytest.mark.broker
async def test_cancelled_during_the_first_call_nothing_is_accepted(
    kafka_bootstrap: str, kafka_topic: str, read_back: ReadBack
) -> None:
    """Cancelling a send whose first call hangs in the thread returns at once (the thread
    is abandoned): the message is not accepted; later sends work."""
    registry = GatedRegistry()
    async with open_producer(
        bootstrap_servers=kafka_bootstrap,
        value_serializer=ThreadedSerializer(AvroSerializer(registry, USER)),  # type: ignore[arg-type]
    ) as producer:
        with trio.move_on_after(5) as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(producer.send, kafka_topic, user(0))
                await registry.registering.wait()
                nursery.cancel_scope.cancel()
        assert not scope.cancelled_caught
        assert producer.statistics().queued == 0
        registry.release.set()
        await producer.send(kafka_topic, user(1))
    assert len(registry.threads) == 1  # the abandoned call registered; nobody again
    got = await read_back(kafka_topic, expected=1)
    ctx = SerializationContext(kafka_topic, MessageField.VALUE)
    assert [AvroDeserializer(registry)(r.value, ctx) for r in got] == [user(1)]


# ---- the adapter on its own --------------------------------------------------------------


async def test_inline_only_once_warm_and_only_when_no_call_can_reach_the_registry() -> None:
    registry = mock_registry()
    ctx = SerializationContext("t", MessageField.VALUE, [])
    main = threading.main_thread()

    plain = RecordingAvro(registry, USER)
    threaded = ThreadedSerializer(plain)
    assert threaded.inline
    with trio.testing.assert_checkpoints():
        await threaded(user(0), ctx)
    with trio.testing.assert_checkpoints():
        await threaded(user(1), ctx)
    assert [t is main for t in plain.threads] == [False, True]

    latest = RecordingAvro(
        registry, USER, conf={"auto.register.schemas": False, "use.latest.version": True}
    )
    always = ThreadedSerializer(latest)
    assert not always.inline
    for i in range(3):
        await always(user(i), ctx)
    assert [t is main for t in latest.threads] == [False] * 3
    assert not always.is_warm("t", "value")

    assert not ThreadedSerializer(StringSerializer()).inline  # not a registry serializer


async def test_inline_stops_once_the_associated_strategy_cache_could_evict() -> None:
    """confluent's default subject name strategy caches subjects in an LRU; once more
    (topic, field) pairs were seen than it holds, a warm pair may have been evicted, and
    every call goes through the thread."""
    avro = RecordingAvro(mock_registry(), USER)
    avro._subject_name_func._cache = LRUCache(maxsize=2)  # type: ignore[attr-defined]
    threaded = ThreadedSerializer(avro)
    main = threading.main_thread()

    def ctx(topic: str) -> SerializationContext:
        return SerializationContext(topic, MessageField.VALUE, [])

    for topic in ("a", "b", "a", "b"):
        await threaded(user(0), ctx(topic))
    assert [t is main for t in avro.threads] == [False, False, True, True]
    assert threaded.inline
    await threaded(user(0), ctx("c"))  # a third pair: "a" may be gone from the LRU
    assert not threaded.inline
    assert not threaded.is_warm("a", "value")
    await threaded(user(0), ctx("a"))
    assert [t is main for t in avro.threads[4:]] == [False, False]


async def test_the_threaded_serializer_refuses_what_it_cannot_wrap() -> None:
    async_registry = AsyncSchemaRegistryClient.new_client({"url": "mock://x"})
    async_avro = await AsyncAvroSerializer(async_registry, USER)
    with pytest.raises(TypeError, match=r"^ThreadedSerializer wraps a sync serializer, not"):
        ThreadedSerializer(async_avro)
    with pytest.raises(TypeError, match=r"^ThreadedSerializer wraps a confluent_kafka"):
        ThreadedSerializer(lambda obj, ctx: b"")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^limiter must be a trio.CapacityLimiter or None"):
        ThreadedSerializer(StringSerializer(), limiter=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^ThreadedSerializer needs a SerializationContext"):
        await ThreadedSerializer(StringSerializer())("x")


async def test_a_limiter_bounds_the_threads() -> None:
    registry = GatedRegistry()
    limiter = trio.CapacityLimiter(1)
    threaded = ThreadedSerializer(AvroSerializer(registry, USER), limiter=limiter)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for topic in ("a", "b"):  # two pairs: two first calls
                ctx = SerializationContext(topic, MessageField.VALUE, [])
                nursery.start_soon(threaded, user(0), ctx)
            await registry.registering.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert limiter.borrowed_tokens == 1
            assert limiter.statistics().tasks_waiting == 1
            registry.release.set()
    assert len(registry.threads) == 2


# ---- why: confluent's async stack under Trio ---------------------------------------------


class FakeRegistry:
    """Just enough Schema Registry over HTTP for a serializer's registration, in a thread.

    ``POST /subjects/{subject}/versions`` answers ``{"id": 1}`` after ``delay`` seconds;
    the first ``fail`` requests get a 503 instead.
    """

    def __init__(self, delay: float = 0.0, fail: int = 0) -> None:
        self.delay, self.fail = delay, fail
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                threading.Event().wait(owner.delay)
                if owner.fail > 0:
                    owner.fail -= 1
                    status, body = 503, {"error_code": 50301, "message": "unavailable"}
                else:
                    status, body = 200, {"id": 1}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that went away (a cancelled task): not this test's business

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeRegistry:
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def fake_registry() -> Iterator[FakeRegistry]:
    with FakeRegistry() as registry:
        yield registry


async def async_avro(url: str, **conf: Any) -> tuple[AsyncSchemaRegistryClient, Any]:
    client = AsyncSchemaRegistryClient({"url": url, **conf})
    serializer = await AsyncAvroSerializer(
        client, USER, conf={"subject.name.strategy.type": "TOPIC"}
    )
    return client, serializer


async def test_confluent_async_serializer_over_http_works_under_trio_alone(
    fake_registry: FakeRegistry,
) -> None:
    """One call at a time, no retry: httpx picks its Trio backend, and it works."""
    client, serializer = await async_avro(fake_registry.url)
    async with client:
        data = await serializer(user(0), SerializationContext("t", MessageField.VALUE, []))
    assert schema_id(data) == 1


async def test_confluent_async_serializer_fails_under_trio_on_a_concurrent_first_call(
    fake_registry: FakeRegistry,
) -> None:
    """Two tasks serialize the first message of a subject at once: the second one waits on
    the asyncio.Lock held across the registration request, which needs an asyncio loop.
    (If this starts passing, confluent fixed it: update docs/serialization.rst.)"""
    fake_registry.delay = 0.2
    client, serializer = await async_avro(fake_registry.url)
    ctx = SerializationContext("t", MessageField.VALUE, [])
    with pytest.raises(ExceptionGroup) as raised:
        async with client, trio.open_nursery() as nursery:
            nursery.start_soon(serializer, user(0), ctx)
            nursery.start_soon(serializer, user(1), ctx)
    (error,) = raised.value.exceptions
    assert isinstance(error, AttributeError)
    assert str(error) == "'NoneType' object has no attribute 'create_future'"


async def test_confluent_async_serializer_fails_under_trio_on_a_retry(
    fake_registry: FakeRegistry,
) -> None:
    """A 503 answer is retried after asyncio.sleep, which needs an asyncio loop."""
    fake_registry.fail = 1
    client, serializer = await async_avro(fake_registry.url, **{"retries.wait.ms": 1})
    async with client:
        with pytest.raises(RuntimeError, match=r"^no running event loop$"):
            await serializer(user(0), SerializationContext("t", MessageField.VALUE, []))


async def test_confluent_async_mock_registry_hides_both() -> None:
    """The async mock:// client never suspends: the concurrent first call passes there."""
    client = AsyncSchemaRegistryClient.new_client({"url": "mock://x"})
    serializer = await AsyncAvroSerializer(client, USER)
    ctx = SerializationContext("t", MessageField.VALUE, [])
    out: list[bytes] = []

    async def one(i: int) -> None:
        out.append(await serializer(user(i), ctx))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, 0)
        nursery.start_soon(one, 1)
    assert [schema_id(b) for b in out] == [1, 1]

"""A Trio app for the Ctrl-C-in-a-serializer tests: a serializer blocks, a SIGINT comes.

Usage: blocking_serializer.py BOOTSTRAP TOPIC KIND METHOD

KIND is the kind of serializer (see ``SERIALIZERS``); METHOD the send method that calls
it (``send``, ``send_and_wait``, ``send_nowait``, ``send_many``). The app sends ``a``,
``b`` and ``c`` with ``send`` (accepted), then ``block`` with METHOD: the serializer
blocks the Trio thread (or its worker thread) for ``BLOCK`` seconds on that one, and a
timer sends the process SIGINT 0.2 s after it started blocking. It prints one JSON line:
what left ``trio.run``, the seconds from the SIGINT to then, and the exception's notes.
"""

from __future__ import annotations

import signal

# A child of a shell's background job inherits SIGINT ignored; Trio only raises
# KeyboardInterrupt when SIGINT has Python's default handler.
signal.signal(signal.SIGINT, signal.default_int_handler)

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import trio  # noqa: E402
from confluent_kafka.serialization import SerializationContext, Serializer  # noqa: E402

from trio_producer import open_producer  # noqa: E402

BOOTSTRAP, TOPIC, KIND, METHOD = sys.argv[1:5]
BLOCK = 4.0
signalled: list[float] = []


def block_if_asked(obj: str) -> bytes:
    """``obj`` as bytes; for ``"block"``, first block for BLOCK s (in short sleeps, as a
    call that waits on a socket would), with a SIGINT due 0.2 s in."""
    if obj == "block":

        def interrupt() -> None:
            signalled.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)

        threading.Timer(0.2, interrupt).start()
        deadline = time.monotonic() + BLOCK
        while time.monotonic() < deadline:
            time.sleep(0.05)
    return obj.encode()


def plain(obj: str, topic: str, headers: Any) -> bytes:
    return block_if_asked(obj)


async def coroutine(obj: str, topic: str, headers: Any) -> bytes:
    await trio.lowlevel.checkpoint()
    return block_if_asked(obj)


class Confluent(Serializer):  # type: ignore[misc]
    def __call__(self, obj: str, ctx: SerializationContext | None = None) -> bytes:
        return block_if_asked(obj)


class ConfluentAsync(Serializer):  # type: ignore[misc]
    async def __call__(self, obj: str, ctx: SerializationContext | None = None) -> bytes:
        return block_if_asked(obj)


def threaded() -> Any:
    """ThreadedSerializer around a plain confluent serializer: every call in a thread."""
    from trio_producer.schema_registry import ThreadedSerializer

    return ThreadedSerializer(Confluent())


def registry_inline() -> Any:
    """ThreadedSerializer around an AvroSerializer (mock registry): the first call for the
    topic registers in a thread, the later ones (``block`` too) run on the Trio thread."""
    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer

    from trio_producer.schema_registry import ThreadedSerializer

    class BlockingAvro(AvroSerializer):  # type: ignore[misc]
        def __call__(self, obj: Any, ctx: SerializationContext | None = None) -> bytes | None:
            block_if_asked(obj)
            out: bytes | None = super().__call__(obj, ctx)
            return out

    registry = SchemaRegistryClient.new_client({"url": "mock://blocking-serializer"})
    return ThreadedSerializer(BlockingAvro(registry, '"string"'))


SERIALIZERS = {
    "plain": lambda: plain,
    "coroutine": lambda: coroutine,
    "confluent": Confluent,
    "confluent-async": ConfluentAsync,
    "threaded": threaded,
    "registry-inline": registry_inline,
}


async def main() -> None:
    async with open_producer(
        bootstrap_servers=BOOTSTRAP, value_serializer=SERIALIZERS[KIND](), close_timeout=10
    ) as producer:
        for value in ("a", "b", "c"):
            await producer.send(TOPIC, value)
        if METHOD == "send_many":
            await producer.send_many(TOPIC, ["block"])
        elif METHOD == "send_nowait":
            producer.send_nowait(TOPIC, "block")
        else:
            await getattr(producer, METHOD)(TOPIC, "block")
        print(json.dumps({"outcome": f"{METHOD} returned"}), flush=True)
        await trio.sleep(BLOCK + 5)  # a late KeyboardInterrupt lands here


try:
    trio.run(main)
except BaseException as exc:
    seconds = time.monotonic() - signalled[0] if signalled else None
    report = {"outcome": type(exc).__name__, "seconds": seconds}
    report["notes"] = getattr(exc, "__notes__", [])
    print(json.dumps(report), flush=True)

"""A producer with ``exactly_once=True``, for the kill -9 tests of
tests/broker/test_exactly_once_spool.py.

Usage: exactly_once_child.py JSON

JSON (an object): ``bootstrap``, ``topic``, ``spool``, ``tid`` (the transactional.id),
``run`` (the payloads' prefix), ``ledger`` (a file), ``count`` and, optional,
``keys`` (5), ``rate`` (messages per second, 0: as fast as ``send`` returns),
``commit_interval``, ``progress_topic``, ``close_timeout``, ``transaction_timeout``,
``librdkafka`` (more properties),
``big`` (indexes whose value is padded with ``b"."`` to ``big_size`` bytes),
``kill_step``, ``kill_nth`` and ``kill_delay`` (SIGKILL itself at the ``kill_nth``
occurrence of that step of the commit protocol, ``kill_delay`` seconds after it, the
Trio thread blocked meanwhile), ``flush`` (flush after the last send) and
``hold`` (after the sends, keep the producer open until stdin closes).

Sends ``count`` messages ``<run>:msg-<n>`` (n zero-padded to six digits) with key
``k<n % keys>``. The per-message accounting is an append-only ledger file, one
``write`` per line (a SIGKILL cannot tear one, nor lose one that was written):

* ``i <payload>`` before ``send`` (the intent; ``i <payload> <size>`` when padded),
* ``a <payload>`` after ``send`` returned: accepted,
* ``r <payload>`` after ``send`` raised: not accepted,
* ``h <payload> <error>`` when the ``on_delivery_error`` hook is given it.

stderr: the producer's log (INFO and up). stdout, one line each, flushed: ``start`` once
the imports are done (before ``open_producer``), ``open`` once the producer is open,
``step <name>`` at each step of the commit protocol, ``sent`` after the last send,
``flushed``, and at the end ``exit <json>``: how the block was left (the exception's
type, text, notes, the payloads of its ``failures`` with their errors,
``spool_path``) and the statistics (``delivered``).
"""

from __future__ import annotations

import signal

signal.signal(signal.SIGINT, signal.default_int_handler)

import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import trio  # noqa: E402

from trio_producer import DeliveryError, open_producer  # noqa: E402
from trio_producer.spool import _exactly_once  # noqa: E402

CFG: dict[str, Any] = json.loads(sys.argv[1])
# The producer's INFO lines (the recovery's "committed through seq ...") on stderr.
logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
logging.getLogger("trio_producer").setLevel(logging.INFO)
LEDGER = os.open(CFG["ledger"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def note(line: bytes) -> None:
    os.write(LEDGER, line + b"\n")  # O_APPEND, one write: whole lines only


def step_hook() -> None:
    kill_step = CFG.get("kill_step")
    kill_nth = int(CFG.get("kill_nth", 1))
    kill_delay = float(CFG.get("kill_delay", 0.0))
    seen: dict[str, int] = {}

    def hook(name: str) -> None:
        seen[name] = seen.get(name, 0) + 1
        out(f"step {name}")
        if name == kill_step and seen[name] == kill_nth:
            if kill_delay:
                time.sleep(kill_delay)  # librdkafka's threads go on meanwhile
            os.kill(os.getpid(), signal.SIGKILL)

    _exactly_once.STEP_HOOK = hook


def payload_of(value: bytes | None) -> bytes:
    return (value or b"").rstrip(b".")


def on_delivery_error(failure: DeliveryError) -> None:
    note(b"h %s %s" % (payload_of(failure.message.value), failure.error.name.encode()))


def describe(exc: BaseException | None) -> dict[str, Any]:
    if exc is None:
        return {"type": None}
    failures = getattr(exc, "failures", None) or ()
    return {
        "type": type(exc).__name__,
        "str": str(exc),
        "notes": list(getattr(exc, "__notes__", ())),
        "failures": [
            [payload_of(f.message.value).decode(), f.error.name]
            for f in failures
            if isinstance(f, DeliveryError)
        ],
        "spool_path": getattr(exc, "spool_path", None),
        "group": [describe(e) for e in exc.exceptions]
        if isinstance(exc, BaseExceptionGroup)
        else None,
    }


async def main() -> dict[str, Any]:
    count = int(CFG["count"])
    keys = int(CFG.get("keys", 5))
    rate = float(CFG.get("rate", 0))
    big = set(CFG.get("big", ()))
    big_size = int(CFG.get("big_size", 0))
    run = CFG["run"].encode()
    topic = CFG["topic"]
    options: dict[str, Any] = {}
    for name in ("commit_interval", "close_timeout", "transaction_timeout"):
        if name in CFG:
            options[name] = float(CFG[name])
    if "progress_topic" in CFG:
        options["exactly_once_topic"] = CFG["progress_topic"]
    stats = None
    exc: BaseException | None = None
    try:
        async with open_producer(
            bootstrap_servers=CFG["bootstrap"],
            spool_path=CFG["spool"],
            exactly_once=True,
            on_delivery_error=on_delivery_error,
            librdkafka={"transactional.id": CFG["tid"], **CFG.get("librdkafka", {})},
            **options,
        ) as producer:
            out("open")
            start = time.monotonic()
            for n in range(count):
                payload = b"%s:msg-%06d" % (run, n)
                value = payload
                if n in big:
                    value = payload.ljust(big_size, b".")
                    note(b"i %s %d" % (payload, big_size))
                else:
                    note(b"i %s" % payload)
                try:
                    await producer.send(topic, value, key=b"k%d" % (n % keys))
                except BaseException:
                    note(b"r %s" % payload)  # raised: not accepted
                    raise
                note(b"a %s" % payload)
                if rate and n % 10 == 9:
                    ahead = start + (n + 1) / rate - time.monotonic()
                    if ahead > 0:
                        await trio.sleep(ahead)
            out("sent")
            if CFG.get("flush"):
                await producer.flush()
                out("flushed")
            if CFG.get("hold"):
                await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
            stats = producer.statistics()
    except BaseException as raised:  # reported, then the exit status says it
        exc = raised
    report = describe(exc)
    if stats is not None:
        report["delivered"] = stats.delivered
    return report


step_hook()
out("start")
result = trio.run(main)
out("exit " + json.dumps(result))
sys.exit(0 if result["type"] is None else 1)

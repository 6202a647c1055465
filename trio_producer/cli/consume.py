"""``trio-producer consume``: read a topic to stdout, in the spirit of ``kcat -C``.

The consumer (``_admin.PartitionConsumer``) is assigned its partitions explicitly: no
group join (slow on some brokers), no commits. It is polled from one worker thread with
short timeouts, so a signal ends the run within a fraction of a second.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
import click
import trio

from .._admin import ConsumeError, PartitionConsumer, PartitionEnd, StartAt
from .._message import ConsumedRecord
from .._signals import cancel_on_signals
from ._common import fail, say, signal_name
from ._options import (
    bootstrap_option,
    dump_requested,
    kcat_escapes,
    kcat_options,
    librdkafka_options,
    librdkafka_properties,
    print_properties,
    verbose_option,
)

#: How long one poll waits in the worker thread: a signal is seen within this.
_POLL_SECONDS = 0.2
_POLL_RECORDS = 10_000


def _headers(record: ConsumedRecord) -> bytes:
    pairs = record.headers or []
    return b",".join(name.encode() + b"=" + (value or b"") for name, value in pairs)


#: kcat's ``-f`` tokens.
_TOKENS: dict[str, Callable[[ConsumedRecord], bytes]] = {
    "t": lambda r: r.topic.encode(),
    "p": lambda r: b"%d" % r.partition,
    "o": lambda r: b"%d" % r.offset,
    "k": lambda r: r.key or b"",
    "s": lambda r: r.value or b"",
    "h": _headers,
    "T": lambda r: b"%d" % (-1 if r.timestamp is None else r.timestamp),
    "S": lambda r: b"%d" % (-1 if r.value is None else len(r.value)),
    "K": lambda r: b"%d" % (-1 if r.key is None else len(r.key)),
}

Piece = bytes | Callable[[ConsumedRecord], bytes]


def compile_format(text: str) -> list[Piece]:
    """kcat's ``-f``: ``%t %p %o %k %s %h %T %S %K`` (and ``%%``), ``\\n \\t ...``."""
    text = kcat_escapes(text, "-f")
    pieces: list[Piece] = []
    literal = ""
    i = 0
    while i < len(text):
        if text[i] != "%":
            literal += text[i]
            i += 1
            continue
        token = text[i + 1 : i + 2]
        if token == "%":
            literal += "%"
        elif token in _TOKENS:
            if literal:
                pieces.append(literal.encode())
                literal = ""
            pieces.append(_TOKENS[token])
        else:
            known = " ".join(f"%{t}" for t in _TOKENS)
            fail(f"-f: unknown token %{token or ''} in {text!r} (known: {known} %%)", 2)
        i += 2
    if literal:
        pieces.append(literal.encode())
    return pieces


def render(pieces: list[Piece], record: ConsumedRecord) -> bytes:
    return b"".join(p if isinstance(p, bytes) else p(record) for p in pieces)


@attrs.define
class ConsumeRun:
    """What one ``consume`` run reads, and where it stops."""

    consumer: PartitionConsumer
    pieces: list[Piece]
    #: ``-c``: stop after this many records.
    count: int | None
    #: ``-e``: stop once every assigned partition has reached its end.
    exit_at_end: bool
    #: ``-E``: log non-fatal errors instead of stopping.
    keep_going: bool
    consumed: int = 0
    #: The partitions not yet at their end (``-e``).
    open_partitions: set[int] = attrs.Factory(set)
    interrupted: str | None = None
    #: Why the consumer failed, if it did.
    error: str | None = None

    def done(self) -> bool:
        if self.count is not None and self.consumed >= self.count:
            return True
        return self.exit_at_end and not self.open_partitions

    def take(self, items: list[ConsumedRecord | PartitionEnd]) -> None:
        out = sys.stdout.buffer
        for item in items:
            if self.done():
                break
            if isinstance(item, PartitionEnd):
                self.open_partitions.discard(item.partition)
                continue
            out.write(render(self.pieces, item))
            self.consumed += 1
        out.flush()

    async def run(self) -> None:
        while not self.done():
            items = await trio.to_thread.run_sync(
                partial(
                    self.consumer.poll, _POLL_RECORDS, _POLL_SECONDS, keep_going=self.keep_going
                )
            )
            self.take(items)

    def on_signal(self, signum: int, count: int) -> None:
        if count == 1:
            self.interrupted = signal_name(signum)
            say(f"{self.interrupted}: stopped")


async def run_consume(run: ConsumeRun, topic: str, partition: int | None, start: StartAt) -> None:
    """Read until the count, the end (``-e``), or SIGINT/SIGTERM; close the consumer."""
    try:
        with trio.CancelScope() as reading:
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(cancel_on_signals, reading, on_signal=run.on_signal))
                assign = partial(run.consumer.assign, topic, partition, start)
                try:  # caught here: not in the nursery's exception group
                    run.open_partitions = set(await trio.to_thread.run_sync(assign))
                    await run.run()
                except ConsumeError as exc:
                    run.error = str(exc)
                nursery.cancel_scope.cancel(reason="done")
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(run.consumer.close)


def _start(offset: str) -> StartAt:
    if offset in ("beginning", "end"):
        return offset  # type: ignore[return-value]
    try:
        return int(offset)
    except ValueError:
        fail(f"-o must be beginning, end, N or -N (N before the end), not {offset!r}", 2)


def _consume_command(**options: Any) -> None:
    """Read a topic to stdout, one line per message (kcat -C).

    Partitions are assigned explicitly (no consumer group, nothing committed). It stops
    after -c COUNT messages, at the end of every partition with -e, or on SIGINT or
    SIGTERM, and ends with `consumed=N` on stderr. Exit status: 0 when it stopped as
    asked (also on a signal), 1 when the consumer failed, 2 for a usage or
    configuration error.
    """
    code = consume(**options)
    if code:
        raise SystemExit(code)


def consume(
    *,
    bootstrap_servers: str | None,
    topic: str,
    partition: int | None,
    offset: str,
    count: int | None,
    exit_at_end: bool,
    fmt: str | None,
    key_delimiter: str | None,
    isolation: str,
    props: tuple[str, ...],
    config_files: tuple[str, ...],
    kcat_consume: bool,
    keep_going: bool,
) -> int:
    start = _start(offset)
    if fmt is None:
        fmt = "%s\\n" if key_delimiter is None else "%k" + key_delimiter + "%s\\n"
    elif key_delimiter is not None:
        fail("-K and -f do not go together: put the delimiter in the -f format", 2)
    pieces = compile_format(fmt)
    props, dump = dump_requested(props)
    bootstrap, librdkafka = librdkafka_properties(bootstrap_servers, config_files, props)
    if dump:
        print_properties({"bootstrap.servers": bootstrap, **librdkafka})
        return 0
    try:
        consumer = PartitionConsumer(
            bootstrap, librdkafka, isolation_level=isolation, partition_eof=exit_at_end
        )
    except ConsumeError as exc:
        fail(str(exc), 2)
    run = ConsumeRun(consumer, pieces, count, exit_at_end, keep_going)
    trio.run(run_consume, run, topic, partition, start)
    if run.error is not None:
        say(f"error: {run.error}")
    print(f"consumed={run.consumed}", file=sys.stderr, flush=True)
    return 0 if run.error is None else 1


_OPTIONS = [
    bootstrap_option(),
    click.option("-t", "--topic", required=True),
    click.option("-p", "--partition", type=click.IntRange(min=0), help="Only this partition."),
    click.option(
        "-o",
        "--offset",
        default="beginning",
        show_default=True,
        help="beginning, end, N (that offset) or -N (N messages before the end).",
    ),
    click.option(
        "-c", "--count", type=click.IntRange(min=1), help="Stop after this many messages."
    ),
    click.option("-e", "exit_at_end", is_flag=True, help="Stop at the end of every partition."),
    click.option(
        "-f",
        "--format",
        "fmt",
        metavar="FORMAT",
        help="kcat's tokens: %t topic, %p partition, %o offset, %k key, %s value, "
        "%h headers, %T timestamp (ms), %S value size, %K key size; \\n \\t escapes. "
        "Default: %s\\n.",
    ),
    click.option(
        "-K",
        "--key-delimiter",
        metavar="DELIM",
        help="Print the key, DELIM, then the value (a format of %kDELIM%s\\n).",
    ),
    click.option(
        "--isolation",
        type=click.Choice(["read_uncommitted", "read_committed"]),
        default="read_uncommitted",
        show_default=True,
        help="Whether to show messages of open or aborted transactions.",
    ),
    librdkafka_options("consumer"),
    verbose_option(),
    click.option("-C", "kcat_consume", is_flag=True, hidden=True),  # kcat's mode: a no-op
    click.option("-E", "keep_going", is_flag=True, help="Go on after a non-fatal consumer error."),
    kcat_options(consume=True),
]


def command() -> click.Command:
    """The ``consume`` command."""
    function: Any = _consume_command
    for decorator in reversed(_OPTIONS):
        function = decorator(function)
    return click.command("consume")(function)

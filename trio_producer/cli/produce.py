"""``trio-producer produce``: one message per line of stdin or of files."""

from __future__ import annotations

import signal
import sys
import time
from contextlib import AsyncExitStack
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import attrs
import click
import trio

from .._config import ProducerConfig
from .._exceptions import (
    KafkaFatalError,
    TrioProducerError,
    UndeliveredMessagesError,
)
from .._lifecycle import open_producer
from .._signals import cancel_on_signals
from ._common import PROG, fail
from ._lines import LineFormat, LineReader, ReadStop, open_inputs
from ._logging import unreachable_hint
from ._options import (
    bootstrap_option,
    dump_requested,
    kcat_escapes,
    kcat_options,
    librdkafka_options,
    librdkafka_properties,
    pairs,
    print_properties,
    reader_properties,
    verbose_option,
)
from ._report import ProduceResult, report
from ._shutdown import Shutdown

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .._producer import Producer


async def _give_up_when_unreachable(producer: Producer, seconds: float) -> None:
    """--connect-timeout: abort the producer once the cluster has been unreachable for
    ``seconds`` (what was read is handed back, exit 1)."""
    connectivity = producer._tracker.hooks.connectivity
    while True:
        await trio.sleep(min(0.2, seconds))
        since = connectivity.unreachable_since
        if since is not None and time.monotonic() - since >= seconds:
            producer.abort(f"the cluster was unreachable for {seconds:g} s (--connect-timeout)")
            return


async def _progress(producer: Producer, result: ProduceResult, scope: trio.CancelScope) -> None:
    from rich.console import Console

    console = Console(stderr=True)
    start = time.monotonic()
    try:
        with scope:
            while True:
                await trio.sleep(0.5)
                delivered = producer.statistics().delivered
                rate = delivered / max(time.monotonic() - start, 1e-9)
                console.print(
                    f"read {result.read}  sent {result.sent}  delivered {delivered}  "
                    f"({rate:,.0f} msg/s)",
                    end="\r",
                    highlight=False,
                )
    finally:
        console.print(" " * 70, end="\r")


async def _send_lines(
    producer: Producer,
    topic: str,
    fmt: LineFormat,
    readers: Sequence[LineReader],
    result: ProduceResult,
    stop: ReadStop,
) -> None:
    """One message per line, file after file, until the last EOF or ``stop``. The lines
    read are sent even after ``stop`` (see :class:`ReadStop`); when the sending ends
    early (the drain cut short, the producer failing), the lines read but not sent go
    to ``result.unsent``, and the files not started to ``result.unread_files``."""
    chunk: list[bytes] = []
    done = 0  # lines of ``chunk`` sent or rejected
    started = 0  # readers started
    reader: LineReader | None = None
    try:
        with stop.sending:
            for reader in readers:
                if stop.stopped:
                    break
                started += 1
                async for chunk in reader.chunks(stop):
                    done = 0
                    for line in chunk:
                        await _send_line(producer, topic, fmt, line, result)
                        done += 1
                    await trio.lowlevel.checkpoint()
    finally:
        result.unsent = chunk[done:]
        result.read += len(result.unsent)
        result.unread_files = [r.name for r in readers[started:]]
        if reader is not None:
            result.partial_line, reader.partial = reader.partial, b""


async def _send_line(
    producer: Producer, topic: str, fmt: LineFormat, line: bytes, result: ProduceResult
) -> None:
    try:
        kwargs = fmt.parse(line)
        try:
            producer.send_nowait(topic, **kwargs)
        except trio.WouldBlock:
            await producer.send(topic, **kwargs)
    except (ValueError, TypeError) as exc:
        result.rejected.append((line, str(exc)))
    else:
        result.sent += 1
    result.read += 1


async def run_produce(
    config: ProducerConfig,
    topic: str,
    readers: Sequence[LineReader],
    fmt: LineFormat,
    *,
    progress: bool = False,
    connect_timeout: float | None = None,
) -> ProduceResult:
    """Produce one message per line of each reader in turn; stop after the last EOF,
    or on SIGINT or SIGTERM. Closes every reader's stream.

    The first signal stops the reading and the producer drains; a signal while it
    drains cuts the drain short (``result.cut_short``).
    """
    async with AsyncExitStack() as streams_open:
        for reader in readers:
            await streams_open.enter_async_context(reader.stream)
        return await _produce(
            config, topic, readers, fmt, progress=progress, connect_timeout=connect_timeout
        )
    raise AssertionError("unreachable")  # pragma: no cover - AsyncExitStack could swallow


async def _produce(
    config: ProducerConfig,
    topic: str,
    readers: Sequence[LineReader],
    fmt: LineFormat,
    *,
    progress: bool,
    connect_timeout: float | None = None,
) -> ProduceResult:
    result = ProduceResult()
    producer: Producer | None = None
    shutdown: Shutdown | None = None
    setup_error: TrioProducerError | None = None
    stop = ReadStop()
    async with trio.open_nursery() as watchers:
        progress_scope = trio.CancelScope()
        try:
            async with open_producer(config, on_delivery_error=result.failed.append) as producer:
                shutdown = Shutdown(producer, result, config.close_timeout, stop)
                # Started once the producer is open: a signal before that has its default
                # effect (nothing was read yet); from here until the producer has closed,
                # SIGINT and SIGTERM are handled (even when SIGINT was ignored). The first
                # one stops the reading through ``on_signal`` (``stop``), not by cancelling
                # the sending: the scope given here surrounds nothing.
                await watchers.start(
                    partial(cancel_on_signals, trio.CancelScope(), on_signal=shutdown.on_signal)
                )
                if progress:
                    watchers.start_soon(_progress, producer, result, progress_scope)
                if connect_timeout is not None:
                    watchers.start_soon(_give_up_when_unreachable, producer, connect_timeout)
                await _send_lines(producer, topic, fmt, readers, result, stop)
                progress_scope.cancel(reason="the reading has stopped")
                shutdown.start_drain(watchers)
        except (UndeliveredMessagesError, KafkaFatalError) as exc:
            result.undelivered = list(exc.messages)
            result.error = unreachable_hint(config.bootstrap_servers) + str(exc)
        except TrioProducerError as exc:  # ConfigError at open: raised below, not grouped
            setup_error = exc
        except KeyboardInterrupt:
            # Ctrl-C outside the signal helper's watch (as the producer opened): the
            # producer drained, cut short; what it did not deliver is handed back here.
            if result.cut_short is None:
                result.cut_short = signal.SIGINT
            if producer is not None:
                result.undelivered = [failure.message for failure in producer.undelivered]
        finally:
            if shutdown is not None:
                shutdown.closed = True
            watchers.cancel_scope.cancel(reason="done")
            if producer is not None:
                stats = producer.statistics()
                # With --spool, what an earlier run left is sent first and counted apart.
                recovered = min(stats.recovered, stats.delivered)
                result.delivered = stats.delivered - recovered
                if stats.recovered:
                    print(
                        f"{PROG}: {stats.recovered} line(s) an earlier run left in the spool "
                        f"were sent first ({recovered} delivered)",
                        file=sys.stderr,
                    )
    if setup_error is not None:
        raise setup_error
    return result


@attrs.frozen
class ProduceOptions:
    """The command line of ``produce``, as click parsed it."""

    bootstrap_servers: str | None
    topic: str
    paths: tuple[str, ...]
    lines_of_files: bool
    files: tuple[str, ...]
    kcat_produce: bool
    kcat_delimiter: str | None
    kcat_tee: bool
    kcat_count: str | None
    key_separator: str | None
    key: str | None
    partition: int | None
    null_empty: bool
    headers: tuple[str, ...]
    jsonl: bool
    compression: str | None
    linger: float
    batch_max_messages: int
    close_timeout: float
    props: tuple[str, ...]
    config_files: tuple[str, ...]
    reader_props: tuple[str, ...]
    undelivered_path: str | None
    progress: bool | None
    spool_path: str | None
    exactly_once: bool
    delivery_reports: Literal["all", "errors"]
    connect_timeout: float | None


def _input_paths(opts: ProduceOptions) -> tuple[str, ...]:
    """``--file`` and ``-l FILE...``, in that order; kcat's flags that are not supported
    are refused here."""
    unsupported = {
        "-D": (opts.kcat_delimiter, "one message per line; --jsonl for values with newlines"),
        "-T": (opts.kcat_tee, "no echo of the messages to stdout"),
        "-c": (opts.kcat_count, "to send the first N lines: head -n N | trio-producer produce"),
    }
    for flag, (given, hint) in unsupported.items():
        if given:
            fail(f"kcat's {flag} is not supported: {hint}", 2)
    if opts.files and not opts.lines_of_files:
        fail(
            "a FILE argument is sent line by line only with -l (kcat sends a whole "
            "file as one message, which is not supported): -l FILE... or --file FILE",
            2,
        )
    paths = opts.paths + opts.files
    if paths.count("-") > 1:
        fail("--file - (stdin) can be given once", 2)
    return paths


def _line_format(opts: ProduceOptions) -> LineFormat:
    key_separator = opts.key_separator
    require_key = False
    if opts.reader_props:
        if key_separator is not None:
            fail("-K and --property parse.key/key.separator do not go together", 2)
        key_separator, require_key = reader_properties(opts.reader_props)
    if key_separator is not None and opts.jsonl:
        fail("--key-separator and --jsonl do not go together", 2)
    if key_separator == "":
        fail("--key-separator must not be empty", 2)
    if key_separator is not None and not opts.reader_props:
        key_separator = kcat_escapes(key_separator, "-K")
    partition = opts.partition
    return LineFormat(
        key_separator=key_separator.encode() if key_separator is not None else None,
        headers=tuple((n, v.encode()) for n, v in pairs(opts.headers, "-H")),
        jsonl=opts.jsonl,
        key=opts.key.encode() if opts.key is not None else None,
        partition=None if partition is None or partition < 0 else partition,
        empty_is_null=opts.null_empty,
        require_key=require_key,
    )


def _config(opts: ProduceOptions, props: Sequence[str]) -> ProducerConfig:
    bootstrap_servers, librdkafka = librdkafka_properties(
        opts.bootstrap_servers, opts.config_files, props
    )
    if opts.exactly_once and opts.spool_path is None:
        fail(
            "--exactly-once needs --spool DIR: the spool's positions are what each "
            "transaction commits",
            2,
        )
    if librdkafka.get("transactional.id") and not opts.exactly_once:
        fail(
            "transactional.id: produce does not run transactions (kcat runs the whole "
            "input as one); leave transactional.id out (each line is then delivered at "
            "least once, or reported undelivered), add --spool DIR to keep accepted lines "
            "across a crash (with --exactly-once, delivered exactly once across crashes), "
            "or use the Python API's producer.transaction()",
            2,
        )
    if opts.compression is not None:
        librdkafka.pop("compression.codec", None)
        librdkafka["compression.type"] = opts.compression
    return ProducerConfig(
        bootstrap_servers=bootstrap_servers,
        linger=opts.linger,
        batch_max_messages=opts.batch_max_messages,
        close_timeout=opts.close_timeout,
        librdkafka=librdkafka,
        spool_path=opts.spool_path,
        exactly_once=opts.exactly_once,
        delivery_reports=opts.delivery_reports,
    )


def run_command(opts: ProduceOptions) -> int:
    """Check the command line, produce, report; the exit status."""
    paths = _input_paths(opts)
    fmt = _line_format(opts)
    props, dump = dump_requested(opts.props)
    config = _config(opts, props)
    if dump:
        print_properties(dict(config.librdkafka_config()))
        return 0
    readers = open_inputs(paths)
    progress = opts.progress
    if progress is None:  # not over what the user types on a terminal
        typing = (not paths or "-" in paths) and sys.stdin.isatty()
        progress = sys.stderr.isatty() and not typing
    result = trio.run(
        partial(
            run_produce,
            config,
            opts.topic,
            readers,
            fmt,
            progress=progress,
            connect_timeout=opts.connect_timeout,
        )
    )
    return report(result, fmt, opts.undelivered_path)


def _produce_command(**options: Any) -> None:
    """Produce one message per line of stdin (or of each --file or -l FILE in turn).

    On EOF, SIGINT or SIGTERM it stops reading, drains (at most --close-timeout) and
    exits with a summary line `sent=N delivered=N rejected=N failed=N undelivered=N`
    on stderr. A second SIGINT/SIGTERM cuts the drain short. Exit status: 0 when
    every line read was delivered, 1 when some were not (they go to --undelivered
    FILE or are named on stderr), 130 / 143 when a SIGINT / SIGTERM cut the drain
    short, 2 for a usage or configuration error.
    """
    code = run_command(ProduceOptions(**options))
    if code:
        raise SystemExit(code)


#: ``produce``'s options, in the order ``--help`` shows them.
_OPTIONS = [
    bootstrap_option(),
    click.option("-t", "--topic", required=True),
    click.option(
        "--file",
        "paths",
        multiple=True,
        type=click.Path(dir_okay=False, allow_dash=True),
        help="Read this file, not stdin (repeatable: in the order given; - is stdin).",
    ),
    click.option(
        "-l",
        "lines_of_files",
        is_flag=True,
        help="Read the FILES arguments line by line (kcat -l): as --file.",
    ),
    click.argument("files", nargs=-1, type=click.Path(dir_okay=False, allow_dash=True)),
    click.option("-P", "kcat_produce", is_flag=True, hidden=True),  # kcat's mode: a no-op
    click.option("-D", "kcat_delimiter", hidden=True),
    click.option("-T", "kcat_tee", is_flag=True, hidden=True),
    click.option("-c", "kcat_count", hidden=True),
    click.option(
        "-K", "--key-separator", metavar="SEP", help="The part of a line before SEP is the key."
    ),
    click.option(
        "-k", "--key", metavar="KEY", help="The key of every message whose line gives none."
    ),
    click.option(
        "-p",
        "--partition",
        type=click.IntRange(min=-1),
        help="Send to this partition (-1: the partitioner, the default).",
    ),
    click.option("-Z", "--null-empty", is_flag=True, help="Send an empty value or key as null."),
    click.option(
        "-H",
        "--header",
        "headers",
        multiple=True,
        metavar="NAME=VALUE",
        help="name=value, on every message.",
    ),
    click.option(
        "--jsonl", is_flag=True, help='Lines are JSON: {"value":..,"key":..,"headers":{..}}.'
    ),
    click.option(
        "-z",
        "--compression",
        type=click.Choice(["none", "gzip", "snappy", "lz4", "zstd"]),
        help="Compression codec (librdkafka compression.type).",
    ),
    click.option("--linger", type=float, default=0.005, show_default=True, help="Seconds."),
    click.option("--batch-max-messages", type=int, default=10_000, show_default=True),
    click.option("--close-timeout", type=float, default=30.0, show_default=True, help="Seconds."),
    librdkafka_options("producer"),
    click.option(
        "--property",
        "reader_props",
        multiple=True,
        metavar="NAME=VALUE",
        help="kafka-console-producer's parse.key=true, key.separator=SEP, ignore.error=true.",
    ),
    click.option(
        "--undelivered",
        "undelivered_path",
        type=click.Path(dir_okay=False),
        help="Write lines that were not delivered to this file.",
    ),
    click.option(
        "--progress/--no-progress",
        default=None,
        help="A progress line on stderr (default: when stderr is a terminal and stdin is not).",
    ),
    click.option(
        "--spool",
        "spool_path",
        type=click.Path(file_okay=False),
        help="A durable spool directory: every line read is on disk before it counts as "
        "sent; what was not delivered stays there for the next run (sent first).",
    ),
    click.option(
        "--exactly-once",
        is_flag=True,
        default=False,
        help="With --spool and -X transactional.id=ID: each line is delivered exactly once "
        "across crashes (transactions that commit the spool's position; consumers read "
        "with isolation.level=read_committed).",
    ),
    click.option(
        "--delivery-reports",
        type=click.Choice(["all", "errors"]),
        default="all",
        show_default=True,
        help="'errors': librdkafka reports failures only (faster; not with --spool).",
    ),
    click.option(
        "--connect-timeout",
        type=click.FloatRange(min=0, min_open=True),
        help="Give up (exit 1) once the cluster has been unreachable this many seconds.",
    ),
    verbose_option(),
    kcat_options(),
]


def command() -> click.Command:
    """The ``produce`` command."""
    function: Any = _produce_command
    for decorator in reversed(_OPTIONS):
        function = decorator(function)
    return click.command("produce")(function)

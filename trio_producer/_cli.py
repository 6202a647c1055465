"""The ``trio-producer`` command line: produce from stdin, a self-checking demo, a broker."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn

import attrs
import trio

from ._config import ProducerConfig
from ._exceptions import (
    DeliveryError,
    KafkaFatalError,
    TrioProducerError,
    UndeliveredMessagesError,
)
from ._producer import Producer, open_producer
from ._signals import cancel_on_signals
from .testing._admin import consume_all, create_topics

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    import click as click_types

    from ._message import Message

PROG = "trio-producer"
_CHUNK = 1 << 16


class CliError(Exception):
    """An error to print on one line, with an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _fail(message: str, code: int = 1) -> NoReturn:
    raise CliError(message, code)


def _pairs(values: Sequence[str], what: str) -> list[tuple[str, str]]:
    out = []
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name:
            _fail(f"{what} must look like name=value, not {value!r}", 2)
        out.append((name, rest))
    return out


# ---- produce ----------------------------------------------------------------------------


@attrs.define
class ProduceResult:
    read: int = 0
    sent: int = 0
    delivered: int = 0
    failed: list[DeliveryError] = attrs.Factory(list)
    rejected: list[tuple[bytes, str]] = attrs.Factory(list)
    undelivered: list[Message] = attrs.Factory(list)
    #: Lines read but never sent: the reading stopped in the middle of a chunk.
    unsent: list[bytes] = attrs.Factory(list)
    #: The signal that stopped the reading (its name), if one did.
    interrupted: str | None = None
    #: The signal that cut the drain short (its number), if one did.
    cut_short: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.delivered == self.read and not (
            self.failed or self.rejected or self.undelivered or self.unsent
        )

    @property
    def exit_status(self) -> int:
        """0: every line read was delivered; 1: some were not; 128 + N: signal N cut the
        drain short (130 for SIGINT, 143 for SIGTERM)."""
        if self.cut_short is not None:
            return 128 + self.cut_short
        return 0 if self.ok else 1

    def summary(self) -> str:
        return (
            f"sent={self.sent} delivered={self.delivered} "
            f"failed={len(self.failed) + len(self.rejected)} "
            f"undelivered={len(self.undelivered) + len(self.unsent)}"
        )


@attrs.frozen
class LineFormat:
    key_separator: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    jsonl: bool

    def parse(self, line: bytes) -> dict[str, Any]:
        """One input line to ``send`` keyword arguments (raises ValueError)."""
        headers: list[tuple[str, bytes | str | None]] = list(self.headers)
        if self.jsonl:
            obj = json.loads(line)
            if not isinstance(obj, dict) or "value" not in obj:
                raise ValueError('a JSON line must be an object with a "value" field')
            extra = obj.get("headers") or {}
            if not isinstance(extra, dict):
                raise ValueError('"headers" must be an object of strings')
            headers += list(extra.items())
            partition = obj.get("partition")
            return {
                "value": obj["value"],
                "key": obj.get("key"),
                "headers": headers or None,
                "partition": partition,
            }
        key = None
        value = line
        if self.key_separator is not None:
            head, sep, rest = line.partition(self.key_separator)
            if sep:
                key, value = head, rest
        return {"value": value, "key": key, "headers": headers or None, "partition": None}

    def unparse(self, message: Message) -> bytes:
        """A handed-back message as an input line again (for ``--undelivered``)."""
        value = message.value or b""
        if self.jsonl:
            obj: dict[str, Any] = {"value": value.decode(errors="replace")}
            if message.key is not None:
                obj["key"] = message.key.decode(errors="replace")
            own = [(n, v) for n, v in (message.headers or []) if (n, v) not in self.headers]
            if own:
                obj["headers"] = {n: (v or b"").decode(errors="replace") for n, v in own}
            return json.dumps(obj).encode()
        if self.key_separator is not None and message.key is not None:
            return message.key + self.key_separator + value
        return value


@attrs.define(eq=False)
class _LineReader:
    """Complete lines from a stream, a chunk at a time (a last line without newline counts).

    ``partial`` is what was read after the last newline, not yet a line: when the reading
    stops early (a signal), it was read but will not be sent.
    """

    stream: trio.abc.ReceiveStream
    partial: bytes = b""

    async def chunks(self) -> AsyncIterator[list[bytes]]:
        while True:
            chunk = await self.stream.receive_some(_CHUNK)
            if not chunk:
                break
            parts = (self.partial + chunk).split(b"\n")
            self.partial = parts.pop()
            if parts:
                yield parts
        if self.partial:
            last, self.partial = self.partial, b""
            yield [last]


def _say(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr, flush=True)


def _signal_name(signum: int) -> str:
    return signal.Signals(signum).name


@attrs.define(eq=False)
class _Shutdown:
    """How a ``produce`` run stops: what each signal does, and what the drain says.

    The first SIGINT/SIGTERM while reading stops the reading (``cancel_on_signals``
    cancels ``read_scope``): the producer drains. A signal while it drains (the second
    one, or the first one after EOF) cuts the drain short: ``Producer.abort``.
    """

    producer: Producer
    result: ProduceResult
    close_timeout: float
    reading: bool = True
    closed: bool = False
    #: The "draining: ..." lines; cancelled when the drain is cut short.
    report_scope: trio.CancelScope = attrs.Factory(trio.CancelScope)

    def left(self) -> int:
        stats = self.producer.statistics()
        return stats.queued + stats.in_flight

    def on_signal(self, signum: int, count: int) -> None:
        """``cancel_on_signals``' ``on_signal``: called before the helper acts on it."""
        name = _signal_name(signum)
        if self.closed:
            return  # the producer has closed: nothing left to stop
        if self.result.cut_short is not None:
            _say(f"{name}: already cutting the drain short")
            return
        if count == 1 and self.reading:
            self.result.interrupted = name
            _say(f"{name}: stopped reading, draining")
            return
        # A signal while draining: the helper aborts every open producer on the second
        # signal; after EOF the first signal is already one "while draining".
        self.result.cut_short = signum
        self.report_scope.cancel(reason=f"received {name}")
        _say(f"{name}: cutting the drain short ({self.left()} message(s) left)")
        if count == 1:
            self.producer.abort(f"received {name} while draining")

    async def report_drain(self, deadline: float, delay: float, hint: str) -> None:
        """Say how many messages are left about once a second until the producer closes."""
        with self.report_scope:
            await trio.sleep(delay)
            while True:
                left = self.left()
                if left:
                    until = max(0.0, deadline - trio.current_time())
                    _say(
                        f"draining: {left} message(s) left, {until:.0f} s until "
                        f"close_timeout ({hint})"
                    )
                await trio.sleep(1.0)

    def start_drain(self, nursery: trio.Nursery) -> None:
        """The reading has stopped (EOF or a signal); the drain begins."""
        self.reading = False
        deadline = trio.current_time() + self.close_timeout
        first = self.result.interrupted
        if first is None:  # EOF: say something only when the drain takes a while
            nursery.start_soon(self.report_drain, deadline, 1.0, "Ctrl-C to stop now")
        else:
            again = "Ctrl-C" if first == "SIGINT" else first
            nursery.start_soon(self.report_drain, deadline, 0.0, f"{again} again to stop now")


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
    producer: Producer, topic: str, fmt: LineFormat, reader: _LineReader, result: ProduceResult
) -> None:
    """One message per line until EOF. When the reading stops early (a signal, or the
    producer failing), the lines read but not sent go to ``result.unsent``."""
    chunk: list[bytes] = []
    done = 0  # lines of ``chunk`` sent or rejected
    try:
        async for chunk in reader.chunks():
            done = 0
            for line in chunk:
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
                done += 1
            await trio.lowlevel.checkpoint()
    finally:
        result.unsent = chunk[done:] + ([reader.partial] if reader.partial else [])
        result.read += len(result.unsent)


async def run_produce(
    config: ProducerConfig,
    topic: str,
    stream: trio.abc.ReceiveStream,
    fmt: LineFormat,
    *,
    progress: bool = False,
) -> ProduceResult:
    """Produce one message per line of ``stream``; stop on EOF, SIGINT or SIGTERM.

    The first signal stops the reading and the producer drains; a signal while it
    drains cuts the drain short (``result.cut_short``).
    """
    result = ProduceResult()
    producer: Producer | None = None
    shutdown: _Shutdown | None = None
    setup_error: TrioProducerError | None = None
    async with stream, trio.open_nursery() as watchers:
        read_scope = trio.CancelScope()
        progress_scope = trio.CancelScope()
        try:
            async with open_producer(config, on_delivery_error=result.failed.append) as producer:
                shutdown = _Shutdown(producer, result, config.close_timeout)
                # Started once the producer is open: a signal before that has its default
                # effect (nothing was read yet); from here until the producer has closed,
                # SIGINT and SIGTERM are handled (even when SIGINT was ignored).
                await watchers.start(
                    partial(cancel_on_signals, read_scope, on_signal=shutdown.on_signal)
                )
                if progress:
                    watchers.start_soon(_progress, producer, result, progress_scope)
                with read_scope:
                    await _send_lines(producer, topic, fmt, _LineReader(stream), result)
                progress_scope.cancel(reason="the reading has stopped")
                shutdown.start_drain(watchers)
        except (UndeliveredMessagesError, KafkaFatalError) as exc:
            result.undelivered = list(exc.messages)
            result.error = _unreachable_hint(config.bootstrap_servers) + str(exc)
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
                result.delivered = producer.statistics().delivered
    if setup_error is not None:
        raise setup_error
    return result


def _open_input(path: str | None) -> trio.lowlevel.FdStream:
    """stdin or a file as a Trio stream (reads are cancellable, no thread)."""
    if path is None:
        return trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    return trio.lowlevel.FdStream(os.open(path, os.O_RDONLY))


#: Undelivered lines are named on stderr one by one up to these limits; beyond them
#: (without --undelivered) they all go to a new file in the temporary directory.
_NAME_AT_MOST_LINES = 20
_NAME_AT_MOST_BYTES = 4096


def _shorten(line: bytes, width: int = 80) -> str:
    text = line.decode(errors="replace")
    return text if len(text) <= width else f"{text[: width - 3]}..."


def _keep_lost_lines(lines: list[bytes], path: str | None) -> None:
    """Hand the lines that were not delivered back to the user: a file, or stderr."""
    written_by_us = False
    if path is None and (
        len(lines) > _NAME_AT_MOST_LINES or sum(map(len, lines)) > _NAME_AT_MOST_BYTES
    ):
        # Too many to read on a terminal, too precious to drop: a file of our own.
        try:
            fd, path = tempfile.mkstemp(prefix=f"{PROG}-undelivered-", suffix=".txt")
            os.close(fd)
        except OSError:
            path = None
        else:
            written_by_us = True
            for line in lines[:3]:
                _say(f"undelivered: {_shorten(line)}")
            if len(lines) > 3:
                _say(f"undelivered: ... and {len(lines) - 3} more")
    if path is None:
        for line in lines:
            _say(f"undelivered: {line.decode(errors='replace')}")
        return
    with open(path, "wb") as out:
        for line in lines:
            out.write(line + b"\n")
    hint = " (--undelivered FILE to choose the file)" if written_by_us else ""
    _say(f"{len(lines)} line(s) not delivered, written to {path}{hint}")


def _report(result: ProduceResult, fmt: LineFormat, undelivered_path: str | None) -> int:
    """Print what happened (the summary line last); return the exit status."""
    lost_lines = [line for line, _ in result.rejected]
    lost_lines += [fmt.unparse(f.message) for f in result.failed]
    lost_lines += [fmt.unparse(m) for m in result.undelivered]
    lost_lines += result.unsent
    for line, why in result.rejected[:5]:
        _say(f"rejected line {line[:60]!r}: {why}")
    for failure in result.failed[:5]:
        _say(f"failed: {failure}")
    if lost_lines:
        _keep_lost_lines(lost_lines, undelivered_path)
    if result.error:
        _say(f"error: {result.error}")
    elif result.cut_short is not None:
        _say(f"{_signal_name(result.cut_short)}: the drain was cut short")
    print(result.summary(), file=sys.stderr, flush=True)
    return result.exit_status


# ---- demo -------------------------------------------------------------------------------


@attrs.frozen
class DemoResult:
    sent: int
    delivered: int
    read_back: int
    in_order: bool
    seconds: float
    drain_seconds: float

    @property
    def lost(self) -> int:
        return self.sent - self.read_back

    @property
    def ok(self) -> bool:
        return self.read_back == self.sent == self.delivered and self.in_order


async def run_demo(
    bootstrap: str, topic: str, count: int, size: int, on_progress: Callable[[int, int], None]
) -> DemoResult:
    payload = b"x" * max(0, size - 8)
    start = time.monotonic()
    async with open_producer(bootstrap_servers=bootstrap, linger=0.005) as producer:
        for i in range(count):
            try:
                producer.send_nowait(topic, b"%08d" % i + payload)
            except trio.WouldBlock:
                await producer.send(topic, b"%08d" % i + payload)
            if i % 2048 == 0:
                on_progress(i, producer.statistics().delivered)
                await trio.lowlevel.checkpoint()
        drain_start = time.monotonic()
    drain = time.monotonic() - drain_start
    seconds = time.monotonic() - start
    delivered = producer.statistics().delivered
    on_progress(count, delivered)
    records = await trio.to_thread.run_sync(
        partial(consume_all, bootstrap, topic, expected=count, idle_timeout=5.0)
    )
    in_order = all(
        r.value is not None and r.value[:8] == b"%08d" % i for i, r in enumerate(records)
    )
    return DemoResult(count, delivered, len(records), in_order, seconds, drain)


# ---- click --------------------------------------------------------------------------------


def _build() -> click_types.Group:
    import click

    @click.group(context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(package_name="trio-producer", prog_name=PROG)
    @click.option("-v", "--verbose", count=True, help="Log librdkafka's warnings (-vv: more).")
    def cli(verbose: int) -> None:
        """A Kafka producer for Trio, on the command line."""
        if verbose:
            _stderr_handler.setLevel(logging.WARNING if verbose == 1 else logging.INFO)

    @cli.command()
    @click.option("-b", "--bootstrap-servers", required=True, help="host:port[,host:port...]")
    @click.option("-t", "--topic", required=True)
    @click.option(
        "--file", "path", type=click.Path(dir_okay=False), help="Read this file, not stdin."
    )
    @click.option("-K", "--key-separator", help="The part of a line before SEP is the key.")
    @click.option("-H", "--header", "headers", multiple=True, help="name=value, on every message.")
    @click.option(
        "--jsonl", is_flag=True, help='Lines are JSON: {"value":..,"key":..,"headers":{..}}.'
    )
    @click.option("--linger", type=float, default=0.005, show_default=True, help="Seconds.")
    @click.option("--batch-max-messages", type=int, default=10_000, show_default=True)
    @click.option("--close-timeout", type=float, default=30.0, show_default=True, help="Seconds.")
    @click.option("-X", "--property", "props", multiple=True, help="Any librdkafka prop=value.")
    @click.option(
        "--undelivered",
        "undelivered_path",
        type=click.Path(dir_okay=False),
        help="Write lines that were not delivered to this file.",
    )
    @click.option(
        "--progress/--no-progress",
        default=None,
        help="A progress line on stderr (default: when stderr is a terminal).",
    )
    def produce(
        bootstrap_servers: str,
        topic: str,
        path: str | None,
        key_separator: str | None,
        headers: tuple[str, ...],
        jsonl: bool,
        linger: float,
        batch_max_messages: int,
        close_timeout: float,
        props: tuple[str, ...],
        undelivered_path: str | None,
        progress: bool | None,
    ) -> None:
        """Produce one message per line of stdin (or --file).

        On EOF, SIGINT or SIGTERM it stops reading, drains (at most --close-timeout) and
        exits with a summary line `sent=N delivered=N failed=N undelivered=N` on stderr.
        A second SIGINT/SIGTERM cuts the drain short. Exit status: 0 when every line read
        was delivered, 1 when some were not (they go to --undelivered FILE or are named
        on stderr), 130 / 143 when a SIGINT / SIGTERM cut the drain short, 2 for a usage
        or configuration error.
        """
        if key_separator is not None and jsonl:
            _fail("--key-separator and --jsonl do not go together", 2)
        if key_separator == "":
            _fail("--key-separator must not be empty", 2)
        fmt = LineFormat(
            key_separator=key_separator.encode() if key_separator is not None else None,
            headers=tuple((n, v.encode()) for n, v in _pairs(headers, "-H")),
            jsonl=jsonl,
        )
        config = ProducerConfig(
            bootstrap_servers=bootstrap_servers,
            linger=linger,
            batch_max_messages=batch_max_messages,
            close_timeout=close_timeout,
            # librdkafka parses its string values itself ("true", "100", "lz4", ...)
            librdkafka=dict(_pairs(props, "-X")),
        )
        show = sys.stderr.isatty() if progress is None else progress
        try:
            stream = _open_input(path)
        except OSError as exc:
            _fail(f"cannot read {path}: {exc.strerror}", 2)
        result = trio.run(partial(run_produce, config, topic, stream, fmt, progress=show))
        code = _report(result, fmt, undelivered_path)
        if code:
            raise SystemExit(code)

    @cli.command()
    @click.option(
        "-n", "--messages", type=click.IntRange(min=1), default=100_000, show_default=True
    )
    @click.option(
        "--size",
        type=click.IntRange(min=8),
        default=100,
        show_default=True,
        help="Bytes per message.",
    )
    @click.option("-b", "--bootstrap-servers", help="Use this broker instead of an embedded one.")
    def demo(messages: int, size: int, bootstrap_servers: str | None) -> None:
        """Start an embedded broker, produce N messages, read them back, check nothing was lost."""
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
        from rich.table import Table

        from .testing import EmbeddedBroker

        console = Console()
        topic = f"trio-producer-demo-{os.getpid()}"
        with ExitStack() as stack:
            if bootstrap_servers is None:
                broker = stack.enter_context(EmbeddedBroker())
                bootstrap_servers = broker.bootstrap_servers
                console.print(f"embedded broker (Tansu) on {bootstrap_servers}")
            create_topics(bootstrap_servers, [topic], partitions=1)
            progress = stack.enter_context(
                Progress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    console=console,
                    transient=False,
                )
            )
            sending = progress.add_task("accepted ", total=messages)
            delivering = progress.add_task("delivered", total=messages)

            def on_progress(sent: int, delivered: int) -> None:
                progress.update(sending, completed=sent)
                progress.update(delivering, completed=delivered)

            result = trio.run(run_demo, bootstrap_servers, topic, messages, size, on_progress)
            progress.stop()
        table = Table(title="trio-producer demo")
        for column in ("sent", "delivered", "read back", "lost", "in order", "msgs/s", "drain"):
            table.add_column(column, justify="right")
        table.add_row(
            str(result.sent),
            str(result.delivered),
            str(result.read_back),
            str(result.lost),
            "yes" if result.in_order else "NO",
            f"{result.sent / result.seconds:,.0f}",
            f"{result.drain_seconds * 1000:.1f} ms",
        )
        console.print(table)
        if not result.ok:
            _fail(f"demo failed: sent {result.sent}, read back {result.read_back}")

    @cli.command()
    @click.option("-p", "--port", type=click.IntRange(1, 65535), help="Default: a free port.")
    def broker(port: int | None) -> None:
        """Run the embedded broker (Tansu, memory-only) until Ctrl-C."""
        from .testing import EmbeddedBroker

        stop: list[int] = []

        def on_signal(signum: int, _frame: object) -> None:
            stop.append(signum)

        # Explicit handlers: a shell starts background jobs with SIGINT ignored.
        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            with EmbeddedBroker(port) as embedded:
                print(embedded.bootstrap_servers, flush=True)
                print(f"{PROG}: broker running; Ctrl-C to stop", file=sys.stderr, flush=True)
                while embedded.running and not stop:
                    time.sleep(0.1)
                if not stop:
                    _fail("the embedded broker stopped by itself")
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    return cli


class _OncePerMessage(logging.Filter):
    """Let each distinct log message through once (librdkafka repeats itself on retries)."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text in self._seen:
            return False
        self._seen.add(text)
        return True


class _ErrorNames(logging.Handler):
    """Remembers which librdkafka errors were reported, to name the problem at the end."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.names: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith("librdkafka error: "):
            self.names.add(text.split(":", 2)[1].strip())


_stderr_handler = logging.StreamHandler(sys.stderr)
_error_names = _ErrorNames()


def _setup_logging() -> None:
    """Log lines on stderr: errors only, unless ``-v`` (warnings) or ``-vv`` (info)."""
    _stderr_handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    _stderr_handler.addFilter(_OncePerMessage())
    _stderr_handler.setLevel(logging.ERROR)
    root = logging.getLogger("trio_producer")
    root.addHandler(_stderr_handler)
    root.addHandler(_error_names)
    root.setLevel(logging.INFO)
    root.propagate = False
    # librdkafka's connection failures are also reported through error_cb; keep one copy.
    logging.getLogger("trio_producer.librdkafka").setLevel(logging.CRITICAL)


def _unreachable_hint(bootstrap: str) -> str:
    if _error_names.names & {"_ALL_BROKERS_DOWN", "_TRANSPORT", "_RESOLVE"}:
        return f"could not reach the broker at {bootstrap}; "
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trio-producer`` console script."""
    _setup_logging()
    try:
        import click
    except ImportError:
        print(
            f"{PROG}: the command line needs extras: pip install 'trio-producer[cli]'",
            file=sys.stderr,
        )
        return 2
    cli = _build()
    try:
        cli.main(
            args=list(argv) if argv is not None else None, prog_name=PROG, standalone_mode=False
        )
    except click.exceptions.NoArgsIsHelpError as exc:  # pragma: no cover - depends on click
        print(exc.format_message() if hasattr(exc, "format_message") else exc, file=sys.stderr)
        return 2
    except click.UsageError as exc:
        print(f"{PROG}: error: {exc.format_message()}", file=sys.stderr)
        return 2
    except click.Abort:
        print(f"{PROG}: aborted", file=sys.stderr)
        return 130
    except CliError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.code
    except TrioProducerError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:  # one line, no traceback, for anything the broker/OS raises
        print(f"{PROG}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

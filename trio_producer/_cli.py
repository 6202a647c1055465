"""The ``trio-producer`` command line: produce from stdin, a self-checking demo, a broker."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from contextlib import ExitStack
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn

import attrs
import trio

from ._client import consume_all, create_topics
from ._config import ProducerConfig
from ._exceptions import DeliveryError, TrioProducerError, UndeliveredMessagesError
from ._producer import Producer, open_producer

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
    interrupted: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.delivered == self.read and not (
            self.failed or self.rejected or self.undelivered
        )

    def summary(self) -> str:
        return (
            f"sent={self.sent} delivered={self.delivered} "
            f"failed={len(self.failed) + len(self.rejected)} undelivered={len(self.undelivered)}"
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


async def _lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[list[bytes]]:
    """Complete lines, a chunk at a time (a last line without newline counts)."""
    rest = b""
    while True:
        chunk = await stream.receive_some(_CHUNK)
        if not chunk:
            break
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        if parts:
            yield parts
    if rest:
        yield [rest]


async def _watch_signals(
    read_scope: trio.CancelScope,
    result: ProduceResult,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            name = signal.Signals(signum).name
            if result.interrupted is None:
                result.interrupted = name
                print(f"{PROG}: {name}: stopped reading, draining", file=sys.stderr, flush=True)
                read_scope.cancel(reason=f"received {name}")
            else:
                print(f"{PROG}: {name}: already draining", file=sys.stderr, flush=True)


async def _progress(producer: Producer, result: ProduceResult) -> None:
    from rich.console import Console

    console = Console(stderr=True)
    start = time.monotonic()
    try:
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


async def run_produce(
    config: ProducerConfig,
    topic: str,
    stream: trio.abc.ReceiveStream,
    fmt: LineFormat,
    *,
    progress: bool = False,
) -> ProduceResult:
    """Produce one message per line of ``stream``; stop on EOF, SIGINT or SIGTERM."""
    result = ProduceResult()
    producer: Producer | None = None
    setup_error: TrioProducerError | None = None
    async with stream, trio.open_nursery() as watchers:
        read_scope = trio.CancelScope()
        await watchers.start(_watch_signals, read_scope, result)
        try:
            async with open_producer(config, on_delivery_error=result.failed.append) as producer:
                if progress:
                    watchers.start_soon(_progress, producer, result)
                with read_scope:
                    async for lines in _lines(stream):
                        for line in lines:
                            result.read += 1
                            try:
                                kwargs = fmt.parse(line)
                                try:
                                    producer.send_nowait(topic, **kwargs)
                                except trio.WouldBlock:
                                    await producer.send(topic, **kwargs)
                            except (ValueError, TypeError) as exc:
                                result.rejected.append((line, str(exc)))
                                continue
                            result.sent += 1
                        await trio.lowlevel.checkpoint()
        except UndeliveredMessagesError as exc:
            result.undelivered = list(exc.messages)
            result.error = _unreachable_hint(config.bootstrap_servers) + str(exc)
        except TrioProducerError as exc:  # ConfigError at open: raised below, not grouped
            setup_error = exc
        finally:
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


def _report(result: ProduceResult, fmt: LineFormat, undelivered_path: str | None) -> int:
    lost_lines = [line for line, _ in result.rejected]
    lost_lines += [fmt.unparse(f.message) for f in result.failed]
    lost_lines += [fmt.unparse(m) for m in result.undelivered]
    for line, why in result.rejected[:5]:
        print(f"{PROG}: rejected line {line[:60]!r}: {why}", file=sys.stderr)
    for failure in result.failed[:5]:
        print(f"{PROG}: failed: {failure}", file=sys.stderr)
    if lost_lines:
        if undelivered_path:
            with open(undelivered_path, "wb") as out:
                for line in lost_lines:
                    out.write(line + b"\n")
            print(
                f"{PROG}: {len(lost_lines)} line(s) not delivered, written to {undelivered_path}",
                file=sys.stderr,
            )
        else:
            for line in lost_lines:
                print(f"{PROG}: undelivered: {line.decode(errors='replace')}", file=sys.stderr)
    if result.error:
        print(f"{PROG}: error: {result.error}", file=sys.stderr)
    print(result.summary(), file=sys.stderr, flush=True)
    return 0 if result.ok else 1


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

        On EOF, SIGINT or SIGTERM it stops reading, drains and exits with a summary line
        `sent=N delivered=N failed=N undelivered=N` on stderr. Exit status 0 only when
        every line read was delivered.
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

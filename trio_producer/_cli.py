"""The ``trio-producer`` command line: produce from stdin, a self-checking demo, a broker."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import time
from contextlib import AsyncExitStack, ExitStack
from functools import partial
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import attrs
import trio

from ._config import ProducerConfig
from ._exceptions import (
    DeliveryError,
    KafkaFatalError,
    TrioProducerError,
    UndeliveredMessagesError,
)
from ._lifecycle import open_producer
from ._logging import DeduplicateFilter
from ._signals import cancel_on_signals
from .testing._admin import consume_all, create_topics

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    import click as click_types

    from ._message import Message
    from ._producer import Producer

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


def _properties_file(path: str) -> list[tuple[str, str]]:
    """``-F FILE``: librdkafka properties, one ``name=value`` a line; blank lines and
    lines starting with ``#`` or ``!`` are skipped; spaces around names and values are
    stripped (kcat's format, and the simple case of a Java properties file)."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}", 2)
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip():
            # the line itself is not shown: it may hold a secret
            _fail(f"{path}, line {number}: expected name=value", 2)
        out.append((name.strip(), value.strip()))
    return out


#: kafka-console-producer's ``--property`` names that have another spelling here.
_READER_PROPERTY_HINTS = {
    "parse.headers": "use --jsonl for headers per line, -H name=value for fixed ones",
    "headers.delimiter": "use --jsonl for headers per line, -H name=value for fixed ones",
    "headers.separator": "use --jsonl for headers per line, -H name=value for fixed ones",
    "headers.key.separator": "use --jsonl for headers per line, -H name=value for fixed ones",
    "null.marker": "use -Z to send empty values (and keys) as null",
}


def _boolean(name: str, value: str) -> bool:
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    _fail(f"--property {name} must be true or false, not {value!r}", 2)


def _reader_properties(values: Sequence[str]) -> tuple[str | None, bool]:
    """kafka-console-producer's ``--property`` (its line reader's settings) as
    ``(key separator or None, whether a line without it is rejected)``."""
    parse_key = ignore_error = False
    separator: str | None = None
    for name, value in _pairs(values, "--property"):
        if name == "parse.key":
            parse_key = _boolean(name, value)
        elif name == "ignore.error":
            ignore_error = _boolean(name, value)
        elif name == "key.separator":
            separator = value
        elif name in _READER_PROPERTY_HINTS:
            _fail(f"--property {name} is not supported: {_READER_PROPERTY_HINTS[name]}", 2)
        else:
            _fail(
                f"--property {name}: not a kafka-console-producer line-reader property "
                "(parse.key, key.separator, ignore.error); for a producer (librdkafka) "
                f"property use -X {name}=VALUE",
                2,
            )
    if not parse_key:
        if separator is not None:
            _fail("--property key.separator needs --property parse.key=true", 2)
        return None, False
    return ("\t" if separator is None else separator), not ignore_error


# ---- produce ----------------------------------------------------------------------------


@attrs.define
class ProduceResult:
    read: int = 0
    sent: int = 0
    delivered: int = 0
    #: Deliveries that failed (the broker or librdkafka said no).
    failed: list[DeliveryError] = attrs.Factory(list)
    #: Lines never sent because they could not be made into a message, and why.
    rejected: list[tuple[bytes, str]] = attrs.Factory(list)
    undelivered: list[Message] = attrs.Factory(list)
    #: Lines read but never sent: the reading stopped in the middle of a chunk.
    unsent: list[bytes] = attrs.Factory(list)
    #: Input files never opened for reading because the reading stopped first.
    unread_files: list[str] = attrs.Factory(list)
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
            f"sent={self.sent} delivered={self.delivered} rejected={len(self.rejected)} "
            f"failed={len(self.failed)} undelivered={len(self.undelivered) + len(self.unsent)}"
        )


@attrs.frozen
class LineFormat:
    key_separator: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    jsonl: bool
    #: ``-k``: the key of every message whose line does not give one.
    key: bytes | None = None
    #: ``-p``: the partition of every message whose line does not give one.
    partition: int | None = None
    #: ``-Z``: an empty value (or key) is sent as null.
    empty_is_null: bool = False
    #: ``--property parse.key=true`` without ``ignore.error=true``: a line without the
    #: key separator is rejected (as kafka-console-producer does).
    require_key: bool = False

    def parse(self, line: bytes) -> dict[str, Any]:
        """One input line to ``send`` keyword arguments (raises ValueError)."""
        headers: list[tuple[str, bytes | str | None]] = list(self.headers)
        key: bytes | str | None = self.key
        value: Any = line
        partition: Any = self.partition
        if self.jsonl:
            obj = json.loads(line)
            if not isinstance(obj, dict) or "value" not in obj:
                raise ValueError('a JSON line must be an object with a "value" field')
            extra = obj.get("headers") or {}
            if not isinstance(extra, dict):
                raise ValueError('"headers" must be an object of strings')
            headers += list(extra.items())
            value = obj["value"]
            if obj.get("key") is not None:
                key = obj["key"]
            if obj.get("partition") is not None:
                partition = obj["partition"]
        elif self.key_separator is not None:
            head, sep, rest = line.partition(self.key_separator)
            if sep:
                key, value = head, rest
            elif self.require_key:
                raise ValueError(
                    f"no key separator {self.key_separator.decode(errors='replace')!r} "
                    "in the line (--property ignore.error=true to send it without a key)"
                )
        if self.empty_is_null:
            if value in (b"", ""):
                value = None
            if key in (b"", ""):
                key = None
        return {"value": value, "key": key, "headers": headers or None, "partition": partition}

    def unparse(self, message: Message) -> bytes:
        """A handed-back message as an input line again (for ``--undelivered``)."""
        if self.jsonl:
            obj: dict[str, Any] = {
                "value": None if message.value is None else message.value.decode(errors="replace")
            }
            if message.key is not None:
                obj["key"] = message.key.decode(errors="replace")
            own = [(n, v) for n, v in (message.headers or []) if (n, v) not in self.headers]
            if own:
                obj["headers"] = {n: (v or b"").decode(errors="replace") for n, v in own}
            if message.partition is not None and message.partition != self.partition:
                obj["partition"] = message.partition
            return json.dumps(obj).encode()
        value = message.value or b""
        key = message.key
        if key is None and self.empty_is_null and self.key is not None:
            key = b""  # a null key that was an empty one: not the -k key
        if self.key_separator is not None and key is not None:
            return key + self.key_separator + value
        return value


@attrs.define(eq=False)
class _LineReader:
    """Complete lines from a stream, a chunk at a time (a last line without newline counts).

    ``partial`` is what was read after the last newline, not yet a line: when the reading
    stops early (a signal), it was read but will not be sent.
    """

    stream: trio.abc.ReceiveStream
    #: The file name (``-`` for stdin).
    name: str = "-"
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
    readers: Sequence[_LineReader],
    result: ProduceResult,
) -> None:
    """One message per line, file after file, until the last EOF. When the reading stops
    early (a signal, or the producer failing), the lines read but not sent go to
    ``result.unsent`` and the files not started to ``result.unread_files``."""
    chunk: list[bytes] = []
    done = 0  # lines of ``chunk`` sent or rejected
    started = 0  # readers started
    reader: _LineReader | None = None
    try:
        for reader in readers:
            started += 1
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
        partial = reader.partial if reader is not None else b""
        result.unsent = chunk[done:] + ([partial] if partial else [])
        result.read += len(result.unsent)
        result.unread_files = [r.name for r in readers[started:]]


async def run_produce(
    config: ProducerConfig,
    topic: str,
    streams: Sequence[tuple[str, trio.abc.ReceiveStream]],
    fmt: LineFormat,
    *,
    progress: bool = False,
    connect_timeout: float | None = None,
) -> ProduceResult:
    """Produce one message per line of each ``(name, stream)`` in turn; stop after the
    last EOF, or on SIGINT or SIGTERM. Closes every stream.

    The first signal stops the reading and the producer drains; a signal while it
    drains cuts the drain short (``result.cut_short``).
    """
    async with AsyncExitStack() as streams_open:
        for _name, stream in streams:
            await streams_open.enter_async_context(stream)
        return await _produce(
            config, topic, streams, fmt, progress=progress, connect_timeout=connect_timeout
        )
    raise AssertionError("unreachable")  # pragma: no cover - AsyncExitStack could swallow


async def _produce(
    config: ProducerConfig,
    topic: str,
    streams: Sequence[tuple[str, trio.abc.ReceiveStream]],
    fmt: LineFormat,
    *,
    progress: bool,
    connect_timeout: float | None = None,
) -> ProduceResult:
    result = ProduceResult()
    producer: Producer | None = None
    shutdown: _Shutdown | None = None
    setup_error: TrioProducerError | None = None
    readers = [_LineReader(stream, name) for name, stream in streams]
    async with trio.open_nursery() as watchers:
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
                if connect_timeout is not None:
                    watchers.start_soon(_give_up_when_unreachable, producer, connect_timeout)
                with read_scope:
                    await _send_lines(producer, topic, fmt, readers, result)
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


def _open_inputs(paths: Sequence[str]) -> list[tuple[str, trio.lowlevel.FdStream]]:
    """stdin (no paths, or ``-``) or the files, in order, as Trio streams (reads are
    cancellable, no thread). All are opened before anything is produced."""
    fds: list[tuple[str, int]] = []
    try:
        for path in paths or ["-"]:
            if path == "-":
                fds.append((path, os.dup(sys.stdin.fileno())))
                continue
            try:
                fds.append((path, os.open(path, os.O_RDONLY)))
            except OSError as exc:
                _fail(f"cannot read {path}: {exc.strerror}", 2)
    except BaseException:
        for _path, fd in fds:
            os.close(fd)
        raise
    return [(path, trio.lowlevel.FdStream(fd)) for path, fd in fds]


#: Lines that were not delivered are named on stderr one by one up to these limits;
#: beyond them (or with --undelivered) they go to a file, and stderr names a few.
_NAME_AT_MOST_LINES = 20
_NAME_AT_MOST_BYTES = 4096
#: With a file: how many lines of each kind are still named on stderr (shortened).
_NAME_FIRST = 3
#: Lines and reasons named on stderr are shortened to about this many characters
#: (the whole line is in the file).
_LINE_WIDTH = 80
_REASON_WIDTH = 200

#: The three ways a line read is not delivered, as the summary line counts them.
_KINDS = ("rejected", "failed", "undelivered")


def _shorten(text: str | bytes, width: int = _LINE_WIDTH) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    if len(text) <= width:
        return text
    return f"{text[: width - 3]}... ({len(text):,} characters)"


def _lost_lines(result: ProduceResult, fmt: LineFormat) -> list[tuple[str, bytes, str | None]]:
    """Every line read and not delivered, once: ``(kind, line, reason)``."""
    lost: list[tuple[str, bytes, str | None]] = []
    lost += [("rejected", line, why) for line, why in result.rejected]
    lost += [("failed", fmt.unparse(f.message), str(f.error)) for f in result.failed]
    lost += [("undelivered", fmt.unparse(m), None) for m in result.undelivered]
    lost += [("undelivered", line, None) for line in result.unsent]
    return lost


def _name_line(kind: str, line: bytes, why: str | None, *, whole: bool) -> None:
    text = line.decode(errors="replace") if whole else _shorten(line)
    reason = f" ({_shorten(why, _REASON_WIDTH)})" if why else ""
    _say(f"{kind}: {text}{reason}")


def _keep_lost_lines(lost: list[tuple[str, bytes, str | None]], path: str | None) -> None:
    """Hand the lines that were not delivered back to the user: a file, or stderr."""
    lines = [line for _kind, line, _why in lost]
    written_by_us = False
    if path is None and (
        len(lines) > _NAME_AT_MOST_LINES or sum(map(len, lines)) > _NAME_AT_MOST_BYTES
    ):
        # Too many or too long to read on a terminal, too precious to drop: a file of ours.
        try:
            fd, path = tempfile.mkstemp(prefix=f"{PROG}-undelivered-", suffix=".txt")
            os.close(fd)
        except OSError:
            path = None
        else:
            written_by_us = True
    if path is None:  # stderr is their only copy: whole
        for kind, line, why in lost:
            _name_line(kind, line, why, whole=True)
        return
    for kind in _KINDS:  # the first few of each kind, shortened
        of_kind = [(line, why) for k, line, why in lost if k == kind]
        for line, why in of_kind[:_NAME_FIRST]:
            _name_line(kind, line, why, whole=False)
        if len(of_kind) > _NAME_FIRST:
            _say(f"{kind}: ... and {len(of_kind) - _NAME_FIRST} more")
    with open(path, "wb") as out:
        for line in lines:
            out.write(line + b"\n")
    hint = " (--undelivered FILE to choose the file)" if written_by_us else ""
    _say(f"{len(lines)} line(s) not delivered, written to {path}{hint}")


def _report(result: ProduceResult, fmt: LineFormat, undelivered_path: str | None) -> int:
    """Print what happened (the summary line last); return the exit status."""
    lost = _lost_lines(result, fmt)
    if lost:
        _keep_lost_lines(lost, undelivered_path)
    if result.unread_files:
        _say(f"not read (the reading stopped first): {', '.join(result.unread_files)}")
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
    @click.option(
        "-b",
        "--bootstrap-servers",
        "--bootstrap-server",
        help="host:port[,host:port...] (or bootstrap.servers in -F FILE).",
    )
    @click.option("-t", "--topic", required=True)
    @click.option(
        "--file",
        "paths",
        multiple=True,
        type=click.Path(dir_okay=False, allow_dash=True),
        help="Read this file, not stdin (repeatable: in the order given; - is stdin).",
    )
    @click.option(
        "-l",
        "lines_of_files",
        is_flag=True,
        help="Read the FILES arguments line by line (kcat -l): as --file.",
    )
    @click.argument("files", nargs=-1, type=click.Path(dir_okay=False, allow_dash=True))
    @click.option("-P", "kcat_produce", is_flag=True, hidden=True)  # kcat's mode: a no-op
    @click.option("-D", "kcat_delimiter", hidden=True)
    @click.option("-T", "kcat_tee", is_flag=True, hidden=True)
    @click.option("-c", "kcat_count", hidden=True)
    @click.option(
        "-K", "--key-separator", metavar="SEP", help="The part of a line before SEP is the key."
    )
    @click.option(
        "-k", "--key", metavar="KEY", help="The key of every message whose line gives none."
    )
    @click.option(
        "-p",
        "--partition",
        type=click.IntRange(min=-1),
        help="Send to this partition (-1: the partitioner, the default).",
    )
    @click.option("-Z", "--null-empty", is_flag=True, help="Send an empty value or key as null.")
    @click.option(
        "-H",
        "--header",
        "headers",
        multiple=True,
        metavar="NAME=VALUE",
        help="name=value, on every message.",
    )
    @click.option(
        "--jsonl", is_flag=True, help='Lines are JSON: {"value":..,"key":..,"headers":{..}}.'
    )
    @click.option(
        "-z",
        "--compression",
        type=click.Choice(["none", "gzip", "snappy", "lz4", "zstd"]),
        help="Compression codec (librdkafka compression.type).",
    )
    @click.option("--linger", type=float, default=0.005, show_default=True, help="Seconds.")
    @click.option("--batch-max-messages", type=int, default=10_000, show_default=True)
    @click.option("--close-timeout", type=float, default=30.0, show_default=True, help="Seconds.")
    @click.option(
        "-X",
        "--producer-property",
        "props",
        multiple=True,
        metavar="NAME=VALUE",
        help="Any librdkafka property name=value (repeatable).",
    )
    @click.option(
        "-F",
        "--producer.config",
        "config_files",
        multiple=True,
        type=click.Path(dir_okay=False),
        help="A file of librdkafka name=value lines (# comments); -X wins over it.",
    )
    @click.option(
        "--property",
        "reader_props",
        multiple=True,
        metavar="NAME=VALUE",
        help="kafka-console-producer's parse.key=true, key.separator=SEP, ignore.error=true.",
    )
    @click.option(
        "--undelivered",
        "undelivered_path",
        type=click.Path(dir_okay=False),
        help="Write lines that were not delivered to this file.",
    )
    @click.option(
        "--progress/--no-progress",
        default=None,
        help="A progress line on stderr (default: when stderr is a terminal and stdin is not).",
    )
    @click.option(
        "--spool",
        "spool_path",
        type=click.Path(file_okay=False),
        help="A durable spool directory: every line read is on disk before it counts as "
        "sent; what was not delivered stays there for the next run (sent first).",
    )
    @click.option(
        "--delivery-reports",
        type=click.Choice(["all", "errors"]),
        default="all",
        show_default=True,
        help="'errors': librdkafka reports failures only (faster; not with --spool).",
    )
    @click.option(
        "--connect-timeout",
        type=click.FloatRange(min=0, min_open=True),
        help="Give up (exit 1) once the cluster has been unreachable this many seconds.",
    )
    def produce(
        bootstrap_servers: str | None,
        topic: str,
        paths: tuple[str, ...],
        lines_of_files: bool,
        files: tuple[str, ...],
        kcat_produce: bool,
        kcat_delimiter: str | None,
        kcat_tee: bool,
        kcat_count: str | None,
        key_separator: str | None,
        key: str | None,
        partition: int | None,
        null_empty: bool,
        headers: tuple[str, ...],
        jsonl: bool,
        compression: str | None,
        linger: float,
        batch_max_messages: int,
        close_timeout: float,
        props: tuple[str, ...],
        config_files: tuple[str, ...],
        reader_props: tuple[str, ...],
        undelivered_path: str | None,
        progress: bool | None,
        spool_path: str | None,
        delivery_reports: Literal["all", "errors"],
        connect_timeout: float | None,
    ) -> None:
        """Produce one message per line of stdin (or of each --file or -l FILE in turn).

        On EOF, SIGINT or SIGTERM it stops reading, drains (at most --close-timeout) and
        exits with a summary line `sent=N delivered=N rejected=N failed=N undelivered=N`
        on stderr. A second SIGINT/SIGTERM cuts the drain short. Exit status: 0 when
        every line read was delivered, 1 when some were not (they go to --undelivered
        FILE or are named on stderr), 130 / 143 when a SIGINT / SIGTERM cut the drain
        short, 2 for a usage or configuration error.
        """
        unsupported = {
            "-D": (kcat_delimiter, "one message per line; --jsonl for values with newlines"),
            "-T": (kcat_tee, "no echo of the messages to stdout"),
            "-c": (kcat_count, "to send the first N lines: head -n N | trio-producer produce"),
        }
        for flag, (given, hint) in unsupported.items():
            if given:
                _fail(f"kcat's {flag} is not supported: {hint}", 2)
        if files and not lines_of_files:
            _fail(
                "a FILE argument is sent line by line only with -l (kcat sends a whole "
                "file as one message, which is not supported): -l FILE... or --file FILE",
                2,
            )
        paths += files
        if paths.count("-") > 1:
            _fail("--file - (stdin) can be given once", 2)
        require_key = False
        if reader_props:
            if key_separator is not None:
                _fail("-K and --property parse.key/key.separator do not go together", 2)
            key_separator, require_key = _reader_properties(reader_props)
        if key_separator is not None and jsonl:
            _fail("--key-separator and --jsonl do not go together", 2)
        if key_separator == "":
            _fail("--key-separator must not be empty", 2)
        fmt = LineFormat(
            key_separator=key_separator.encode() if key_separator is not None else None,
            headers=tuple((n, v.encode()) for n, v in _pairs(headers, "-H")),
            jsonl=jsonl,
            key=key.encode() if key is not None else None,
            partition=None if partition is None or partition < 0 else partition,
            empty_is_null=null_empty,
            require_key=require_key,
        )
        # librdkafka parses its string values itself ("true", "100", "lz4", ...)
        librdkafka: dict[str, str] = {}
        for config_file in config_files:
            librdkafka.update(_properties_file(config_file))
        librdkafka.update(_pairs(props, "-X"))
        if compression is not None:
            librdkafka.pop("compression.codec", None)
            librdkafka["compression.type"] = compression
        from_props = librdkafka.pop("bootstrap.servers", None)
        from_props = librdkafka.pop("metadata.broker.list", None) or from_props
        bootstrap_servers = bootstrap_servers or from_props
        if not bootstrap_servers:
            _fail("-b/--bootstrap-servers is required (or bootstrap.servers in -F FILE)", 2)
        config = ProducerConfig(
            bootstrap_servers=bootstrap_servers,
            linger=linger,
            batch_max_messages=batch_max_messages,
            close_timeout=close_timeout,
            librdkafka=librdkafka,
            spool_path=spool_path,
            delivery_reports=delivery_reports,
        )
        streams = _open_inputs(paths)
        if progress is None:  # not over what the user types on a terminal
            typing = (not paths or "-" in paths) and sys.stdin.isatty()
            progress = sys.stderr.isatty() and not typing
        result = trio.run(
            partial(
                run_produce,
                config,
                topic,
                streams,
                fmt,
                progress=progress,
                connect_timeout=connect_timeout,
            )
        )
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

        from .testing import BrokerError, EmbeddedBroker

        console = Console()
        topic = f"trio-producer-demo-{os.getpid()}"
        with ExitStack() as stack:
            if bootstrap_servers is None:
                try:
                    broker = stack.enter_context(EmbeddedBroker())
                except BrokerError as exc:
                    _fail(str(exc))
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
        from .testing import BrokerError, EmbeddedBroker

        stop: list[int] = []

        def on_signal(signum: int, _frame: object) -> None:
            stop.append(signum)

        # Explicit handlers: a shell starts background jobs with SIGINT ignored.
        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            embedded = EmbeddedBroker(port)
            try:
                embedded.start()
            except BrokerError as exc:
                _fail(str(exc))
            with embedded:
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


_connectivity_handler = logging.StreamHandler(sys.stderr)


def _is_connectivity(record: logging.LogRecord) -> bool:
    return record.name == "trio_producer" and record.getMessage().startswith(
        "the Kafka cluster at "
    )


def _setup_logging() -> None:
    """Log lines on stderr: errors only, unless ``-v`` (warnings) or ``-vv`` (info)."""
    _stderr_handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    _stderr_handler.addFilter(DeduplicateFilter())  # librdkafka repeats itself; bounded
    _stderr_handler.addFilter(lambda record: not _is_connectivity(record))
    _stderr_handler.setLevel(logging.ERROR)
    # The cluster becoming unreachable (and coming back) is said at once, at any -v.
    _connectivity_handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    _connectivity_handler.addFilter(_is_connectivity)
    root = logging.getLogger("trio_producer")
    root.addHandler(_stderr_handler)
    root.addHandler(_connectivity_handler)
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

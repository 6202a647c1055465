"""The input side of ``produce``: lines to messages and back, and the streams they come from."""

from __future__ import annotations

import json
import os
import stat
import sys
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._common import fail

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from .._message import Message

_CHUNK = 1 << 16


def _json_text(value: Any) -> Any:
    """A JSON line's value or key: a string as itself (UTF-8), null as null, anything
    else (an object, an array, a number, true/false) as its compact JSON text."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


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
            value = _json_text(obj["value"])
            if obj.get("key") is not None:
                key = _json_text(obj["key"])
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
class ReadStop:
    """Stops the reading, not the sending of what was read.

    The first signal calls :meth:`stop`: a read in progress is cancelled and no other
    is started, but the lines already read are still sent (each is accepted or handed
    back: none is read and dropped), for at most ``close_timeout`` more when the
    producer has no room. A signal while they are sent calls :meth:`cut`.
    """

    #: Around the sending of every line; its deadline is set by :meth:`stop`.
    sending: trio.CancelScope = attrs.Factory(trio.CancelScope)
    stopped: bool = False
    _receiving: trio.CancelScope | None = None

    def stop(self, close_timeout: float) -> None:
        self.stopped = True
        self.sending.deadline = trio.current_time() + close_timeout
        if self._receiving is not None:
            self._receiving.cancel(reason="the reading was stopped")

    def cut(self) -> None:
        self.sending.cancel(reason="the drain was cut short")

    async def receive(self, stream: trio.lowlevel.FdStream, *, fifo: bool) -> bytes:
        """The next chunk; ``b""`` at EOF or once stopped. A FIFO is opened without
        waiting for a writer: its first read waits for one (and can be stopped)."""
        if self.stopped:
            return b""
        with trio.CancelScope() as self._receiving:
            if fifo:
                await trio.lowlevel.wait_readable(stream.fileno())
            return await stream.receive_some(_CHUNK)
        return b""  # stopped while waiting


@attrs.define(eq=False)
class LineReader:
    """Complete lines from a stream, a chunk at a time (a last line without newline counts).

    ``partial`` is what was read after the last newline, not yet a line: when the reading
    stops early (a signal), it is the start of a line whose rest was never read.
    """

    stream: trio.lowlevel.FdStream
    #: The file name (``-`` for stdin).
    name: str = "-"
    #: A named pipe (its first read waits for a writer).
    fifo: bool = False
    partial: bytes = b""

    async def chunks(self, stop: ReadStop) -> AsyncIterator[list[bytes]]:
        fifo = self.fifo
        while True:
            chunk = await stop.receive(self.stream, fifo=fifo)
            fifo = False
            if not chunk:
                break
            parts = (self.partial + chunk).split(b"\n")
            self.partial = parts.pop()
            if parts:
                yield parts
        if self.partial and not stop.stopped:
            last, self.partial = self.partial, b""
            yield [last]


def _open(path: str) -> int:
    """A named pipe is opened without waiting for a writer (a blocking ``open`` would
    wait before the signals are handled); its reader waits for one."""
    try:
        fifo = stat.S_ISFIFO(os.stat(path).st_mode)
        return os.open(path, os.O_RDONLY | (os.O_NONBLOCK if fifo else 0))
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}", 2)


def open_inputs(paths: Sequence[str]) -> list[LineReader]:
    """stdin (no paths, or ``-``) or the files, in order, as readers of Trio streams
    (reads are cancellable, no thread). All are opened before anything is produced."""
    fds: list[tuple[str, int]] = []
    try:
        for path in paths or ["-"]:
            if path == "-":
                fds.append((path, os.dup(sys.stdin.fileno())))
            else:
                fds.append((path, _open(path)))
    except BaseException:
        for _path, fd in fds:
            os.close(fd)
        raise
    return [
        LineReader(trio.lowlevel.FdStream(fd), path, fifo=stat.S_ISFIFO(os.fstat(fd).st_mode))
        for path, fd in fds
    ]

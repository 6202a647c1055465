"""The input side of ``produce``: lines to messages and back, and the streams they come from."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._common import fail

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from .._message import Message

_CHUNK = 1 << 16


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
class LineReader:
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


def open_inputs(paths: Sequence[str]) -> list[tuple[str, trio.lowlevel.FdStream]]:
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
                fail(f"cannot read {path}: {exc.strerror}", 2)
    except BaseException:
        for _path, fd in fds:
            os.close(fd)
        raise
    return [(path, trio.lowlevel.FdStream(fd)) for path, fd in fds]

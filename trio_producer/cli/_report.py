"""What ``produce`` says at the end: the lines that were not delivered, handed back (a
file or stderr), and the summary line."""

from __future__ import annotations

import os
import sys
import tempfile
from typing import TYPE_CHECKING

import attrs

from ._common import PROG, say, signal_name

if TYPE_CHECKING:
    from .._exceptions import DeliveryError
    from .._message import Message
    from ._lines import LineFormat


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
    #: Lines read but never sent: the sending was cut short, or the producer failed.
    unsent: list[bytes] = attrs.Factory(list)
    #: The start of a line whose rest was never read (the reading stopped): not a line,
    #: not sent, named apart.
    partial_line: bytes = b""
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
    say(f"{kind}: {text}{reason}")


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
            say(f"{kind}: ... and {len(of_kind) - _NAME_FIRST} more")
    with open(path, "wb") as out:
        for line in lines:
            out.write(line + b"\n")
    hint = " (--undelivered FILE to choose the file)" if written_by_us else ""
    say(f"{len(lines)} line(s) not delivered, written to {path}{hint}")


def report(result: ProduceResult, fmt: LineFormat, undelivered_path: str | None) -> int:
    """Print what happened (the summary line last); return the exit status."""
    lost = _lost_lines(result, fmt)
    if lost:
        _keep_lost_lines(lost, undelivered_path)
    if result.partial_line:
        say(
            "the reading stopped in the middle of a line; its start was not sent: "
            + _shorten(result.partial_line)
        )
    if result.unread_files:
        say(f"not read (the reading stopped first): {', '.join(result.unread_files)}")
    if result.error:
        say(f"error: {result.error}")
    elif result.cut_short is not None:
        say(f"{signal_name(result.cut_short)}: the drain was cut short")
    print(result.summary(), file=sys.stderr, flush=True)
    return result.exit_status

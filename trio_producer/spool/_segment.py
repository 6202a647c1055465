"""One segment of the spool: its file, its mapping, its confirmations (engine state)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import mmap
    from pathlib import Path


class _Segment:
    """One segment file and its confirmations."""

    __slots__ = (
        "ack_bytes",
        "ack_fd",
        "count",
        "done",
        "fd",
        "first_seq",
        "index",
        "mm",
        "ndone",
        "path",
        "sealed",
        "size",
        "uuid",
        "view",
    )

    def __init__(self, path: Path, index: int, first_seq: int, uuid: bytes, size: int) -> None:
        self.path = path
        self.index = index
        self.first_seq = first_seq
        self.uuid = uuid
        #: Bytes the file takes on disk (what ``max_bytes`` counts).
        self.size = size
        self.fd = -1
        self.mm: mmap.mmap | None = None
        self.ack_fd = -1
        self.ack_bytes = 0
        #: One byte per seq from ``first_seq``: 1 once confirmed (or never to be).
        self.done = bytearray()
        self.ndone = 0
        #: Records in the segment; known once it is sealed.
        self.count = -1
        self.sealed = False
        #: A read-only mapping for ``read_from`` (segments of this run); closed only by
        #: dropping it (a reader may still hold it).
        self.view: mmap.mmap | None = None

    @property
    def ack_path(self) -> Path:
        return self.path.with_suffix(".ack")


def _seg_name(index: int) -> str:
    return f"{index:016d}.seg"

"""The durable spool's storage engine: a segment log in shared file mappings (sans-Trio).

Plain synchronous code, standard library only. The producer owns one :class:`Spool` per
spool directory and drives it from its Trio thread; the blocking work (``fsync``,
unlinking, preallocating) is gathered in :meth:`Spool.sync` and :meth:`Spool.maintain`,
which the producer runs in a worker thread.

Layout of a spool directory::

    LOCK                        fcntl.flock'ed by the owning process; holds its pid
    HANDED                      the hand-off mark: no seq above it was handed to Kafka
    0000000000000007.seg        a segment: 64-byte header (with its seal), then records
    0000000000000007.ack        its ack log: CRC-framed batches of confirmed seqs
    spare-<hex>.tmp             a preallocated segment waiting to become the next one

A segment is a file of ``segment_bytes`` preallocated with ``posix_fallocate`` (so a full
disk fails at rotation with ``OSError``, never later with ``SIGBUS``) and mapped with
``mmap(MAP_SHARED)``. ``append`` copies the encoded record into the mapping: the bytes
are in the kernel's page cache when it returns, so they survive ``kill -9`` of the
process; ``sync`` (``fsync``) makes them survive a power loss. The unwritten rest of a
segment reads as zeros, which is how recovery finds its end.

The bytes themselves (records, the segment header and its seal, ack log frames, the
hand-off mark) are defined in :mod:`._format`, and encoded and parsed only there. A
segment's header carries a seal once the segment stops taking records: at a rotation, at
``close``, when recovery keeps it.

Recovery reads records until the zeros. A record whose checksum fails, followed by valid
ones, is corrupt: skipped, counted, logged at ERROR. Invalid bytes with nothing valid
after them are a torn tail (a crash mid-append) in the newest unsealed segment only: cut
off and counted. A sealed segment (or one a later segment follows) had its records
written whole: any damage in it, and records missing before its end (or the next
segment's first seq), is corruption. A copy is not ordered (``memcpy`` of a large batch
may store its end before its start), so ``append_many`` (and ``append_values``) writes
its first record's magic last: a zero magic followed by data is a batch that never
returned, cut off as a torn tail too -- unless the record is proven accepted: in the
newest segment every seq up to the hand-off mark, or up to the highest in its ack log,
was accepted, and is corruption when damaged or missing (a file that ends inside a
record is damage too: a preallocated file does not shrink through a crash). A segment
file gone while its ack log remains: its unconfirmed seqs up to the next segment's first
are counted lost.

Threading rule: ``append``, ``append_many``, ``append_values``, ``confirm`` and
``confirm_many`` belong to one thread (the event loop). ``sync``, ``maintain`` and
``close`` may run in any other thread at the same time as those: they never write what
the owning thread writes (each counter has a single writer), and they serialise among
themselves with a lock.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import logging
import mmap
import os
import threading
import uuid as uuid_module
from array import array
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast

from .._exceptions import TrioProducerError
from ._format import (
    MAGIC_BYTES,
    RECORD_OVERHEAD,
    SEAL_AT,
    SEGMENT_HEADER_SIZE,
    SpoolRecord,
    ack_frame,
    encode_record,
    encode_records,
    encode_values,
    handed_bytes,
    pair_up,
    parse_record,
    record_length_at,
    seal_bytes,
    segment_head,
)
from ._recovery import Recovery, SpoolRecovery
from ._segment import _seg_name, _Segment

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

logger = logging.getLogger("trio_producer")

__all__ = [
    "DEFAULT_ID_HEADER",
    "RECORD_OVERHEAD",
    "Spool",
    "SpoolDiskFullError",
    "SpoolError",
    "SpoolFullError",
    "SpoolLockedError",
    "SpoolRecord",
    "SpoolRecovery",
    "SyncPolicy",
]

#: The header name the producer is suggested to carry a record's stable id under.
DEFAULT_ID_HEADER = "trio-producer-id"

SyncPolicy: TypeAlias = Literal["never", "interval", "always"]
_SYNC_POLICIES = ("never", "interval", "always")

_MIN_SEGMENT = 4096
#: The system calls that can meet a full disk, by name: a seam for tests that make the
#: disk full without filling one.
_write = os.write
_fallocate = os.posix_fallocate
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_DEFAULT_SEGMENT = 64 << 20


class SpoolError(TrioProducerError):
    """The spool cannot do what was asked (see the message)."""


class SpoolLockedError(SpoolError):
    """Another process (or another open in this one) holds the spool directory.

    Attributes:
        path: The spool directory.
        pid: The pid written by the holder, or ``None`` when it could not be read.
    """

    def __init__(self, path: Path, pid: int | None) -> None:
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(
            f"spool {str(path)!r} is locked by {holder}: one producer per spool directory"
        )
        self.path = path
        self.pid = pid


class SpoolFullError(SpoolError):
    """The spool holds ``max_bytes``: nothing was written. Wait for confirmations."""


class SpoolDiskFullError(SpoolError):
    """The disk under the spool has no room for the next segment file: nothing of the
    call was written (what the spool accepted before stays). Room comes back when
    confirmations let the spool delete segments, or when the disk is cleaned up.

    Attributes:
        path: The spool directory.
    """

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(message)
        self.path = path


def _describe(exc: OSError, path: Path) -> str:
    """A disk condition, for logs and ``Spool.disk_error``."""
    what = "no space left on the device" if exc.errno in _DISK_FULL else "the disk failed"
    return f"{what} ({str(path)!r}): {exc}"


class _Reader:
    """Where ``Spool.read_from`` continues: a read-only mapping of one segment."""

    __slots__ = ("buf", "pos", "seg", "seq", "size", "uuid")

    def __init__(
        self, seg: _Segment, buf: mmap.mmap, size: int, pos: int, seq: int, uuid: bytes
    ) -> None:
        self.seg = seg
        self.buf = buf
        self.size = size
        self.pos = pos
        self.seq = seq
        self.uuid = uuid

    def close(self) -> None:
        # The view belongs to its segment (and may be read again): just let it go.
        self.buf = None  # type: ignore[assignment]


class Spool(Recovery):
    """An append-only, CRC-framed segment log of messages waiting for confirmation.

    Open it with :meth:`Spool.open`. Not thread-safe beyond the rule in the module
    docstring: one owning thread appends and confirms; ``sync``/``maintain``/``close`` may
    run in another thread.

    Attributes:
        path: The spool directory.
        uuid: This run's 16 random bytes: the first part of every id it gives out.
        recovered: The unconfirmed records an earlier process left, in append order.
            They stay in the spool until confirmed. The producer should take the list
            (and may then clear it) to send them before anything new.
        recovery: Counters of what opening found (:class:`SpoolRecovery`).
        sync_policy: ``"never"``, ``"interval"`` or ``"always"``. The spool only records
            it (and fsyncs sealed segments in :meth:`maintain` unless ``"never"``); the
            producer calls :meth:`sync` accordingly.
        sync_interval: Seconds between syncs for ``"interval"``.
        max_bytes: The bound on the segment files' total size.
        segment_bytes: The size of each segment file.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        segment_bytes: int,
        sync: SyncPolicy,
        sync_interval: float,
    ) -> None:
        # Use Spool.open(); this only sets the fields.
        self.path = path
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.sync_policy: SyncPolicy = sync
        self.sync_interval = sync_interval
        self.uuid = uuid_module.uuid4().bytes
        self.recovered: list[SpoolRecord] = []
        self.recovery = SpoolRecovery()
        self._lock_fd = -1
        self._lock_id = (0, 0)
        # The hand-off mark (owning thread): see note_handed.
        self._handed = -1
        self._handed_fd = -1
        self._io_lock = threading.Lock()
        self._closed = False
        # Owned by the appending thread.
        self._topics: dict[str, bytes] = {}
        self._seq = 0
        self._run_first_seq = 0
        self._next_index = 0
        self._seg: _Segment | None = None
        self._mm: Any = None
        self._pos = 0
        self._limit = 0
        self._segments: list[_Segment] = []
        self._firsts: list[int] = []
        self._fg_allocated = 0
        self._dir_dirty = False
        # Handed to the background thread (list append/pop are atomic).
        self._to_close: list[_Segment] = []
        self._dead: list[_Segment] = []
        # Written only by the background thread (except _spare -> None, see _take_spare).
        self._spare: _Segment | None = None
        self._bg_allocated = 0
        self._freed = 0
        self._synced_seq = -1
        # The read cursor of read_from (owning thread).
        self._reader: _Reader | None = None
        # Disk conditions, each with one writer: a new segment could not be created
        # (owning thread), the ack log could not be written (owning thread), no spare
        # could be created (background thread). A string while it lasts.
        self._append_error: str | None = None
        self._ack_error: str | None = None
        self._spare_error: str | None = None
        self._spare_retry = False  # retry_spare() was called: try again once
        #: Confirmations not written to their ack log (disk full), per segment (owning
        #: thread): written before the next ones, dropped when their segment goes.
        self._unwritten: dict[_Segment, array[int]] = {}

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        max_bytes: int,
        segment_bytes: int | None = None,
        sync: SyncPolicy = "never",
        sync_interval: float = 0.1,
    ) -> Spool:
        """Lock the spool directory (creating it), recover what it holds, and open it.

        Blocking (reads every segment): call it from a thread in async code.

        Args:
            path: The spool directory; created if missing.
            max_bytes: The most the segment files may take on disk together.
            segment_bytes: The size of each segment file (default: 64 MiB, or a quarter
                of ``max_bytes`` when that is smaller). At most ``max_bytes // 2``; the
                largest record must fit in one segment.
            sync: The sync policy (see :attr:`sync_policy`).
            sync_interval: Seconds between syncs for ``"interval"``.

        Raises:
            SpoolLockedError: Another process holds the directory.
            ValueError: A size or policy is not allowed.
            OSError: The directory cannot be created, read or written.
        """
        if type(max_bytes) is not int or max_bytes < 2 * _MIN_SEGMENT:
            raise ValueError(f"max_bytes must be an int >= {2 * _MIN_SEGMENT}, not {max_bytes!r}")
        if segment_bytes is None:
            segment_bytes = max(_MIN_SEGMENT, min(_DEFAULT_SEGMENT, max_bytes // 4))
        if type(segment_bytes) is not int or not (_MIN_SEGMENT <= segment_bytes <= max_bytes // 2):
            raise ValueError(
                f"segment_bytes must be an int from {_MIN_SEGMENT} to max_bytes // 2 "
                f"({max_bytes // 2}), not {segment_bytes!r}"
            )
        if sync not in _SYNC_POLICIES:
            raise ValueError(f"sync must be one of {_SYNC_POLICIES}, not {sync!r}")
        if not isinstance(sync_interval, int | float) or not sync_interval > 0:
            raise ValueError(
                f"sync_interval must be a number of seconds > 0, not {sync_interval!r}"
            )
        spool = cls(
            Path(path),
            max_bytes=max_bytes,
            segment_bytes=segment_bytes,
            sync=sync,
            sync_interval=float(sync_interval),
        )
        spool.path.mkdir(parents=True, exist_ok=True)
        spool._lock()
        st = os.fstat(spool._lock_fd)
        spool._lock_id = (st.st_dev, st.st_ino)
        try:
            spool._recover()
            spool._open_handed()
            try:
                fresh = spool._new_segment_file(spool.segment_bytes)
                try:
                    spool._start_segment(fresh, spool.segment_bytes)
                except BaseException:
                    spool._close_segment_files(fresh, acks=True)
                    fresh.path.unlink(missing_ok=True)
                    raise
            except OSError as exc:
                # Recovery needs no new space: open without an active segment; the
                # first append creates one, or is refused (SpoolDiskFullError).
                spool._append_error = _describe(exc, spool.path)
                logger.error(
                    "spool %r opened without a segment for new messages (%s): the "
                    "recovered messages are sent; new ones are refused until there is room",
                    str(spool.path),
                    spool._append_error,
                )
        except BaseException:
            spool._release_all()
            raise
        return spool

    def _lock(self) -> None:
        lock_path = self.path / "LOCK"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                pid: int | None = int(os.pread(fd, 32, 0).decode().strip())
            except ValueError:
                pid = None
            os.close(fd)
            raise SpoolLockedError(self.path, pid) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            pid_line = f"{os.getpid()}\n".encode()
            os.pwrite(fd, pid_line, 0)
            os.ftruncate(fd, len(pid_line))
        except OSError:
            os.ftruncate(fd, 0)  # a full disk: the pid stays unknown, the lock holds
        self._lock_fd = fd

    @staticmethod
    def _seal_segment(seg: _Segment, end: int) -> None:
        """Write the seal into a segment's header (in its mapping): it takes no more
        records, and its last seq is ``end - 1``. Recovery counts every seq missing
        below ``end`` as lost, also once the segments after it were deleted."""
        mm = seg.mm
        if mm is None:
            return
        seal = seal_bytes(mm, end)
        mm[SEAL_AT : SEAL_AT + len(seal)] = seal

    def _open_handed(self) -> None:
        """Open the hand-off mark's file and write the mark carried over (a full disk:
        no file, and the next recovery counts every record as possibly sent)."""
        path = self.path / "HANDED"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError:
            path.unlink(missing_ok=True)
            return
        self._handed_fd = fd
        self._write_handed(self._handed)

    def _write_handed(self, mark: int) -> None:
        data = handed_bytes(mark)
        try:
            if os.pwrite(self._handed_fd, data, 0) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            # Unknown from now on: the next recovery counts every record.
            os.close(self._handed_fd)
            self._handed_fd = -1
            (self.path / "HANDED").unlink(missing_ok=True)

    def note_handed(self, upto: int) -> None:
        """Record, before records are handed to Kafka, that none above ``upto`` was.

        What ``SpoolRecovery.duplicates_possible`` counts after a crash: only recovered
        records at or below the mark may already be in Kafka. One ``pwrite`` when the
        mark grows (nothing otherwise). Owning thread.
        """
        if upto > self._handed:
            self._handed = upto
            if self._handed_fd >= 0:
                self._write_handed(upto)

    # ------------------------------------------------------------------ segments

    def _new_segment_file(self, size: int) -> _Segment:
        """Create and preallocate a spare segment file (blocking: ~1 ms)."""
        tmp = self.path / f"spare-{os.urandom(8).hex()}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            _fallocate(fd, 0, size)
            mm = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        seg = _Segment(tmp, -1, -1, self.uuid, size)
        seg.fd = fd
        seg.mm = mm
        return seg

    def _start_segment(self, seg: _Segment, size: int) -> None:
        """Make a spare file the active segment (owning thread)."""
        index = self._next_index
        head = segment_head(self.uuid, self._seq, index)
        mm = seg.mm
        assert mm is not None
        mm[: len(head)] = head
        # A read-only view for read_from, made while the file is open in this thread:
        # store and forward reads back through it even if the directory goes away.
        view = mmap.mmap(seg.fd, size, access=mmap.ACCESS_READ)
        final = self.path / _seg_name(index)
        os.rename(seg.path, final)  # (may fail: nothing below has happened then)
        seg.view = view
        self._next_index += 1
        seg.index = index
        seg.first_seq = self._seq
        seg.path = final
        self._dir_dirty = True
        self._segments.append(seg)
        self._firsts.append(seg.first_seq)
        self._fg_allocated += size
        self._seg = seg
        self._mm = mm
        self._pos = SEGMENT_HEADER_SIZE
        self._limit = size

    def _take_spare(self) -> _Segment | None:
        # Only the background thread sets _spare (when it saw None); only this thread
        # clears it (when it saw a segment): no update is lost.
        spare = self._spare
        if spare is not None:
            self._spare = None
            self._fg_allocated -= spare.size  # counted by the background thread already
        return spare

    def _room_for_segment(self) -> bool:
        return self._spare is not None or self.used_bytes + self.segment_bytes <= self.max_bytes

    def _check_fits(self, need: int) -> None:
        if self._closed:
            raise SpoolError(f"spool {str(self.path)!r} is closed")
        if need > self.segment_bytes - SEGMENT_HEADER_SIZE:
            raise SpoolError(
                f"a record of {need} bytes does not fit in a spool segment of "
                f"{self.segment_bytes} bytes (segment_bytes - {SEGMENT_HEADER_SIZE})"
            )

    def _full_error(self, extra: str = "") -> SpoolFullError:
        return SpoolFullError(
            f"spool {str(self.path)!r} is full ({self.used_bytes} of {self.max_bytes} "
            f"bytes{extra}): waiting for delivery confirmations"
        )

    def _rotate(self, need: int, fresh: _Segment | None = None) -> None:
        """Seal the active segment and start the next, for a write of ``need`` bytes."""
        self._check_fits(need)
        if fresh is None:
            fresh = self._take_spare()
        if fresh is None:
            if self.used_bytes + self.segment_bytes > self.max_bytes:
                raise self._full_error()
            try:
                fresh = self._new_segment_file(self.segment_bytes)
            except OSError as exc:
                raise self._segment_error(exc) from exc
        try:
            self._start_segment_after(fresh)
        except OSError as exc:
            self._fg_allocated += fresh.size
            self._dead.append(fresh)  # maintain() deletes the file
            raise self._segment_error(exc) from exc
        self._append_error = None

    def _segment_error(self, exc: OSError) -> SpoolError:
        """A new segment could not be made: the error for the call (and log it, once
        per episode)."""
        description = _describe(exc, self.path)
        if self._append_error is None:
            logger.error(
                "spool %r: cannot create a new segment (%s): new messages are refused "
                "until there is room",
                str(self.path),
                description,
            )
        self._append_error = description
        if exc.errno in _DISK_FULL:
            return SpoolDiskFullError(
                self.path,
                f"spool {str(self.path)!r}: no space left on the device for a new segment "
                f"({self.segment_bytes} bytes): nothing of the call was accepted ({exc})",
            )
        return SpoolError(
            f"spool {str(self.path)!r}: cannot create a new segment: nothing of the call "
            f"was accepted ({exc})"
        )

    def _start_segment_after(self, fresh: _Segment) -> None:
        """Seal the active segment (if any) and make ``fresh`` the active one."""
        old = self._seg
        if old is None:  # opened on a full disk: the first segment of this run
            self._start_segment(fresh, fresh.size)
            return
        # The new file first: if it fails, the active segment stays as it is.
        self._start_segment(fresh, fresh.size)
        self._seal_segment(old, self._seq)
        old.count = self._seq - old.first_seq
        if len(old.done) < old.count:
            old.done.extend(bytes(old.count - len(old.done)))
        # Grown ahead while it was active: cut to its records, so that a seq past them
        # (of a later segment, deleted) is ignored, never counted here.
        del old.done[old.count :]
        old.sealed = True
        self._to_close.append(old)
        if old.ndone >= old.count:
            self._retire(old)

    def _retire(self, seg: _Segment) -> None:
        i = self._segments.index(seg)
        del self._segments[i]
        del self._firsts[i]
        seg.view = None
        self._unwritten.pop(seg, None)  # its records go with it: nothing to record
        self._dead.append(seg)

    # ------------------------------------------------------------------ appending

    def append(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes | None]] | None = None,
        partition: int = -1,
        timestamp: int = 0,
    ) -> int:
        """Spool one message; return its seq. It survives ``kill -9`` once this returns.

        One copy into the shared mapping; no system call except at a segment's end.

        Args:
            topic: The topic.
            value: The value (bytes) or ``None``.
            key: The key (bytes) or ``None``.
            headers: ``(name, value)`` pairs with ``str`` names, or ``None``.
            partition: A partition, or ``-1``.
            timestamp: Milliseconds since the epoch, or ``0``.

        Raises:
            SpoolFullError: ``max_bytes`` reached; nothing was written.
            SpoolError: The spool is closed, or the record exceeds a segment.
        """
        tb = self._topics.get(topic)
        if tb is None:
            tb = self._topics[topic] = topic.encode()
        seq = self._seq
        rec = encode_record(seq, tb, value, key, headers, partition, timestamp)
        pos = self._pos
        end = pos + len(rec)
        if end > self._limit:
            self._rotate(len(rec))
            pos = self._pos
            end = pos + len(rec)
        self._mm[pos:end] = rec
        self._pos = end
        self._seq = seq + 1
        return seq

    def append_many(self, records: Iterable[Sequence[Any]]) -> int:
        """Spool a batch; return the seq of its first record (the rest follow in order).

        All or nothing: on an exception nothing of the batch was spooled. One copy into
        the mapping per segment the batch touches.

        Args:
            records: Sequences whose first six fields are ``(topic, value, key, headers,
                partition, timestamp)`` (the producer's queue items fit; more fields are
                ignored).

        Raises:
            SpoolFullError: The whole batch does not fit in ``max_bytes``.
            SpoolDiskFullError: The disk has no room for a new segment the batch needs.
            SpoolError: The spool is closed, or a record exceeds a segment, or a new
                segment file cannot be made. (One exception to all or nothing: if the
                directory is removed or made read-only between two segments of one
                batch, the records written before stay; the producer never spools a
                batch across segments.)
        """
        first = self._seq
        chunks = encode_records(first, records, self._topics)
        data = b"".join(chunks)
        if not self._write_batch(data):
            if not chunks:
                return first
            self._append_across(chunks)
        self._seq = first + len(chunks)
        return first

    def append_values(
        self, topic: str, values: Sequence[bytes | None], keys: Sequence[bytes | None] | None = None
    ) -> int:
        """Spool a batch for one topic, without headers, partitions or timestamps: what
        :meth:`append_many` does with ``(topic, value, key, None, -1, 0)`` records, with
        less to do per record (the producer's bulk path). Return the seq of the first.

        Args:
            topic: The topic of every record.
            values: The values (bytes or ``None``).
            keys: The keys (bytes or ``None``), as many as ``values``; ``None``: no keys.

        Raises:
            SpoolFullError: The whole batch does not fit in ``max_bytes``.
            SpoolError: The spool is closed, or a record exceeds a segment.
        """
        if keys is not None or None in values:
            if keys is None:
                keys = [None] * len(values)
            pairs = zip(values, keys, strict=True)
            return self.append_many([(topic, v, k, None, -1, 0) for v, k in pairs])
        plain = cast("Sequence[bytes]", values)
        tb = self._topics.get(topic)
        if tb is None:
            tb = self._topics[topic] = topic.encode()
        first = self._seq
        parts = encode_values(first, tb, plain)
        if not self._write_batch(b"".join(parts)):
            if not parts:
                return first
            self._append_across(pair_up(parts))
        self._seq = first + len(parts) // 2
        return first

    def _write_batch(self, data: bytes) -> bool:
        """Copy a batch of records into the active segment if it fits there (else False,
        nothing written). The first magic last: a batch cut short by a crash reads as
        uncommitted."""
        if not data:
            return True
        pos = self._pos
        end = pos + len(data)
        if end > self._limit:
            return False
        mm = self._mm
        mm[pos + 4 : end] = memoryview(data)[4:]
        mm[pos : pos + 4] = MAGIC_BYTES
        self._pos = end
        return True

    def _append_across(self, chunks: list[bytes]) -> None:
        """``append_many``'s path when the batch crosses into new segments."""
        # Plan, and create the new segment files, before writing anything: all or nothing.
        room = self._limit - self._pos
        seg_room = self.segment_bytes - SEGMENT_HEADER_SIZE
        new_segments = 0
        for c in chunks:
            self._check_fits(len(c))
            if len(c) > room:
                new_segments += 1
                room = seg_room
            room -= len(c)
        need = (new_segments - (self._spare is not None)) * self.segment_bytes
        if need > 0 and self.used_bytes + need > self.max_bytes:
            raise self._full_error(f"; the batch needs {need} more")
        fresh: list[_Segment] = []
        spare = self._take_spare()
        if spare is not None:
            fresh.append(spare)
        try:
            while len(fresh) < new_segments:
                fresh.append(self._new_segment_file(self.segment_bytes))
        except BaseException as exc:
            for seg in fresh:
                self._fg_allocated += seg.size
                self._dead.append(seg)  # maintain() deletes the files
            if isinstance(exc, OSError):
                raise self._segment_error(exc) from exc
            raise
        group: list[bytes] = []
        room = self._limit - self._pos
        seq = self._seq
        for c in chunks:
            if len(c) > room:
                self._write_group(group)
                self._seq = seq  # the new segment's first seq
                self._rotate(len(c), fresh.pop(0))
                group = []
                room = self._limit - self._pos
            group.append(c)
            room -= len(c)
            seq += 1
        self._write_group(group)

    def _write_group(self, group: list[bytes]) -> None:
        if not group:
            return
        data = b"".join(group)
        pos = self._pos
        end = pos + len(data)
        self._mm[pos + 4 : end] = memoryview(data)[4:]
        self._mm[pos : pos + 4] = MAGIC_BYTES
        self._pos = end

    # ------------------------------------------------------------------ confirming

    def read_from(self, seq: int, limit: int) -> list[SpoolRecord]:
        """Up to ``limit`` records from ``seq`` on, in order, as this process appended them.

        For a producer that keeps only part of what it spooled in memory (store and
        forward): it reads the rest back when it has room. Sequential reads are O(1) per
        record (a cursor); the first read from a new place skips records by their length.
        Reads through a read-only mapping of its own, so a segment that ``maintain``
        closes (or even deletes) in another thread stays readable. Owning thread only.

        Raises:
            ValueError: ``seq`` was not appended by this process, or is not appended yet.
        """
        if not self._run_first_seq <= seq <= self._seq:
            raise ValueError(
                f"seq {seq} is not a record of this run ({self._run_first_seq}..{self._seq - 1})"
            )
        out: list[SpoolRecord] = []
        cursor = self._reader
        if cursor is None or cursor.seq != seq:
            if cursor is not None:
                cursor.close()
            cursor = self._reader = self._open_reader(seq)
        while len(out) < limit and cursor.seq < self._seq:
            end = self._pos if cursor.seg is self._seg else cursor.size
            parsed = parse_record(cursor.buf, cursor.pos, end)
            if parsed is None:
                # The end of a sealed segment: the next one starts at cursor.seq.
                cursor.close()
                cursor = self._reader = self._open_reader(cursor.seq)
                continue
            length, rseq, fields = parsed
            if rseq != cursor.seq:  # pragma: no cover - a bug, never a silent skip
                raise SpoolError(f"spool read expected seq {cursor.seq}, found {rseq}")
            out.append(SpoolRecord(rseq, cursor.uuid + rseq.to_bytes(8, "big"), *fields))
            cursor.pos += length
            cursor.seq += 1
        return out

    def _open_reader(self, seq: int) -> _Reader:
        i = bisect.bisect_right(self._firsts, seq) - 1
        if i < 0:
            raise ValueError(f"seq {seq} is in no segment of this spool")
        seg = self._segments[i]
        buf = seg.view
        if buf is None:  # pragma: no cover - every segment of this run has a view
            raise SpoolError(f"spool segment {seg.path.name} has no view to read")
        size = len(buf)
        pos = SEGMENT_HEADER_SIZE
        for _ in range(seq - seg.first_seq):  # skip to seq by the records' lengths
            pos += record_length_at(buf, pos)
        return _Reader(seg, buf, size, pos, seq, seg.uuid)

    def confirm(self, seq: int) -> None:
        """Record that message ``seq`` was delivered (see :meth:`confirm_many`)."""
        self.confirm_many((seq,))

    def confirm_many(self, seqs: Iterable[int]) -> None:
        """Record deliveries: one ``os.write`` to each touched segment's ack log.

        Written to the OS before returning, so a ``kill -9`` afterwards does not send
        them again. A segment whose records are all confirmed, and which is no longer
        the active one, is handed to :meth:`maintain` for deletion. Seqs already
        confirmed (or in deleted segments) are ignored.

        Raises:
            ValueError: A seq this spool never gave out.
        """
        if self._unwritten:
            self._write_unwritten()
        if isinstance(seqs, list | tuple | range) and len(seqs) > 8 and self._confirm_run(seqs):
            return
        firsts = self._firsts
        segments = self._segments
        touched: dict[_Segment, array[int]] = {}
        top = self._seq
        try:
            for seq in seqs:
                if not 0 <= seq < top:
                    raise ValueError(f"seq {seq!r} was never appended to this spool")
                i = bisect.bisect_right(firsts, seq) - 1
                if i < 0:
                    continue  # older than every live segment: confirmed and deleted
                seg = segments[i]
                done = seg.done
                idx = seq - seg.first_seq
                if idx >= len(done):
                    if seg.sealed:
                        continue
                    done.extend(bytes(max(idx + 1, 2 * len(done), 1024) - len(done)))
                elif done[idx]:
                    continue
                done[idx] = 1
                seg.ndone += 1
                acks = touched.get(seg)
                if acks is None:
                    acks = touched[seg] = array("Q")
                acks.append(seq)
        finally:
            for seg, acks in touched.items():
                self._write_acks(seg, acks)

    def _confirm_run(self, seqs: Sequence[int]) -> bool:
        """``confirm_many``'s common case in C-speed steps: ``seqs`` are distinct, none
        confirmed yet, and fill a range of one segment (the reports of a batch, in any
        order). Return False, having done nothing, when that is not the case."""
        lo = min(seqs)
        hi = max(seqs)
        n = len(seqs)
        if hi - lo + 1 != n or lo < 0 or hi >= self._seq:
            return False
        i = bisect.bisect_right(self._firsts, lo) - 1
        if i < 0 or (i + 1 < len(self._firsts) and hi >= self._firsts[i + 1]):
            return False
        seg = self._segments[i]
        done = seg.done
        a = lo - seg.first_seq
        b = a + n
        if b > len(done):
            if seg.sealed:
                return False
            done.extend(bytes(max(b, 2 * len(done), 1024) - len(done)))
        if done.find(1, a, b) >= 0 or len(set(seqs)) != n:
            return False  # some confirmed already, or repeated: one by one
        done[a:b] = b"\x01" * n
        seg.ndone += n
        self._write_acks(seg, array("Q", seqs))
        return True

    def _write_acks(self, seg: _Segment, acks: array[int]) -> None:
        held = self._unwritten.get(seg)
        if held is not None:
            acks = held + acks
        if self._append_acks(seg, acks):
            self._unwritten.pop(seg, None)
            if not self._unwritten:
                self._ack_error = None
        else:
            self._unwritten[seg] = acks
        if seg.sealed and seg.ndone >= seg.count:
            self._retire(seg)  # deleted: what it could not record does not matter

    def _append_acks(self, seg: _Segment, acks: array[int]) -> bool:
        """One frame of confirmations to the segment's ack log; False (logged at ERROR
        once per episode) when the disk refuses it: then nothing of it is in the log."""
        frame = ack_frame(acks)
        try:
            if seg.ack_fd < 0:
                seg.ack_fd = os.open(
                    seg.ack_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644
                )
                self._dir_dirty = True
            written = _write(seg.ack_fd, frame)
            if written != len(frame):
                # Part of a frame (the disk filled in the middle): cut it, or the
                # frames after it could not be read.
                os.ftruncate(seg.ack_fd, seg.ack_bytes)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as exc:
            if self._ack_error is None:
                what = "no space left on the device" if exc.errno in _DISK_FULL else "an error"
                logger.error(
                    "spool %r: %s for the confirmation log (%s): delivery goes on; "
                    "messages confirmed from now on are sent again by the next run "
                    "unless the log can be written before it ends",
                    str(self.path),
                    what,
                    exc,
                )
            self._ack_error = _describe(exc, self.path)
            return False
        seg.ack_bytes += len(frame)
        return True

    def _write_unwritten(self) -> None:
        """Try again to record the confirmations a full disk held back."""
        for seg, acks in list(self._unwritten.items()):
            if not self._append_acks(seg, acks):
                return
            del self._unwritten[seg]
        self._ack_error = None

    # ------------------------------------------------------------------ state

    def directory_intact(self) -> bool:
        """Whether the spool's files are still where the next :meth:`open` looks: its
        ``LOCK`` file is the one this spool holds (``False`` once the directory was
        removed or replaced). Blocking (one ``stat``)."""
        try:
            st = os.stat(self.path / "LOCK")
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._lock_id

    @property
    def disk_error(self) -> str | None:
        """The disk condition the spool is in, or ``None``: no room for a new segment
        (new messages are refused), for the ack log (confirmations held in memory), or
        for the spare segment."""
        return self._append_error or self._ack_error or self._spare_error

    @property
    def unrecorded_confirmations(self) -> int:
        """Confirmations a full disk keeps out of the ack logs (held in memory, written
        when there is room; if the process ends first, those messages are sent again)."""
        return sum(len(acks) for acks in self._unwritten.values())

    @property
    def used_bytes(self) -> int:
        """Bytes the segment files take (live, spare, and deleted-but-not-yet-unlinked)."""
        return self._fg_allocated + self._bg_allocated - self._freed

    @property
    def next_seq(self) -> int:
        """The seq the next append gets."""
        return self._seq

    @property
    def synced_seq(self) -> int:
        """Every record with a seq up to this one is on disk (``-1``: none known)."""
        return self._synced_seq

    @property
    def pending(self) -> int:
        """Records appended (or recovered) and not yet confirmed."""
        total = 0
        for seg in self._segments:
            count = seg.count if seg.sealed else self._seq - seg.first_seq
            total += count - seg.ndone
        return total

    @property
    def maintenance_due(self) -> bool:
        """Whether :meth:`maintain` has work: segments to close or delete, no spare."""
        return bool(self._to_close or self._dead) or (
            self._spare is None
            and (self._spare_error is None or self._spare_retry)  # see retry_spare()
            and not self._closed
            and self.used_bytes + self.segment_bytes <= self.max_bytes
        )

    @property
    def spare_failed(self) -> bool:
        """The last try to create the spare segment failed (no room): :meth:`maintain`
        tries again after :meth:`retry_spare`, or once it has deleted a segment."""
        return self._spare_error is not None and not self._spare_retry

    def retry_spare(self) -> None:
        """Let the next :meth:`maintain` try to create the spare segment again (its
        caller waits between tries: a full disk is not retried in a loop)."""
        with self._io_lock:
            self._spare_retry = self._spare_error is not None

    def has_room(self, nbytes: int) -> bool:
        """Whether a record of ``nbytes`` encoded bytes can be appended now.

        ``nbytes`` is ``RECORD_OVERHEAD`` + the UTF-8 topic + key + value (+ for each
        header ``HEADER_OVERHEAD`` + name + value). When this is false, ``append``
        raises :class:`SpoolFullError`: wait for confirmations (and :meth:`maintain`).
        """
        return self._pos + nbytes <= self._limit or self._room_for_segment()

    @property
    def segment_room(self) -> int:
        """Bytes the active segment still takes: a batch of records that fits in them is
        written by :meth:`append_many` into the mapping alone, with no new segment file
        and so no system call and no error (``0`` once closed)."""
        return max(0, self._limit - self._pos)

    def id_of(self, seq: int) -> bytes:
        """The stable 24-byte id of a live record (see :attr:`SpoolRecord.id`).

        Raises:
            KeyError: ``seq`` is not in the spool (never appended, or confirmed and
                deleted).
        """
        if self._run_first_seq <= seq < self._seq:
            return self.uuid + seq.to_bytes(8, "big")
        i = bisect.bisect_right(self._firsts, seq) - 1
        if i < 0 or seq >= self._seq:
            raise KeyError(seq)
        return self._segments[i].uuid + seq.to_bytes(8, "big")

    # ------------------------------------------------------------------ background

    def sync(self) -> int:
        """Make every record appended before the call, and every ack, durable (fsync).

        Blocking (an ``fsync`` per touched file): run it in a thread. Safe while the
        owning thread appends and confirms. Also does :meth:`maintain`'s work.

        Returns:
            The highest seq now on disk (also :attr:`synced_seq`); ``-1`` if none.
        """
        with self._io_lock:
            if self._closed:
                raise SpoolError(f"spool {str(self.path)!r} is closed")
            target = self._seq - 1
            active = self._seg  # read after target: a rotation in between lands in _to_close
            sealed = list(self._to_close)
            for seg in [*sealed, active]:
                if seg is not None and seg.fd >= 0:
                    os.fsync(seg.fd)
            for seg in list(self._segments):
                if seg.ack_fd >= 0:
                    os.fsync(seg.ack_fd)
            if self._dir_dirty:
                self._dir_dirty = False
                self._fsync_dir()
            if target > self._synced_seq:
                self._synced_seq = target
            self._maintain_locked(synced=True)
            return self._synced_seq

    def maintain(self) -> None:
        """Close sealed segments (fsynced first unless the policy is ``"never"``), delete
        fully confirmed ones, and preallocate the next segment.

        Blocking (unlink of a large file, ``posix_fallocate``): run it in a thread when
        :attr:`maintenance_due`. Safe while the owning thread appends and confirms.
        """
        with self._io_lock:
            if not self._closed:
                self._maintain_locked(synced=False)

    def _maintain_locked(self, *, synced: bool) -> None:
        while self._to_close:
            seg = self._to_close.pop(0)
            if not synced and self.sync_policy != "never" and seg.fd >= 0:
                os.fsync(seg.fd)
            self._close_segment_files(seg, acks=False)
        freed = False
        while self._dead:
            seg = self._dead.pop(0)
            self._close_segment_files(seg, acks=True)
            seg.path.unlink(missing_ok=True)
            seg.ack_path.unlink(missing_ok=True)
            self._freed += seg.size
            self._dir_dirty = True
            freed = True
        if (
            self._spare is None
            and (self._spare_error is None or freed or self._spare_retry)
            and self.used_bytes + self.segment_bytes <= self.max_bytes
        ):
            self._spare_retry = False
            try:
                spare = self._new_segment_file(self.segment_bytes)
            except OSError as exc:
                # Not fatal: the next rotation tries (and refuses its call if it
                # fails too). Logged once per episode; retried after retry_spare().
                if self._spare_error is None:
                    logger.warning(
                        "spool %r: cannot create the spare segment (%s); trying again later",
                        str(self.path),
                        _describe(exc, self.path),
                    )
                self._spare_error = _describe(exc, self.path)
            else:
                self._bg_allocated += spare.size
                self._spare = spare
                if self._spare_error is not None:
                    logger.info(
                        "spool %r: the spare segment could be created again", str(self.path)
                    )
                self._spare_error = None

    @staticmethod
    def _close_segment_files(seg: _Segment, *, acks: bool) -> None:
        if seg.mm is not None:
            seg.mm.close()
            seg.mm = None
        if seg.fd >= 0:
            os.close(seg.fd)
            seg.fd = -1
        if acks and seg.ack_fd >= 0:
            os.close(seg.ack_fd)
            seg.ack_fd = -1

    def _fsync_dir(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close the spool: fsync (unless the policy is ``"never"``), delete what is
        confirmed, unlock. Unconfirmed records stay for the next :meth:`open`.

        Blocking: run it in a thread, after the last append and confirm. Idempotent.
        """
        with self._io_lock:
            if self._closed:
                return
            if self._reader is not None:
                self._reader.close()
                self._reader = None
            try:
                if self._unwritten:
                    self._write_unwritten()
                    if self._unwritten:
                        logger.error(
                            "spool %r: %d confirmation(s) could not be written (%s): those "
                            "messages will be sent again by the next run",
                            str(self.path),
                            self.unrecorded_confirmations,
                            self.disk_error,
                        )
                # The active segment takes no more records: sealed before the fsync.
                if self._seg is not None and not self._seg.sealed:
                    self._seal_segment(self._seg, self._seq)
                if self.sync_policy != "never":
                    try:
                        for seg in [*self._to_close, *self._segments]:
                            if seg.fd >= 0:
                                os.fsync(seg.fd)
                            if seg.ack_fd >= 0:
                                os.fsync(seg.ack_fd)
                    except OSError as exc:
                        # Not raised: the producer's exit must still say what it could
                        # not deliver. What the kernel holds may still reach the disk.
                        logger.error(
                            "spool %r: the final fsync failed (%s): messages accepted "
                            "since the last sync may not survive a power loss",
                            str(self.path),
                            exc,
                        )
                # Everything is sealed now; a fully confirmed active segment goes too.
                active = self._seg
                if active is not None and not active.sealed:
                    active.count = self._seq - active.first_seq
                    active.sealed = True
                    if active.ndone >= active.count:
                        self._retire(active)
                while self._to_close:
                    self._close_segment_files(self._to_close.pop(0), acks=False)
                while self._dead:
                    seg = self._dead.pop(0)
                    self._close_segment_files(seg, acks=True)
                    seg.path.unlink(missing_ok=True)
                    seg.ack_path.unlink(missing_ok=True)
                    self._freed += seg.size
                spare = self._spare
                if spare is not None:
                    self._spare = None
                    self._close_segment_files(spare, acks=True)
                    spare.path.unlink(missing_ok=True)
                    self._freed += spare.size
                if self.sync_policy != "never":
                    try:
                        self._fsync_dir()
                    except OSError as exc:
                        logger.error(
                            "spool %r: cannot fsync the directory: %s", str(self.path), exc
                        )
            finally:
                self._closed = True
                self._release_all()

    def _release_all(self) -> None:
        spare = [self._spare] if self._spare is not None else []
        for seg in [*self._to_close, *self._segments, *self._dead, *spare]:
            self._close_segment_files(seg, acks=True)
            seg.view = None  # unmapped once no reader holds it
        self._reader = None
        self._mm = None
        self._seg = None
        self._pos = 1
        self._limit = 0
        if self._handed_fd >= 0:
            os.close(self._handed_fd)
            self._handed_fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Spool {str(self.path)!r} used={self.used_bytes}/{self.max_bytes} "
            f"next_seq={self._seq} sync={self.sync_policy!r}>"
        )

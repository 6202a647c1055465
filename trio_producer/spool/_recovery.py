"""Opening a spool directory: read every segment and ack log, count what is damaged.

Part of :class:`~trio_producer.spool._engine.Spool` (its base class :class:`Recovery`),
apart because it runs once, at ``Spool.open``, and is most of the engine's rules about
damage (see the engine's module docstring): which bytes are a torn tail, which are
corruption, which records are lost, and which come back as ``Spool.recovered``. The
bytes are read with :mod:`._format`.
"""

from __future__ import annotations

import logging
import os
import uuid as uuid_module
from typing import TYPE_CHECKING, Any, NamedTuple

from ._format import (
    SEAL_AT,
    SEGMENT_HEADER_SIZE,
    SpoolRecord,
    cut_short,
    header_first_seq,
    next_record,
    parse_ack_frames,
    parse_handed,
    parse_record,
    parse_segment_head,
    read_seal,
    record_seq_at,
    seal_bytes,
)
from ._segment import _Segment

if TYPE_CHECKING:
    from pathlib import Path

logger = logging.getLogger("trio_producer")


class SpoolRecovery(NamedTuple):
    """What opening a spool found.

    Attributes:
        recovered: Unconfirmed records handed back in ``Spool.recovered``.
        segments: Segment files read.
        torn_tails: Segments that ended in a partly written record (a crash
            mid-append); each was cut off after its last whole record.
        torn_tail_bytes: Bytes cut off those tails.
        corrupt_records: Records skipped because their checksum did not match (lost;
            logged at ERROR).
        corrupt_bytes: Bytes skipped with them.
        corrupt_acks: Ack batches skipped (their messages count as unconfirmed: sent
            again, never lost).
        duplicates_possible: How many of the recovered records may already be in Kafka
            (delivered but not confirmed when the earlier process ended): those at or
            below the hand-off mark (``HANDED``: before handing records to Kafka, the
            producer records that none above a seq was handed, see
            ``Spool.note_handed``). Every recovered record when the mark is unknown.
    """

    recovered: int = 0
    segments: int = 0
    torn_tails: int = 0
    torn_tail_bytes: int = 0
    corrupt_records: int = 0
    corrupt_bytes: int = 0
    corrupt_acks: int = 0
    duplicates_possible: int = 0


class Recovery:
    """The recovery half of :class:`~trio_producer.spool._engine.Spool` (its base)."""

    # The Spool's state that recovery fills in (see Spool.__init__).
    path: Path
    recovered: list[SpoolRecord]
    recovery: SpoolRecovery
    _segments: list[_Segment]
    _firsts: list[int]
    _fg_allocated: int
    _dir_dirty: bool
    _seq: int
    _run_first_seq: int
    _next_index: int
    _handed: int

    def _recover(self) -> None:
        for tmp in self.path.glob("spare-*.tmp"):
            tmp.unlink()
        found = SpoolRecovery()
        max_seq = -1
        paths: dict[int, Path] = {}
        for seg_path in self.path.glob("*.seg"):
            try:
                paths[int(seg_path.stem)] = seg_path
            except ValueError:
                continue
        orphans: dict[int, Path] = {}
        for ack in self.path.glob("*.ack"):
            try:
                index = int(ack.stem)
            except ValueError:
                continue
            if index not in paths:
                orphans[index] = ack
        max_index = max(paths, default=-1)
        # The hand-off mark: evidence of what the newest segment held (every seq at or
        # below it was accepted).
        mark = self._read_handed()
        handed = mark if mark is not None else -1
        prev_index, prev_end = -2, None  # the segment before, and its end seq
        for index in sorted({*paths, *orphans}):
            if index in orphans:
                # The segment file is gone, its ack log is not: its records were accepted
                # (confirmed ones are in the log); the rest are lost, up to the next
                # segment that exists.
                after = [paths[i] for i in sorted(paths) if i > index]
                following = next((f for f in map(header_first_seq, after) if f is not None), None)
                found, top = self._report_missing(
                    found, orphans[index], prev_end if prev_index == index - 1 else None, following
                )
                max_seq = max(max_seq, top)
                prev_index, prev_end = index, top + 1 if top >= 0 else None
                continue
            seg_path = paths[index]
            found = found._replace(segments=found.segments + 1)
            # Only the newest segment can end in a torn write: one that was rotated has a
            # seal in its header (see _seal_segment), and one that a later segment
            # follows was sealed too (a crash may have come before its seal was written).
            # The next segment's header says where its records must end.
            successor = paths.get(index + 1)
            next_first = header_first_seq(successor) if successor is not None else None
            seg, records, found, top = self._recover_segment(
                seg_path,
                index,
                found,
                newest=index == max_index,
                next_first=next_first,
                prev_end=prev_end if prev_index == index - 1 else None,
                handed=handed,
            )
            max_seq = max(max_seq, top)
            prev_index, prev_end = index, top + 1 if top >= 0 else None
            if seg is None:
                seg_path.unlink()
                seg_path.with_suffix(".ack").unlink(missing_ok=True)
                self._dir_dirty = True
                continue
            self.recovered.extend(records)
            self._segments.append(seg)
            self._firsts.append(seg.first_seq)
            self._fg_allocated += seg.size
        for ack in orphans.values():
            ack.unlink()  # counted above
            self._dir_dirty = True
        # New seqs start past every seq the spool ever gave out that it can still tell.
        self._seq = self._run_first_seq = max(max_seq, handed) + 1
        self._next_index = max(max_index, *orphans, -1) + 1
        n = len(self.recovered)
        if mark == -1 and n and not (self.path / "HANDED").exists():
            mark = None  # records but no mark: it could not be written
        if mark is None:  # unknown (an older spool, or the mark could not be written)
            duplicates = n
        else:
            duplicates = sum(1 for r in self.recovered if r.seq <= mark)
            self._handed = mark
        self.recovery = found._replace(recovered=n, duplicates_possible=duplicates)
        if n or found.torn_tails or found.corrupt_records:
            logger.info(
                "spool %s: recovered %d unconfirmed message(s) from %d segment(s) "
                "(torn tails: %d, %d bytes; corrupt records: %d)",
                self.path,
                n,
                found.segments,
                found.torn_tails,
                found.torn_tail_bytes,
                found.corrupt_records,
            )

    def _report_missing(
        self, found: SpoolRecovery, ack_path: Path, start: int | None, following: int | None
    ) -> tuple[SpoolRecovery, int]:
        """Count and log (ERROR) the records of a segment file that is gone while its ack
        log remains: its seqs run from ``start`` (the previous segment's end; else its
        first confirmed seq) up to the next segment's first seq (else its last confirmed
        one). Returns the counters and the highest seq it held (-1: unknown)."""
        acked, bad = self._read_acks(ack_path)
        found = found._replace(corrupt_acks=found.corrupt_acks + bad)
        lo = start if start is not None else min(acked, default=None)
        hi = following if following is not None else max(acked, default=-2) + 1
        if lo is None or hi <= lo:
            return found, max(acked, default=-1)
        lost = sum(1 for seq in range(lo, hi) if seq not in acked)
        if lost:
            logger.error(
                "spool %s: segment %s is missing (its ack log remains): seqs %d..%d missing, "
                "%d unconfirmed record(s) lost",
                self.path,
                ack_path.with_suffix(".seg").name,
                lo,
                hi - 1,
                lost,
            )
            found = found._replace(corrupt_records=found.corrupt_records + lost)
        return found, hi - 1

    def _recover_segment(
        self,
        seg_path: Path,
        index: int,
        found: SpoolRecovery,
        *,
        newest: bool,
        next_first: int | None,
        prev_end: int | None,
        handed: int,
    ) -> tuple[_Segment | None, list[SpoolRecord], SpoolRecovery, int]:
        data = seg_path.read_bytes()
        size = len(data)
        top = -1
        seal: int | None = None
        fields = parse_segment_head(data) if size >= SEGMENT_HEADER_SIZE else None
        if fields is None:
            if not data.strip(b"\0"):
                return None, [], found, top  # a segment created but never written
            logger.error(
                "spool %s: segment %s has a corrupt header; its records get new ids",
                self.path,
                seg_path.name,
            )
            seg_uuid = uuid_module.uuid4().bytes
            first_seq = -1
        else:
            seg_uuid, first_seq = fields.uuid, fields.first_seq
            top = first_seq - 1
            seal = read_seal(data)
        # Where the records must end (one past the last seq), when that is known: the
        # seal, or the next segment's first seq.
        end = seal if seal is not None else next_first
        sealed = end is not None or not newest
        # Confirmations: evidence too (each seq in the log was accepted in this segment).
        acked, bad_acks = self._read_acks(seg_path.with_suffix(".ack"))
        if bad_acks:
            found = found._replace(corrupt_acks=found.corrupt_acks + bad_acks)
        # The newest, unsealed segment: every seq up to this one was accepted into it.
        proven = -1 if sealed else max(handed, max(acked, default=-1))
        data_end = len(data.rstrip(b"\0"))
        # Scan the records.
        entries: list[tuple[int, Any]] = []
        pos = SEGMENT_HEADER_SIZE
        if first_seq >= 0:
            prev_seq: int | None = first_seq - 1
        elif prev_end is not None:
            prev_seq = prev_end - 1  # the header is gone: the previous segment's end
        else:
            prev_seq = None
        cut_at = -1
        tail_reported = False
        stop: int | None
        while pos < data_end:
            parsed = parse_record(data, pos, size)
            if parsed is not None:
                length, seq, rec = parsed
                entries.append((seq, rec))
                prev_seq = seq
                pos += length
                continue
            if not sealed:
                this = None if prev_seq is None else prev_seq + 1
                if cut_short(data, pos):
                    # The file ends inside a record: a preallocated file does not shrink
                    # through a crash, so this is damage: the record, and every seq
                    # proven accepted after it, is lost.
                    upto = max(proven, this if this is not None else -1)
                    found = self._report_lost(
                        found, seg_path, pos, size - pos, prev_seq, upto + 1, cut_short=True
                    )
                    top = max(top, upto)
                    tail_reported = True
                    break
                accepted = this is not None and this <= proven
                # A zero magic is an uncommitted write (append_many writes its first
                # magic last): everything from here on was never accepted -- unless the
                # hand-off mark or the ack log prove the record accepted.
                uncommitted = not accepted and data[pos : pos + 4] == b"\0\0\0\0"
                nxt = None if uncommitted else next_record(data, pos + 1, data_end, size)
                if nxt is None and not accepted:
                    found = found._replace(
                        torn_tails=found.torn_tails + 1,
                        torn_tail_bytes=found.torn_tail_bytes + data_end - pos,
                    )
                    cut_at = pos
                    break
            else:
                nxt = next_record(data, pos + 1, data_end, size)
            if nxt is None:
                # Damage up to the end: accepted records lost.
                stop = end if sealed else proven + 1
                found = self._report_lost(found, seg_path, pos, data_end - pos, prev_seq, stop)
                if stop is not None:
                    top = max(top, stop - 1)
                tail_reported = True
                break
            next_seq = record_seq_at(data, nxt)
            found = self._report_lost(found, seg_path, pos, nxt - pos, prev_seq, next_seq)
            pos = nxt
        stop = end if sealed else proven + 1
        if not tail_reported and prev_seq is not None and stop is not None and stop > prev_seq + 1:
            # Records missing after the last whole one (zeroed: lost on the way to the
            # disk, or damaged, or the file cut short) although they were accepted.
            found = self._report_lost(found, seg_path, data_end, 0, prev_seq, stop)
            top = max(top, stop - 1)
        if cut_at >= 0:
            # Cut the torn tail so a later recovery does not count it again.
            fd = os.open(seg_path, os.O_RDWR)
            try:
                os.pwrite(fd, bytes(min(size, data_end) - cut_at), cut_at)
                os.fsync(fd)
            finally:
                os.close(fd)
        if entries:
            top = max(top, max(seq for seq, _ in entries))
            if first_seq < 0:
                first_seq = min(seq for seq, _ in entries)
        pending = [(seq, rec) for seq, rec in entries if seq not in acked]
        if not pending:
            return None, [], found, top
        if fields is not None and seal is None:
            # Sealed now: a later segment (this run's) follows, and may be deleted before
            # this one; the seal keeps this one's end known (damage at it is corruption).
            self._seal_file(seg_path, data, top + 1)
        seg = _Segment(seg_path, index, first_seq, seg_uuid, size)
        span = top - first_seq + 1
        seg.done = bytearray(b"\x01") * span
        for seq, _ in pending:
            seg.done[seq - first_seq] = 0
        seg.count = span
        seg.ndone = span - len(pending)
        seg.sealed = True
        seg.ack_bytes = (
            seg_path.with_suffix(".ack").stat().st_size
            if seg_path.with_suffix(".ack").exists()
            else 0
        )
        records = [
            SpoolRecord(seq, seg_uuid + seq.to_bytes(8, "big"), *rec) for seq, rec in pending
        ]
        return seg, records, found, top

    def _seal_file(self, seg_path: Path, head: bytes, end: int) -> None:
        """Write the seal into a recovered segment's header (see :meth:`_seal_segment`)."""
        seal = seal_bytes(head, end)
        try:
            fd = os.open(seg_path, os.O_RDWR | os.O_CLOEXEC)
            try:
                os.pwrite(fd, seal, SEAL_AT)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            logger.warning(
                "spool %s: cannot seal segment %s (%s): damage at its end would be taken "
                "for a torn write once it is the newest file",
                self.path,
                seg_path.name,
                exc,
            )

    def _report_lost(
        self,
        found: SpoolRecovery,
        seg_path: Path,
        pos: int,
        nbytes: int,
        prev_seq: int | None,
        next_seq: int | None,
        *,
        cut_short: bool = False,
    ) -> SpoolRecovery:
        """Count and log (ERROR) records lost to damage between ``prev_seq`` and
        ``next_seq`` (exclusive; ``None``: unknown, then at least one is counted).
        ``cut_short``: the file ends early, records after ``next_seq`` may be lost too."""
        if prev_seq is not None and next_seq is not None:
            lost = max(next_seq - prev_seq - 1, 0)
            seqs = f"seqs {prev_seq + 1}..{next_seq - 1} lost" if lost else "no seq lost"
            if cut_short:
                seqs += " (at least: the file ends inside a record)"
        else:
            lost = 1
            seqs = "seqs unknown lost (at least 1)"
        logger.error(
            "spool %s: segment %s: %d corrupt record(s) skipped at offset %d "
            "(%d bytes, checksum mismatch or zeroed); %s, the rest recovered",
            self.path,
            seg_path.name,
            lost,
            pos,
            nbytes,
            seqs,
        )
        return found._replace(
            corrupt_records=found.corrupt_records + lost,
            corrupt_bytes=found.corrupt_bytes + nbytes,
        )

    def _read_handed(self) -> int | None:
        """The hand-off mark an earlier process left, or ``None`` when unknown."""
        try:
            data = (self.path / "HANDED").read_bytes()
        except FileNotFoundError:
            return None if self.recovered else -1
        return parse_handed(data)

    def _read_acks(self, ack_path: Path) -> tuple[set[int], int]:
        try:
            data = ack_path.read_bytes()
        except FileNotFoundError:
            return set(), 0
        frames, bad, pos = parse_ack_frames(data)
        acked: set[int] = set()
        for seqs in frames:
            acked.update(seqs)
        for at, count in bad:
            logger.warning(
                "spool %s: %s: a corrupt ack batch at offset %d: %d message(s) will be sent again",
                self.path,
                ack_path.name,
                at,
                count,
            )
        if pos < len(data):
            # A torn last batch (or an unreadable count): cut it, so that new batches
            # appended after it can be read. Its seqs count as unconfirmed.
            os.truncate(ack_path, pos)
        return acked, len(bad)

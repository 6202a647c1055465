"""The spool's on-disk format: every byte layout, encoded and parsed here only.

Plain functions over ``bytes``/``mmap`` buffers, standard library only: the engine
(:mod:`._engine`) decides where the bytes go and when, this module what they are. A
change of format is a change of this module (and of ``SEGMENT_VERSION``).

Record framing (little-endian)::

    u32 magic | u32 length (whole record) | u64 seq | i64 timestamp | i32 partition
    | i32 key length (-1: None) | i32 value length (-1: None) | u16 topic length
    | u16 header count | topic | key | value | headers... | u32 crc32 (of all before it)

    header: u16 name length | i32 value length (-1: None) | name | value

Segment header (the first ``SEGMENT_HEADER_SIZE`` bytes of a segment file): ``_SEG_HEAD``
(magic, version, flags, the run's uuid, the first seq, the index) and its crc32, then
the seal (``_SEAL``: the end seq, one past the last record, with a crc32 chained from
the header's).

Ack log: frames of ``u32 count | u32 crc32 of the seqs`` then ``count`` u64 seqs.

Hand-off mark (``HANDED``): ``i64 mark | u32 crc32 of it``.
"""

from __future__ import annotations

import struct
import zlib
from array import array
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path

__all__ = [
    "HEADER_OVERHEAD",
    "MAGIC_BYTES",
    "RECORD_OVERHEAD",
    "SEGMENT_HEADER_SIZE",
    "HeaderList",
    "SegmentHead",
    "SpoolRecord",
    "ack_frame",
    "cut_short",
    "encode_record",
    "encode_records",
    "encode_values",
    "handed_bytes",
    "header_first_seq",
    "next_record",
    "parse_ack_frames",
    "parse_handed",
    "parse_record",
    "parse_segment_head",
    "read_seal",
    "record_length_at",
    "record_seq_at",
    "seal_bytes",
    "segment_head",
]

#: Headers as the spool stores them.
HeaderList: TypeAlias = list[tuple[str, bytes | None]]

_MAGIC = 0x7C5A_0D1E
#: A record's first four bytes. A batch is copied with its first magic written last:
#: a zero magic followed by data is a batch that never returned (see the engine).
MAGIC_BYTES = _MAGIC.to_bytes(4, "little")
_HEAD = struct.Struct("<IIQqiiiHH")
_HDR_ITEM = struct.Struct("<Hi")
_U32 = struct.Struct("<I")
_LENGTH = struct.Struct("<II")  # magic, length
_pack_head = _HEAD.pack
#: Per topic length: the head and the topic packed in one call (``encode_values``).
_HEADS: dict[int, Any] = {}
_pack_u32 = _U32.pack
_crc32 = zlib.crc32
#: Bytes a record takes besides its topic, key, value and headers.
RECORD_OVERHEAD = _HEAD.size + 4
#: Bytes each header takes besides its name and value.
HEADER_OVERHEAD = _HDR_ITEM.size

_SEG_MAGIC = b"TPSPOOL1"
SEGMENT_VERSION = 1
_SEG_HEAD = struct.Struct("<8sHH16sQQ")  # magic, version, flags, uuid, first seq, index
#: Where a segment's records start.
SEGMENT_HEADER_SIZE = 64
#: The seal, after the header's crc: the end seq (one past the last record), and a crc32
#: of it chained from the header's. Written when the segment stops taking records.
SEAL_AT = _SEG_HEAD.size + 4
_SEAL = struct.Struct("<QI")
_ACK_FRAME = struct.Struct("<II")  # count, crc32 of the packed seqs
_HANDED = struct.Struct("<qI")  # the hand-off mark, crc32 of it


class SpoolRecord(NamedTuple):
    """One spooled message, as recovery (or ``Spool.read_from``) hands it back.

    Attributes:
        seq: Its sequence number in this spool (what ``confirm`` takes).
        id: Its stable id, 24 bytes: the 16-byte uuid of the process run that spooled
            it, then ``seq`` as 8 big-endian bytes. The same after every recovery.
        topic: The topic.
        value: The value, or ``None``.
        key: The key, or ``None``.
        headers: ``(name, value)`` pairs, or ``None`` when it had none.
        partition: The partition, or ``-1`` for "let the partitioner choose".
        timestamp: Milliseconds since the epoch, or ``0`` for "now".
    """

    seq: int
    id: bytes
    topic: str
    value: bytes | None
    key: bytes | None
    headers: HeaderList | None
    partition: int
    timestamp: int


# ---------------------------------------------------------------------------- records


def _encode_headers(headers: Sequence[tuple[str, bytes | None]]) -> bytes:
    parts: list[bytes] = []
    for name, value in headers:
        nb = name.encode()
        if value is None:
            parts.append(_HDR_ITEM.pack(len(nb), -1))
            parts.append(nb)
        else:
            parts.append(_HDR_ITEM.pack(len(nb), len(value)))
            parts.append(nb)
            parts.append(value)
    return b"".join(parts)


def encode_record(
    seq: int,
    tb: bytes,
    value: bytes | None,
    key: bytes | None,
    headers: Sequence[tuple[str, bytes | None]] | None,
    partition: int,
    timestamp: int,
) -> bytes:
    """The framed record: the one definition of a record's bytes.

    Args:
        seq: Its seq.
        tb: The topic, UTF-8 encoded.
        value: The value or ``None``.
        key: The key or ``None``.
        headers: ``(name, value)`` pairs, or ``None``.
        partition: A partition, or ``-1``.
        timestamp: Milliseconds since the epoch, or ``0``.
    """
    if key is None:
        kl = -1
        key = b""
    else:
        kl = len(key)
    if value is None:
        vl = -1
        value = b""
    else:
        vl = len(value)
    length = RECORD_OVERHEAD + len(tb) + len(key) + len(value)
    if headers:
        hb = _encode_headers(headers)
        head = _pack_head(
            _MAGIC, length + len(hb), seq, timestamp, partition, kl, vl, len(tb), len(headers)
        )
        rec = b"".join((head, tb, key, value, hb))
    else:
        head = _pack_head(_MAGIC, length, seq, timestamp, partition, kl, vl, len(tb), 0)
        rec = b"".join((head, tb, key, value))
    return rec + _pack_u32(_crc32(rec))


def encode_records(
    first: int, records: Iterable[Sequence[Any]], topics: dict[str, bytes]
) -> list[bytes]:
    """:func:`encode_record` of each of ``records`` (``(topic, value, key, headers,
    partition, timestamp, ...)``), with seqs from ``first`` on; ``topics`` caches the
    encoded topics."""
    out: list[bytes] = []
    append = out.append
    seq = first
    for r in records:
        topic = r[0]
        tb = topics.get(topic)
        if tb is None:
            tb = topics[topic] = topic.encode()
        append(encode_record(seq, tb, r[1], r[2], r[3], r[4], r[5]))
        seq += 1
    return out


def encode_values(first: int, tb: bytes, values: Sequence[bytes]) -> list[bytes]:
    """The records of ``values`` for one topic (UTF-8 ``tb``) with no key, no headers,
    partition ``-1``, timestamp ``0``, seqs from ``first`` on -- exactly the bytes
    :func:`encode_record` makes for them, built with one pack per record (the bulk
    path). Returned as ``[record without crc, crc, record without crc, crc, ...]``:
    ``b"".join`` of it is the batch; :func:`pair_up` makes it one item per record."""
    tl = len(tb)
    head = _HEADS.get(tl)
    if head is None:
        head = _HEADS[tl] = struct.Struct(f"{_HEAD.format}{tl}s").pack
    base = RECORD_OVERHEAD + tl
    # No keys, no headers, timestamp 0, partition -1: the head and topic in one pack.
    recs = [
        head(_MAGIC, base + len(v), seq, 0, -1, -1, len(v), tl, 0, tb) + v
        for seq, v in zip(range(first, first + len(values)), values, strict=True)
    ]
    crc32 = _crc32
    pack_crc = _pack_u32
    crcs = [pack_crc(crc32(r)) for r in recs]
    parts: list[bytes] = [b""] * (2 * len(recs))
    parts[::2] = recs
    parts[1::2] = crcs
    return parts


def pair_up(parts: list[bytes]) -> list[bytes]:
    """:func:`encode_values`' parts as one item per record."""
    return [r + c for r, c in zip(parts[::2], parts[1::2], strict=True)]


def parse_record(buf: Any, pos: int, end: int) -> tuple[int, int, Any] | None:
    """``(length, seq, (topic, value, key, headers, partition, timestamp))`` of a valid
    record at ``pos`` (ending by ``end``), else ``None``."""
    if pos + RECORD_OVERHEAD > end:
        return None
    magic, length, seq, ts, part, kl, vl, tl, nh = _HEAD.unpack_from(buf, pos)
    if magic != _MAGIC or length < RECORD_OVERHEAD or pos + length > end:
        return None
    stop = pos + length - 4
    if zlib.crc32(buf[pos:stop]) != _U32.unpack_from(buf, stop)[0]:
        return None
    p = pos + _HEAD.size
    topic = bytes(buf[p : p + tl]).decode()
    p += tl
    key = None
    if kl >= 0:
        key = bytes(buf[p : p + kl])
        p += kl
    value = None
    if vl >= 0:
        value = bytes(buf[p : p + vl])
        p += vl
    headers: HeaderList | None = None
    if nh:
        headers = []
        for _ in range(nh):
            nl, hl = _HDR_ITEM.unpack_from(buf, p)
            p += _HDR_ITEM.size
            name = bytes(buf[p : p + nl]).decode()
            p += nl
            if hl < 0:
                headers.append((name, None))
            else:
                headers.append((name, bytes(buf[p : p + hl])))
                p += hl
    if p != stop:
        return None
    return length, seq, (topic, value, key, headers, part, ts)


def record_length_at(buf: Any, pos: int) -> int:
    """The length field of the (valid) record at ``pos``."""
    return int(_U32.unpack_from(buf, pos + 4)[0])


def record_seq_at(buf: Any, pos: int) -> int:
    """The seq field of the (valid) record at ``pos``."""
    return int(_HEAD.unpack_from(buf, pos)[2])


def cut_short(data: bytes, pos: int) -> bool:
    """Whether the file ends inside a record starting at ``pos`` (it was truncated:
    nothing was ever written past a segment's end)."""
    size = len(data)
    if pos + RECORD_OVERHEAD > size:
        return bool(data[pos:].strip(b"\0"))
    magic, length = _LENGTH.unpack_from(data, pos)
    return bool(magic == _MAGIC and pos + length > size)


def next_record(data: bytes, start: int, data_end: int, size: int) -> int | None:
    """The offset of the next valid record at or after ``start``, or ``None``."""
    pos = data.find(MAGIC_BYTES, start, data_end)
    while pos >= 0:
        if parse_record(data, pos, size) is not None:
            return pos
        pos = data.find(MAGIC_BYTES, pos + 1, data_end)
    return None


# ---------------------------------------------------------------------------- segments


class SegmentHead(NamedTuple):
    """A segment header's fields."""

    uuid: bytes
    first_seq: int
    number: int


def segment_head(uuid: bytes, first_seq: int, index: int) -> bytes:
    """A new segment's header and its crc32 (no seal yet)."""
    head = _SEG_HEAD.pack(_SEG_MAGIC, SEGMENT_VERSION, 0, uuid, first_seq, index)
    return head + _U32.pack(zlib.crc32(head))


def parse_segment_head(data: Any) -> SegmentHead | None:
    """The fields of a valid segment header at the start of ``data``, else ``None``."""
    if len(data) < _SEG_HEAD.size + 4 or data[:8] != _SEG_MAGIC:
        return None
    if zlib.crc32(data[: _SEG_HEAD.size]) != _U32.unpack_from(data, _SEG_HEAD.size)[0]:
        return None
    _, _, _, uuid, first_seq, index = _SEG_HEAD.unpack_from(data, 0)
    return SegmentHead(uuid, first_seq, index)


def header_first_seq(seg_path: Path) -> int | None:
    """The first seq a segment file's header names, or ``None`` if unreadable."""
    try:
        with seg_path.open("rb") as f:
            head = f.read(_SEG_HEAD.size + 4)
    except OSError:
        return None
    parsed = parse_segment_head(head)
    return None if parsed is None else parsed.first_seq


def seal_bytes(head: Any, end: int) -> bytes:
    """The seal naming ``end`` for the segment whose (valid) header ``head`` starts
    with; it goes at ``SEAL_AT``."""
    packed = struct.pack("<Q", end)
    return packed + _U32.pack(zlib.crc32(packed, _U32.unpack_from(head, _SEG_HEAD.size)[0]))


def read_seal(head: Any) -> int | None:
    """The end seq a segment's seal names, or ``None`` (not sealed, or damaged); the
    header must be valid."""
    head_crc = _U32.unpack_from(head, _SEG_HEAD.size)[0]
    end, crc = _SEAL.unpack_from(head, SEAL_AT)
    if zlib.crc32(bytes(head[SEAL_AT : SEAL_AT + 8]), head_crc) != crc:
        return None
    return int(end)


# ---------------------------------------------------------------------------- acks, mark


def ack_frame(acks: array[int]) -> bytes:
    """One frame of the ack log: confirmed seqs (``array("Q")``)."""
    body = acks.tobytes()
    return _ACK_FRAME.pack(len(acks), zlib.crc32(body)) + body


def parse_ack_frames(data: bytes) -> tuple[list[array[int]], list[tuple[int, int]], int]:
    """An ack log's frames: ``(the seqs of each valid frame, (offset, count) of each
    corrupt one, where the whole frames end)``. A torn last frame ends them."""
    good: list[array[int]] = []
    bad: list[tuple[int, int]] = []
    pos = 0
    while pos + _ACK_FRAME.size <= len(data):
        count, crc = _ACK_FRAME.unpack_from(data, pos)
        stop = pos + _ACK_FRAME.size + 8 * count
        if count == 0 or stop > len(data):
            break  # a torn last batch: those seqs are sent again
        body = data[pos + _ACK_FRAME.size : stop]
        if zlib.crc32(body) == crc:
            good.append(array("Q", body))
        else:
            bad.append((pos, count))
        pos = stop
    return good, bad, pos


HANDED_SIZE = _HANDED.size


def handed_bytes(mark: int) -> bytes:
    """The hand-off mark file's content."""
    packed = struct.pack("<q", mark)
    return packed + _U32.pack(zlib.crc32(packed))


def parse_handed(data: bytes) -> int | None:
    """The mark in a hand-off mark file's content, or ``None`` (damaged)."""
    if len(data) != _HANDED.size:
        return None
    mark, crc = _HANDED.unpack(data)
    if zlib.crc32(data[:8]) != crc:
        return None
    return int(mark)

"""The PS wire format: one fixed binary header frame, then at most one raw array frame. No pickle.

    frames = encode(Header(MsgType.UPDATE, sender=2, table=7, clock=41, row_end=8), delta)
    header, payload = decode(frames, senders={0, 1, 2}, tables={7: TableShape(1000, 128)})

The header is HEADER (little-endian, 56 bytes):

    magic 4s | version u16 | type u16 | sender u32 | table u32 | clock i64 | row_begin u64
    | row_end u64 | payload_len u64 | dtype u8 | flags u8 | 2 pad bytes | checksum u32

`checksum` is the CRC-32C (Castagnoli) of the 52 bytes before it, continued over the payload
when `flags` has PAYLOAD_CRC (the default). A payload frame follows if and only if payload_len > 0;
it is the array's own buffer (sent with copy=False, received as a read-only view). Each type
carries:

    ROWS  (INIT, UPDATE, PUSH, READ_REP): rows [row_begin, row_end) of `table`; the payload is
          their min(row_end * row_size, num_values) - row_begin * row_size values (table dtype)
    RANGE (READ_REQ): a row range of `table`, no payload
    SPEC  (CREATE): `table`'s shape as int64 [num_values, row_size]
    PARTS (UPDATES, PUSHES): row_end = n parts, listed by n PART entries (int64 table, row_begin,
          row_end, clock) appended to the header frame; the payload is the values of the parts
          with rows, concatenated in index order. A part without rows (0, 0) is a CLOCK of its
          table (UPDATES only; ALL_TABLES allowed). UPDATES: every part's clock is the header's;
          PUSHES: each part's clock is its data age, at most the header's.
    NOTE  (HELLO, CHECKPOINT, SHUTDOWN, ERROR): optional uint8 text (config, path, reason, error)
    TICK  (HEARTBEAT, CLOCK, BARRIER): the clock alone (CLOCK also names a table, or ALL_TABLES)

`clock` is the sender's clock (PUSH/READ_REP: the data age); -1 means "none yet". decode validates
every field (of every part too) before anything is used and raises WireError naming the peer and
the first fault. The checksum of a PARTS message covers its index after the header's 52 bytes.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import crc32c
import numpy

from geeps_net.errors import WireError

MAGIC = b"GPS1"
VERSION = 3  # 3: UPDATES and PUSHES (many ranges in one message); 2: CRC-32C (1 had zlib's CRC-32)
HEADER = struct.Struct("<4sHHIIqQQQBBxxI")
CRC_SPAN = HEADER.size - 4  # bytes of the header the checksum covers (all but itself)
PAYLOAD_CRC = 1  # flags bit: the checksum covers the payload too
ALL_TABLES = 0xFFFFFFFF  # CLOCK's table for "every table"
MAX_ROWS = 1 << 40  # a row index beyond this is corrupt, whatever the table claims
PART = struct.Struct("<qqqq")  # a PARTS message's index entry: table, row_begin, row_end, clock
MAX_PARTS = 1 << 20  # more parts than this in one message is corrupt

DTYPES = {1: "float32", 2: "float64", 3: "int32", 4: "int64", 5: "uint8"}  # code 0: no payload
DTYPE_CODES = {numpy.dtype(name): code for code, name in DTYPES.items()}


class MsgType(enum.IntEnum):
    """Message types; the comment says who sends it and what `clock` means."""

    HELLO = 1  # worker -> server on connect; clock = last completed clock, payload = its PsConfig
    HEARTBEAT = 2  # both ways every heartbeat_s; clock = the sender's current clock
    CREATE = 3  # worker -> server: table shape; every worker, same order
    INIT = 4  # worker 0 -> server: initial rows
    UPDATE = 5  # worker -> server: delta rows of one clock
    CLOCK = 6  # worker -> server: finished `clock` of `table`
    PUSH = 7  # server -> worker: rows including every update up to data age `clock`
    READ_REQ = 8  # worker -> server: send me these rows now (resume, snapshot)
    READ_REP = 9  # server -> worker: the rows asked for; clock = their data age
    BARRIER = 10  # both ways: wait until everyone reached `clock`
    CHECKPOINT = 11  # both ways: write (or wrote) a checkpoint at `clock`; payload = path
    SHUTDOWN = 12  # both ways: the sender leaves cleanly; payload = reason
    ERROR = 13  # both ways: the sender failed; payload = its one-line error (UTF-8)
    UPDATES = 14  # worker -> server: deltas and CLOCKs of one clock, in order, for many ranges
    PUSHES = 15  # server -> worker: many ranges' values, each at its data age


BODY = {  # MsgType -> what it carries (see the module docstring)
    MsgType.HELLO: "NOTE",
    MsgType.HEARTBEAT: "TICK",
    MsgType.CREATE: "SPEC",
    MsgType.INIT: "ROWS",
    MsgType.UPDATE: "ROWS",
    MsgType.CLOCK: "TICK",
    MsgType.PUSH: "ROWS",
    MsgType.READ_REQ: "RANGE",
    MsgType.READ_REP: "ROWS",
    MsgType.BARRIER: "TICK",
    MsgType.CHECKPOINT: "NOTE",
    MsgType.SHUTDOWN: "NOTE",
    MsgType.ERROR: "NOTE",
    MsgType.UPDATES: "PARTS",
    MsgType.PUSHES: "PARTS",
}
TYPES = {int(t): t for t in MsgType}  # decode's lookup: a dict is faster than MsgType(code)
TABLE_TYPES = frozenset(t for t, body in BODY.items() if body in ("ROWS", "RANGE", "SPEC"))


class TableShape(NamedTuple):
    """What decode needs to know of a table (geeps_net.ps.tables.TableSpec has the same fields)."""

    num_values: int
    row_size: int
    dtype: str = "float32"


class Part(NamedTuple):
    """One entry of a PARTS message: rows [row_begin, row_end) of `table` at `clock` and their
    values (a read-only view when decoded); rows (0, 0) and no values: a CLOCK of the table."""

    table: int
    row_begin: int
    row_end: int
    clock: int
    values: numpy.ndarray | None = None


class Packed(NamedTuple):
    """A PARTS payload whose values are already concatenated in index order (`values`, one
    buffer sent as it is, zero-copy); the parts' own `values` are ignored."""

    parts: Sequence[Part]
    values: numpy.ndarray | None


def pack(parts: Sequence[Part]) -> Packed:
    """`parts` with their values copied into one new buffer, to encode once or many times."""
    values = [part.values for part in parts if part.values is not None]
    return Packed(parts, numpy.concatenate(values) if values else None)


@dataclass(frozen=True)
class Header:
    """The fields a sender chooses; payload length, dtype and checksum are derived by encode."""

    type: MsgType
    sender: int
    table: int = 0
    clock: int = -1
    row_begin: int = 0
    row_end: int = 0

    def __post_init__(self) -> None:
        if type(self.type) is not MsgType:  # a plain int from a caller (MsgType() is slow)
            object.__setattr__(self, "type", MsgType(self.type))

    @property
    def rows(self) -> range:
        """range(row_begin, row_end)."""
        return range(self.row_begin, self.row_end)


Frames = list[Any]  # bytes, memoryview, numpy array or zmq.Frame: anything with the buffer protocol
Senders = Container[int] | Callable[[int], bool]


def checksum(data, value: int = 0) -> int:
    """CRC-32C of the bytes of `data` (any buffer), continuing from `value`.

    Castagnoli's polynomial has the same error-detecting strength as zlib's CRC-32 and a CPU
    instruction (SSE4.2, ARMv8 CRC): several GB/s where zlib.crc32 manages under 2, which is what a
    64 MiB payload checked on both ends costs (tools/bench_ps.py).
    """
    return crc32c.crc32c(data, value=value)


def values_of(shape: TableShape, row_begin: int, row_end: int) -> int:
    """Values in rows [row_begin, row_end) of a table: the last row of the table may be short."""
    return min(row_end * shape.row_size, shape.num_values) - row_begin * shape.row_size


def num_rows(shape: TableShape) -> int:
    """ceil(num_values / row_size)."""
    return -(-shape.num_values // shape.row_size)


def encode(
    header: Header,
    payload: numpy.ndarray | bytes | Sequence[Part] | Packed | None = None,
    *,
    payload_crc: bool = True,
) -> Frames:
    """[header bytes] or [header bytes, payload]; the payload frame is the array itself (no copy).

    A PARTS message (UPDATES, PUSHES) takes a list of Part as `payload` and header.row_end ==
    len(parts): the index goes after the header, the parts' values are concatenated into a new
    payload (a copy, so the caller may change them once encode returns); or a Packed, whose
    values go as they are.

    `payload` must be C-contiguous host memory (stage a CuPy array first). The caller must not write
    to it until the send is done: zmq reads it after send returns (a later change fails the CRC).
    payload_crc=False leaves the payload out of the checksum (saves one pass over it on each side;
    TCP's own checks remain).
    """
    index = b""
    if BODY[header.type] == "PARTS":
        index, payload = _pack_parts(header, payload)
    elif isinstance(payload, bytes | bytearray | memoryview):
        payload = numpy.frombuffer(payload, dtype="uint8")
    view, code = b"", 0
    if payload is not None and payload.size:
        if not payload.flags.c_contiguous:
            raise WireError(f"encode {header.type.name}: payload must be C-contiguous")
        code = DTYPE_CODES.get(payload.dtype)
        if code is None:
            raise WireError(f"encode {header.type.name}: payload dtype {payload.dtype} not in wire")
        view = memoryview(payload).cast("B")
    fields = (MAGIC, VERSION, int(header.type), header.sender, header.table, header.clock)
    flags = PAYLOAD_CRC if payload_crc else 0
    fields += (header.row_begin, header.row_end, len(view), code, flags, 0)
    try:
        head = bytearray(HEADER.pack(*fields) + index)
    except struct.error as e:
        raise WireError(f"encode {header.type.name} from sender {header.sender}: {e}") from None
    crc = checksum(memoryview(head)[:CRC_SPAN])
    crc = checksum(index, crc) if index else crc
    crc = checksum(view, crc) if payload_crc else crc
    struct.pack_into("<I", head, CRC_SPAN, crc)
    return [bytes(head), payload] if len(view) else [bytes(head)]


def _pack_parts(header: Header, parts) -> tuple[bytes, numpy.ndarray | None]:
    """(index bytes, concatenated values or None) of a PARTS message."""
    packed = parts if isinstance(parts, Packed) else None
    parts = packed.parts if packed is not None else parts
    if not isinstance(parts, Sequence) or header.row_begin or header.row_end != len(parts):
        n = len(parts) if isinstance(parts, Sequence) else "no list of"
        raise WireError(
            f"encode {header.type.name}: rows [{header.row_begin}, {header.row_end}) "
            f"must be [0, n) for {n} parts"
        )
    try:
        index = b"".join(PART.pack(*part[:4]) for part in parts)
    except struct.error as e:
        raise WireError(f"encode {header.type.name} from sender {header.sender}: {e}") from None
    return index, (packed or pack(parts)).values  # pack copies: the parts may change after


def decode(
    frames: Sequence[Any],
    *,
    senders: Senders,
    tables: Mapping[int, TableShape] | None = None,
    peer: str = "",
) -> tuple[Header, numpy.ndarray | None]:
    """Validate `frames` (without the ROUTER identity) and return (Header, read-only payload view).

    `senders` says which sender ids are welcome (a container or a predicate); `tables` maps table
    id to its shape (TableShape or TableSpec), needed for ROWS and RANGE messages. `peer` names the
    socket-level peer in errors. The payload is 1-D in its wire dtype (None when there is none).
    """
    who = peer or "unknown peer"
    if not 1 <= len(frames) <= 2:
        raise WireError(f"message from {who}: {len(frames)} frames, expected 1 or 2")
    head = _bytes_of(frames[0], who)
    if len(head) < 6 or bytes(head[:4]) != MAGIC:
        magic = bytes(head[:4])
        raise WireError(f"message from {who}: not a geeps-net message (magic {magic!r})")
    version = int.from_bytes(head[4:6], "little")
    if version != VERSION:
        raise WireError(
            f"message from {who}: peer speaks wire version {version}, we speak {VERSION}"
        )
    if len(head) < HEADER.size:
        raise WireError(f"message from {who}: header of {len(head)} bytes, expected {HEADER.size}")
    fields = HEADER.unpack(head[: HEADER.size])
    _, _, mtype, sender, table, clock, begin, end, length, code, flags, crc = fields
    who = peer or f"sender {sender}"
    parts = BODY.get(TYPES.get(mtype)) == "PARTS"
    if parts and not (begin == 0 < end <= MAX_PARTS):
        raise WireError(f"message from {who}: rows [{begin}, {end}) must be [0, n) parts")
    want = HEADER.size + PART.size * end if parts else HEADER.size
    if len(head) != want:
        raise WireError(f"message from {who}: header of {len(head)} bytes, expected {want}")
    body = _bytes_of(frames[1], who) if len(frames) == 2 else memoryview(b"")
    if len(frames) != 1 + (length > 0) or len(body) != length:
        raise WireError(
            f"message from {who}: header says {length} payload bytes, got {len(frames) - 1} "
            f"payload frame(s) of {len(body)} bytes"
        )
    if flags & ~PAYLOAD_CRC:
        raise WireError(f"message from {who}: unknown flags {flags:#x}")
    got = checksum(head[:CRC_SPAN])
    if parts:
        got = checksum(head[HEADER.size :], got)
    if flags & PAYLOAD_CRC:
        got = checksum(body, got)
    if got != crc:
        raise WireError(f"message from {who}: checksum {got:#010x} != header's {crc:#010x}")
    if mtype not in BODY:
        raise WireError(f"message from {who}: unknown message type {mtype}")
    header = Header(TYPES[mtype], sender, table, clock, begin, end)
    accepted = senders(sender) if callable(senders) else sender in senders
    if not accepted:
        raise WireError(f"message from {who}: sender {sender} is not a member of this job")
    problem = _check(header, length, code, tables)
    if problem:
        raise WireError(f"{header.type.name} from {who}: {problem}")
    payload = None
    if length:
        payload = numpy.frombuffer(body, dtype=DTYPES[code])
        payload.flags.writeable = False  # a view of the received frame (may be unaligned: copy)
    if parts:
        index = list(PART.iter_unpack(head[HEADER.size :]))
        problem = _check_parts(header, index, length, code, tables)
        if problem:
            raise WireError(f"{header.type.name} from {who}: {problem}")
        return header, _split(index, payload, tables)
    return header, payload


def _bytes_of(frame: Any, who: str) -> memoryview:
    """A flat byte view of a frame (zmq.Frame, bytes, contiguous array)."""
    try:
        return memoryview(frame).cast("B")
    except (TypeError, ValueError):
        kind = type(frame).__name__
        raise WireError(f"message from {who}: a frame of {kind} is not a byte buffer") from None


def _check(h: Header, length: int, code: int, tables: Mapping[int, TableShape] | None) -> str:
    """The first thing wrong with a checksummed header, or "" when it is usable."""
    body = BODY[h.type]
    if h.clock < -1:
        return f"clock {h.clock} < -1"
    if (code == 0) != (length == 0) or (code and code not in DTYPES):
        return f"dtype code {code} with {length} payload bytes"
    if body == "PARTS":
        return ""  # the index is checked by _check_parts
    if body in ("ROWS", "RANGE"):
        return _check_rows(h, length, code, tables, with_values=body == "ROWS")
    if h.row_begin or h.row_end:
        return f"rows [{h.row_begin}, {h.row_end}) on a message that carries no rows"
    if body == "SPEC":
        return "" if DTYPES.get(code) == "int64" and length == 16 else "shape is not int64 x 2"
    if body == "NOTE":
        return "" if code in (0, 5) else f"note payload of {DTYPES[code]}, expected uint8"
    if length:
        return f"{length} payload bytes on a message that carries none"
    if h.table and not (h.type == MsgType.CLOCK and (h.table == ALL_TABLES or _known(h, tables))):
        return f"table {h.table} on a message about no table"
    return ""


def _check_parts(h: Header, index, length: int, code: int, tables) -> str:
    """The first thing wrong with the index of a PARTS message (or "")."""
    if h.table:
        return f"table {h.table} on a message of parts"
    dtype, total = DTYPES.get(code), 0
    for i, (table, begin, end, clock) in enumerate(index):
        where = f"part {i} (table {table})"
        if not -1 <= clock <= h.clock or (h.type == MsgType.UPDATES and clock != h.clock):
            return f"{where}: clock {clock}, message clock {h.clock}"
        shape = tables.get(table) if tables is not None else None
        if begin == end == 0:
            if h.type != MsgType.UPDATES:
                return f"{where}: no rows in a {h.type.name}"
            if shape is None and table != ALL_TABLES:
                return f"{where}: table is unknown here"
            continue
        if shape is None:
            return f"{where}: table is unknown here"
        rows = num_rows(shape)
        if not 0 <= begin < end <= min(rows, MAX_ROWS):
            return f"{where}: rows [{begin}, {end}) outside its {rows} rows"
        if getattr(shape, "dtype", "float32") != dtype:
            return f"{where}: payload of {dtype or 'nothing'}, the table holds {shape.dtype}"
        total += values_of(shape, begin, end)
    itemsize = numpy.dtype(dtype).itemsize if dtype else 0
    if total * itemsize != length:
        return f"{length} payload bytes for parts of {total} values"
    return ""


def _split(index, payload: numpy.ndarray | None, tables) -> list[Part]:
    """The parts of a validated index, each with its view of the payload."""
    parts, at = [], 0
    for table, begin, end, clock in index:
        if begin == end:
            parts.append(Part(table, 0, 0, clock))
            continue
        stop = at + values_of(tables[table], begin, end)
        parts.append(Part(table, begin, end, clock, payload[at:stop]))
        at = stop
    return parts


def _known(h: Header, tables: Mapping[int, TableShape] | None) -> bool:
    return tables is not None and h.table in tables


def _check_rows(h: Header, length: int, code: int, tables, with_values: bool) -> str:
    shape = tables.get(h.table) if tables is not None else None
    if shape is None:
        return f"table {h.table} is unknown here"
    rows = num_rows(shape)
    if not h.row_begin < h.row_end <= min(rows, MAX_ROWS):
        return f"rows [{h.row_begin}, {h.row_end}) outside table {h.table}'s {rows} rows"
    if not with_values:
        return "" if length == 0 else f"{length} payload bytes on a row request"
    dtype = getattr(shape, "dtype", "float32")
    if DTYPES.get(code) != dtype:
        return f"payload of {DTYPES.get(code, 'nothing')}, table {h.table} holds {dtype}"
    want = values_of(shape, h.row_begin, h.row_end) * numpy.dtype(dtype).itemsize
    if length != want:
        return f"{length} payload bytes for rows [{h.row_begin}, {h.row_end}), expected {want}"
    return ""


def note(payload: numpy.ndarray | None) -> str:
    """The UTF-8 text of a NOTE payload (HELLO, CHECKPOINT, SHUTDOWN, ERROR); "" if none."""
    if payload is None:
        return ""
    return payload.tobytes().decode("utf-8", errors="replace")

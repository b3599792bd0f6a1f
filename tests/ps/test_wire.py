"""The wire format: round trips, each validation with its message, and a mutation fuzz of decode."""

import re
import struct

import numpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geeps_net.errors import GeepsError, WireError
from geeps_net.ps.tables import TableSpec
from geeps_net.ps.wire import (
    ALL_TABLES,
    BODY,
    CRC_SPAN,
    HEADER,
    MAGIC,
    PART,
    VERSION,
    Header,
    MsgType,
    Part,
    TableShape,
    checksum,
    decode,
    encode,
    note,
    pack,
)

ZEROS = bytes(1024)
TABLES = {7: TableShape(300, 128), 9: TableShape(10, 4, "float64")}  # 3 rows, the last one short
SENDERS = {0, 1, 2}


def sample(mtype: MsgType) -> tuple[Header, numpy.ndarray | bytes | None]:
    """A valid message of each type."""
    rng = numpy.random.default_rng(int(mtype))
    body = BODY[mtype]
    if body == "ROWS":  # rows 1..3 of table 7: 128 + 44 values (the last row is short)
        return Header(mtype, 2, 7, 41, 1, 3), rng.standard_normal(172).astype("float32")
    if body == "RANGE":
        return Header(mtype, 1, 7, 5, 0, 2), None
    if body == "SPEC":
        return Header(mtype, 0, 7), numpy.array([300, 128], dtype="int64")
    if body == "NOTE":
        return Header(mtype, 1, 0, 3), "ünïcode line".encode()
    if mtype == MsgType.UPDATES:  # rows 1..3 of table 7, then CLOCKs of table 7 and of all
        parts = [Part(7, 1, 3, 41, rng.standard_normal(172).astype("float32"))]
        parts += [Part(7, 0, 0, 41), Part(ALL_TABLES, 0, 0, 41)]
        return Header(mtype, 2, 0, 41, 0, 3), parts
    if body == "PARTS":  # rows 0 and 1..3 of table 7 at different data ages
        parts = [Part(7, 0, 1, 40, rng.standard_normal(128).astype("float32"))]
        parts += [Part(7, 1, 3, 41, rng.standard_normal(172).astype("float32"))]
        return Header(mtype, 2, 0, 41, 0, 2), parts
    table = ALL_TABLES if mtype == MsgType.CLOCK else 0
    return Header(mtype, 2, table, 17), None


def forge(payload: bytes = b"", parts=(), **fields) -> list[bytes]:
    """Frames with any raw header fields and a correct checksum, to reach checks behind the CRC.
    `parts`: index entries (table, row_begin, row_end, clock) after the header."""
    raw = dict(magic=MAGIC, version=VERSION, type=5, sender=2, table=7, clock=0, begin=0, end=1)
    raw.update(length=len(payload), dtype=1 if payload else 0, flags=1)
    raw.update(fields)
    index = b"".join(PART.pack(*part) for part in parts)
    head = bytearray(HEADER.pack(*raw.values(), 0) + index)
    crc = checksum(index, checksum(head[:CRC_SPAN]))
    crc = checksum(payload if raw["flags"] else b"", crc)
    struct.pack_into("<I", head, CRC_SPAN, crc)
    return [bytes(head), payload] if payload else [bytes(head)]


def as_bytes(frames) -> list[bytes]:
    return [memoryview(f).cast("B").tobytes() for f in frames]


@pytest.mark.parametrize("mtype", list(MsgType), ids=lambda t: t.name)
def test_round_trip_every_type(mtype):
    header, payload = sample(mtype)
    frames = encode(header, payload)
    parts = BODY[mtype] == "PARTS"
    assert len(frames[0]) == HEADER.size + (PART.size * len(payload) if parts else 0)
    got, view = decode(as_bytes(frames), senders=SENDERS, tables=TABLES)
    assert got == header
    if parts:
        assert [p[:4] for p in view] == [p[:4] for p in payload]
        for mine, theirs in zip(view, payload, strict=True):
            assert (mine.values is None) == (theirs.values is None)
            assert mine.values is None or numpy.array_equal(mine.values, theirs.values)
        assert frames[1] is not payload[0].values  # a copy: the sender may reuse its buffers
    elif payload is None:
        assert view is None and len(frames) == 1
    else:
        want = numpy.frombuffer(payload, "uint8") if isinstance(payload, bytes) else payload
        assert view.dtype == want.dtype and numpy.array_equal(view, want)
        assert frames[1] is payload or isinstance(payload, bytes)  # arrays go as themselves


def test_payload_is_a_view_and_note_decodes():
    header, payload = sample(MsgType.UPDATE)
    frames = encode(header, payload)
    _, view = decode(frames, senders=SENDERS, tables=TABLES)
    assert numpy.shares_memory(view, payload)  # no copy on either side
    _, text = decode(encode(*sample(MsgType.ERROR)), senders=SENDERS)
    assert note(text) == "ünïcode line" and note(None) == ""


def test_packed_parts_go_as_they_are():
    header, parts = sample(MsgType.PUSHES)
    packed = pack(parts)
    frames = encode(header, packed)
    assert frames[1] is packed.values  # zero-copy, like an array payload
    assert as_bytes(frames) == as_bytes(encode(header, parts))
    _, got = decode(as_bytes(frames), senders=SENDERS, tables=TABLES)
    assert numpy.array_equal(got[1].values, parts[1].values) and not got[1].values.flags.writeable


def test_table_spec_is_accepted_as_a_shape():
    spec = TableSpec(id=7, name="conv1", num_values=300, row_size=128)
    header, payload = sample(MsgType.PUSH)
    assert decode(encode(header, payload), senders=SENDERS, tables={7: spec})[0] == header


def test_float64_table_and_dtype_mismatch():
    values = numpy.arange(6, dtype="float64")  # rows 1..2 of table 9 (row_size 4, 10 values)
    header = Header(MsgType.INIT, 0, 9, -1, 1, 3)
    assert numpy.array_equal(
        decode(encode(header, values), senders=SENDERS, tables=TABLES)[1], values
    )
    with pytest.raises(WireError, match="payload of float32, table 9 holds float64"):
        decode(encode(header, values.astype("float32")), senders=SENDERS, tables=TABLES)


@pytest.mark.parametrize(
    "frames, message",
    [
        (forge(version=2), "peer speaks wire version 2, we speak 3"),
        (forge(magic=b"HTTP"), "not a geeps-net message"),
        (forge(type=99), "unknown message type 99"),
        (forge(sender=9), "sender 9 is not a member of this job"),
        (forge(clock=-2), "clock -2 < -1"),
        (forge(table=8), "table 8 is unknown here"),
        (forge(ZEROS[:512], end=4), "rows [0, 4) outside table 7's 3 rows"),
        (forge(ZEROS[:512], begin=2, end=2), "rows [2, 2) outside"),
        (forge(ZEROS[:508]), "508 payload bytes for rows [0, 1), expected 512"),
        (
            forge(ZEROS[:4], type=2, table=0, end=0),
            "4 payload bytes on a message that carries none",
        ),
        (forge(type=2, table=7, end=0), "table 7 on a message about no table"),
        (forge(type=2, table=0, begin=1, end=2), "rows [1, 2) on a message that carries no rows"),
        (forge(ZEROS[:8], type=3, end=0, dtype=4), "shape is not int64 x 2"),
        (forge(ZEROS[:8], type=13, table=0, end=0), "note payload of float32, expected uint8"),
        (forge(ZEROS[:8], dtype=7), "dtype code 7 with 8 payload bytes"),
        (forge(dtype=1), "dtype code 1 with 0 payload bytes"),
        (forge(flags=4), "unknown flags 0x4"),
        (forge(type=14, table=0, end=0), "rows [0, 0) must be [0, n) parts"),
        (forge(type=14, table=0, end=2, parts=[(7, 0, 0, 0)]), "header of 88 bytes, expected 120"),
        (forge(type=14, table=7, parts=[(7, 0, 0, 0)]), "table 7 on a message of parts"),
        (forge(type=14, table=0, clock=3, parts=[(7, 0, 0, 2)]), "part 0 (table 7): clock 2,"),
        (forge(type=15, table=0, clock=3, parts=[(7, 0, 0, 2)]), "no rows in a PUSHES"),
        (forge(type=15, table=0, clock=3, parts=[(7, 0, 1, 4)]), "part 0 (table 7): clock 4"),
        (forge(type=14, table=0, parts=[(8, 0, 0, 0)]), "part 0 (table 8): table is unknown"),
        (forge(type=14, table=0, parts=[(7, 2, 4, 0)]), "rows [2, 4) outside its 3 rows"),
        (
            forge(ZEROS[:8], type=14, table=0, parts=[(9, 0, 1, 0)]),
            "part 0 (table 9): payload of float32, the table holds float64",
        ),
        (
            forge(ZEROS[:508], type=14, table=0, end=2, parts=[(7, 0, 0, 0), (7, 0, 1, 0)]),
            "508 payload bytes for parts of 128 values",
        ),
    ],
)
def test_each_validation_names_the_fault(frames, message):
    with pytest.raises(WireError, match=re.escape(message)) as info:
        decode(frames, senders=SENDERS, tables=TABLES, peer="worker 2 (tcp://127.0.0.1:5571)")
    assert str(info.value).count("worker 2 (tcp://127.0.0.1:5571)") == 1
    assert "\n" not in str(info.value) and isinstance(info.value, GeepsError)


def test_a_forged_well_formed_message_decodes():
    header, payload = decode(forge(ZEROS[:176], begin=2, end=3), senders=SENDERS, tables=TABLES)
    assert header == Header(MsgType.UPDATE, 2, 7, 0, 2, 3) and payload.shape == (44,)  # short row


def test_structural_faults():
    header, payload = sample(MsgType.PUSH)
    head, body = as_bytes(encode(header, payload))
    cases = {
        "0 frames": [],
        "3 frames": [head, body, b""],
        "header says 688 payload bytes, got 0": [head],
        "header of 55 bytes": [head[:-1], body],
        "got 1 payload frame(s) of 684 bytes": [head, body[:-4]],
        "checksum": [head, body[:-1] + bytes([body[-1] ^ 1])],
        "is not a byte buffer": [head, 3.5],
    }
    for message, frames in cases.items():
        with pytest.raises(WireError, match=re.escape(message)):
            decode(frames, senders=SENDERS, tables=TABLES)


def test_checksum_is_crc32c_and_continues():
    assert checksum(b"123456789") == 0xE3069283  # CRC-32C's check value (RFC 3720 polynomial)
    assert checksum(b"456789", checksum(b"123")) == checksum(b"123456789")
    array = numpy.arange(1 << 16, dtype="float32")  # a large buffer: the accelerated path
    assert checksum(memoryview(array).cast("B")) == checksum(array.tobytes())


def test_payload_crc_can_be_left_out():
    header, payload = sample(MsgType.PUSH)
    head, body = as_bytes(encode(header, payload, payload_crc=False))
    got, view = decode([head, body], senders=SENDERS, tables=TABLES)
    assert got == header and numpy.array_equal(view, payload)
    flipped = body[:-1] + bytes([body[-1] ^ 1])
    decode([head, flipped], senders=SENDERS, tables=TABLES)  # the payload is trusted to TCP now...
    with pytest.raises(WireError, match="checksum"):  # ...the header never is
        bad_head = head[:20] + bytes([head[20] ^ 1]) + head[21:]
        decode([bad_head, body], senders=SENDERS, tables=TABLES)


def test_encode_refuses_what_it_cannot_send():
    with pytest.raises(WireError, match="C-contiguous"):
        encode(Header(MsgType.UPDATE, 0, 7, 0, 0, 1), numpy.zeros((256,), "float32")[::2])
    with pytest.raises(WireError, match="complex128 not in wire"):
        encode(Header(MsgType.UPDATE, 0, 7, 0, 0, 1), numpy.zeros(3, "complex128"))
    with pytest.raises(WireError, match="sender -1"):
        encode(Header(MsgType.HELLO, -1))
    with pytest.raises(ValueError):
        Header(99, 0)


# --- fuzz: valid messages, then mutated copies of them --------------------------------------------

FUZZ = settings(
    max_examples=400,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MUTATIONS = ("flip", "truncate", "extend", "version", "magic", "length", "frames", "junk", "forge")
decoded = {"frames": 0}


@st.composite
def messages(draw):
    """(tables, frames) of a random valid message."""
    row_size = draw(st.integers(1, 8))
    shape = TableShape(
        draw(st.integers(1, 40)), row_size, draw(st.sampled_from(["float32", "int64"]))
    )
    table = draw(st.integers(0, 2**32 - 2))
    mtype = draw(st.sampled_from(list(MsgType)))
    sender, clock = draw(st.sampled_from(sorted(SENDERS))), draw(st.integers(-1, 2**63 - 1))
    rows = -(-shape.num_values // row_size)
    begin = draw(st.integers(0, rows - 1))
    end = draw(st.integers(begin + 1, rows))
    body, payload, fields = BODY[mtype], None, dict(clock=clock)
    if body in ("ROWS", "RANGE"):
        fields.update(table=table, row_begin=begin, row_end=end)
    if body == "ROWS":
        count = min(end * row_size, shape.num_values) - begin * row_size
        raw = draw(st.binary(min_size=count * 8, max_size=count * 8))
        payload = numpy.frombuffer(raw, shape.dtype)[:count].copy()
    elif body == "SPEC":
        fields["table"] = table
        payload = numpy.array([shape.num_values, row_size], dtype="int64")
    elif body == "NOTE":
        payload = draw(st.binary(max_size=24))
    elif body == "PARTS":
        payload = []
        for _ in range(draw(st.integers(1, 3))):
            begin = draw(st.integers(0, rows - 1))
            end = draw(st.integers(begin + 1, rows))
            if mtype == MsgType.UPDATES and draw(st.booleans()):  # a CLOCK
                payload.append(Part(draw(st.sampled_from([table, ALL_TABLES])), 0, 0, clock))
                continue
            age = clock if mtype == MsgType.UPDATES else draw(st.integers(-1, clock))
            count = min(end * row_size, shape.num_values) - begin * row_size
            raw = draw(st.binary(min_size=count * 8, max_size=count * 8))
            values = numpy.frombuffer(raw, shape.dtype)[:count].copy()
            payload.append(Part(table, begin, end, age, values))
        fields["row_end"] = len(payload)
    elif mtype == MsgType.CLOCK:
        fields["table"] = draw(st.sampled_from([0, ALL_TABLES, table]))
    return {table: shape}, as_bytes(encode(Header(mtype, sender, **fields), payload))


def mutate(draw, frames: list[bytes]) -> tuple[str, list[bytes]]:
    """One mutation of `frames`: bit flip, cut, wrong version/magic/length, frame faults..."""
    kind = draw(st.sampled_from(MUTATIONS))
    out = [bytearray(f) for f in frames]
    index = draw(st.integers(0, len(out) - 1))
    target = out[index]
    if kind == "flip" and target:
        bit = draw(st.integers(0, len(target) * 8 - 1))
        target[bit // 8] ^= 1 << bit % 8
    elif kind == "truncate":
        del target[draw(st.integers(0, len(target))) :]
    elif kind == "extend":
        target += draw(st.binary(min_size=1, max_size=16))
    elif kind == "version":
        struct.pack_into("<H", out[0], 4, draw(st.integers(0, 65535).filter(lambda v: v != 1)))
    elif kind == "magic":
        out[0][:4] = draw(st.binary(min_size=4, max_size=4))
    elif kind == "length":
        struct.pack_into("<Q", out[0], 40, draw(st.integers(0, 2**64 - 1)))
    elif kind == "frames":
        out = out[:-1] if draw(st.booleans()) and len(out) > 1 else out + [bytearray(b"\0" * 4)]
    elif kind == "junk":
        out[0] = bytearray(draw(st.binary(min_size=0, max_size=80)))
    elif kind == "forge":  # any field, checksum recomputed: only the semantic checks stand
        offset, fmt = draw(
            st.sampled_from(
                [(6, "<H"), (8, "<I"), (12, "<I"), (16, "<q"), (24, "<Q"), (32, "<Q"), (48, "<B")]
            )
        )
        bits = struct.calcsize(fmt) * 8
        low = -(2 ** (bits - 1)) if fmt == "<q" else 0
        high = 2 ** (bits - 1) - 1 if fmt == "<q" else 2**bits - 1
        struct.pack_into(fmt, out[0], offset, draw(st.integers(low, high)))
        body = out[1] if len(out) > 1 else b""
        crc = checksum(out[0][HEADER.size :], checksum(out[0][:CRC_SPAN]))  # PARTS: the index
        crc = checksum(body, crc)
        struct.pack_into("<I", out[0], CRC_SPAN, crc)
    return kind, [bytes(f) for f in out]


@FUZZ
@given(st.data())
def _fuzz_decode(data):
    tables, frames = data.draw(messages())
    header, payload = decode(frames, senders=SENDERS, tables=tables)
    assert as_bytes(encode(header, payload)) == frames  # the unmutated message decodes exactly
    for _ in range(25):
        kind, mutated = mutate(data.draw, frames)
        decoded["frames"] += 1
        try:
            got = decode(mutated, senders=SENDERS, tables=tables)
        except WireError as e:
            assert "\n" not in str(e)
            continue
        if mutated != frames:  # only a forged header with a valid checksum may still decode...
            assert kind == "forge", kind
        assert as_bytes(encode(*got)) == mutated  # ...and then it decodes to what it says


def test_fuzz_decode_raises_only_wire_errors():
    decoded["frames"] = 0
    _fuzz_decode()
    assert decoded["frames"] >= 10_000  # 400 examples x 25 mutations (plus 400 unmutated)

"""What the PS stores: parameter tables cut into rows, local data, and the shard directory.

A parameter table is one float32 vector of `num_values` cut into rows of `row_size` values (the last
row may be short). Its rows are grouped into ranges, and the directory assigns range k of table t to
shard (hash(t) + k) mod num_servers, never by access order, so workers with different placements
agree on who owns what, and a table's ranges land on different shards.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy

LOCAL_KINDS = ("activation", "diff", "history", "internal", "input", "frozen")
LOCAL_DTYPE_KINDS = "biuf"  # numpy dtype kinds local data may have: bool, int, uint, float


@dataclass(frozen=True)
class RowRange:
    """Rows [row_start, row_stop) of a table, owned by `shard`; values [value_start, value_stop)."""

    shard: int
    row_start: int
    row_stop: int
    value_start: int
    value_stop: int

    @property
    def values(self) -> slice:
        """The slice of the table vector this range covers."""
        return slice(self.value_start, self.value_stop)


@dataclass(frozen=True)
class TableSpec:
    """A parameter table: id, name (for messages), length in float32 values, row size."""

    id: int
    name: str
    num_values: int
    row_size: int
    kind: str = "params"
    dtype: str = "float32"

    @property
    def num_rows(self) -> int:
        """ceil(num_values / row_size)."""
        return -(-self.num_values // self.row_size)

    @property
    def nbytes(self) -> int:
        """Bytes of one copy of the table (float32)."""
        return self.num_values * 4

    @property
    def key(self) -> tuple[str, int]:
        """The planner's key for this table."""
        return ("param", self.id)


@dataclass(frozen=True)
class LocalSpec:
    """Local data (never sent): blob data or diff, solver history, internals, inputs, frozen."""

    id: int
    name: str
    num_values: int
    kind: str
    dtype: str = "float32"

    @property
    def nbytes(self) -> int:
        """Bytes of the local data."""
        return self.num_values * numpy.dtype(self.dtype).itemsize

    @property
    def key(self) -> tuple[str, int]:
        """The planner's key for this local datum."""
        return ("local", self.id)


def shard_of(table: int, row_start: int, num_servers: int) -> int:
    """Shard of the range of `table` starting at `row_start`: crc32 of both, mod num_servers."""
    return zlib.crc32(struct.pack("<qq", table, row_start)) % num_servers


class Directory:
    """Cuts tables into row ranges and assigns each range to a shard.

    A table of R rows gets ranges of ceil(R / num_servers) rows (the last may be shorter) on
    consecutive shards from shard_of(table, 0), so a large table spreads evenly over the shards
    while a small one stays in one message.
    """

    def __init__(self, num_servers: int, row_size: int) -> None:
        self.num_servers = num_servers
        self.row_size = row_size

    def ranges(self, table: int, num_values: int) -> list[RowRange]:
        """The row ranges of a table of `num_values` float32 values, in row order."""
        num_rows = -(-num_values // self.row_size)
        if num_rows == 0:
            return []
        per_range = -(-num_rows // self.num_servers)
        first = shard_of(table, 0, self.num_servers)
        out = []
        for start in range(0, num_rows, per_range):
            stop = min(start + per_range, num_rows)
            out.append(
                RowRange(
                    # consecutive shards from the table's hashed first one: a table's ranges
                    # never pile up on one shard (hashing every range did: LeNet's ip1 and conv2
                    # both landed whole on shard 0 of 2)
                    shard=(first + len(out)) % self.num_servers,
                    row_start=start,
                    row_stop=stop,
                    value_start=start * self.row_size,
                    value_stop=min(stop * self.row_size, num_values),
                )
            )
        return out

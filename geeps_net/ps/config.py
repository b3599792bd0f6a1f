"""PS configuration: the `geeps.PsConfig` message as a plain frozen dataclass, validated on load.

    config = Config.load("solvers/lenet_ps.prototxt").overrides(slack=1)

Text-format errors name FILE:LINE:COL; value errors name the field, one line for all of them.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, fields
from pathlib import Path

from google.protobuf import text_format

from geeps_net.errors import PrototxtError, PsConfigError
from geeps_net.proto import geeps_pb2

UPDATE_RULES = ("SUM", "AVERAGE", "SERVER")


@dataclass(frozen=True)
class Config:
    """Every PsConfig field with its proto default; see geeps_net/proto/geeps.proto for meanings."""

    slack: int = 0
    num_channels: int = 1
    gpu_memory_capacity: int = 0  # bytes; 0 = unlimited
    mm_warning_level: int = 1
    layers_per_table: int = 1
    batches_per_clock: int = 1
    pinned_cpu_memory: bool = True
    read_my_writes: bool = True
    keep_momentum: bool = True
    row_size: int = 128
    update_rule: str = "SUM"  # one of UPDATE_RULES
    deadline_s: float = 60.0
    heartbeat_s: float = 5.0
    curve_server_key: str = ""
    curve_public_key: str = ""
    curve_secret_key: str = ""
    trace_file: str = ""
    num_servers: int = 1
    base_port: int = 5570
    bind: str = "127.0.0.1"

    @classmethod
    def from_proto(
        cls, msg: geeps_pb2.PsConfig, source: str = "PsConfig", lines: dict | None = None
    ) -> Config:
        """A validated Config from a parsed message (unset fields take the proto defaults);
        `lines` maps field names to their line in `source`, for errors."""
        values = {f.name: getattr(msg, f.name) for f in fields(cls)}
        values["update_rule"] = geeps_pb2.PsConfig.UpdateRule.Name(msg.update_rule)
        return cls(**values).validate(source, lines)

    @classmethod
    def parse(cls, text: str, source: str = "<string>") -> Config:
        """Parse PsConfig text; a syntax error raises PrototxtError `SOURCE:LINE:COL: ...`."""
        msg = geeps_pb2.PsConfig()
        try:
            text_format.Parse(text, msg)
        except text_format.ParseError as e:
            where = f"{source}:{e.GetLine()}:{e.GetColumn()}" if e.GetLine() else source
            detail = str(e).split(" : ", 1)[-1]
            raise PrototxtError(f"{where}: {detail}") from None
        return cls.from_proto(msg, source, _field_lines(text))

    @classmethod
    def load(cls, path: str | Path) -> Config:
        """Read and validate a PsConfig text file."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise PsConfigError(f"{path}: cannot read the PS config: {e.strerror}") from None
        return cls.parse(text, str(path))

    def to_proto(self) -> geeps_pb2.PsConfig:
        """The PsConfig message with every field set (e.g. to send to a server)."""
        values = dataclasses.asdict(self)
        values["update_rule"] = geeps_pb2.PsConfig.UpdateRule.Value(self.update_rule)
        return geeps_pb2.PsConfig(**values)

    def overrides(self, source: str = "overrides", **changes) -> Config:
        """A validated copy with `changes` applied (e.g. CLI flags; None values are ignored);
        errors name `source`."""
        known = {f.name for f in fields(self)}
        for name in changes:
            if name not in known:
                raise PsConfigError(f"PsConfig has no field {name!r} (fields: {', '.join(known)})")
        changes = {k: v for k, v in changes.items() if v is not None}
        if isinstance(changes.get("update_rule"), str):
            changes["update_rule"] = changes["update_rule"].upper()
        return dataclasses.replace(self, **changes).validate(source)

    def errors(self) -> list[str]:
        """One `field: problem` line per invalid value; empty when the config is usable."""
        problems = []

        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                problems.append(f"{name}: must be {rule} (got {getattr(self, name)!r})")

        for name in ("slack", "gpu_memory_capacity"):
            need(_is_int(getattr(self, name)) and getattr(self, name) >= 0, name, "an integer >= 0")
        for name in ("num_channels", "layers_per_table", "batches_per_clock", "row_size"):
            need(_is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "an integer >= 1")
        need(_is_int(self.num_servers) and self.num_servers >= 1, "num_servers", "an integer >= 1")
        need(self.mm_warning_level in (0, 1, 2, 3), "mm_warning_level", "0, 1, 2 or 3")
        need(self.update_rule in UPDATE_RULES, "update_rule", " or ".join(UPDATE_RULES))
        need(_is_number(self.deadline_s) and self.deadline_s > 0, "deadline_s", "> 0 seconds")
        need(_is_number(self.heartbeat_s) and self.heartbeat_s > 0, "heartbeat_s", "> 0 seconds")
        if not problems and self.heartbeat_s >= self.deadline_s:
            need(False, "heartbeat_s", f"shorter than deadline_s = {self.deadline_s}")
        need(_is_int(self.base_port) and 1 <= self.base_port <= 65535, "base_port", "in 1..65535")
        need(isinstance(self.bind, str) and bool(self.bind), "bind", "a host name or address")
        keys = (self.curve_server_key, self.curve_public_key, self.curve_secret_key)
        if any(keys) and not all(keys):
            need(False, "curve_server_key", "given with curve_public_key and curve_secret_key")
        return problems

    def validate(self, source: str = "PsConfig", lines: dict | None = None) -> Config:
        """Return self, or raise PsConfigError naming every bad field on one line: `SOURCE:LINE:
        field: problem` where `lines` (field -> line) knows the field's line, else `SOURCE:`."""
        problems = self.errors()
        if not problems:
            return self
        found = [(lines or {}).get(problem.split(":", 1)[0]) for problem in problems]
        if not any(found):
            raise PsConfigError(f"{source}: " + "; ".join(problems))
        raise PsConfigError(
            "; ".join(
                f"{source}:{line}: {problem}" if line else f"{source}: {problem}"
                for line, problem in zip(found, problems, strict=True)
            )
        )

    @property
    def unlimited(self) -> bool:
        """True when gpu_memory_capacity is 0: everything may stay resident on the device."""
        return self.gpu_memory_capacity == 0


_TOKENS = re.compile(r'#[^\n]*|"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|\n|([A-Za-z_]\w*)\s*:')


def _field_lines(text: str) -> dict[str, int]:
    """Field name -> 1-based line of its last setting in PsConfig text (the one that wins)."""
    lines, line = {}, 1
    for m in _TOKENS.finditer(text):  # comments and strings are matched whole, so skipped
        if m.group(1):
            lines[m.group(1)] = line
        line += m.group().count("\n")
    return lines


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)

"""PsConfig: text format with FILE:LINE:COL errors, defaults, validation naming the field."""

import pytest

from geeps_net.errors import PrototxtError, PsConfigError
from geeps_net.proto import geeps_pb2
from geeps_net.ps.config import Config


def test_defaults_match_the_proto():
    config = Config()
    msg = geeps_pb2.PsConfig()
    assert config == Config.from_proto(msg)
    assert (config.slack, config.row_size, config.update_rule, config.deadline_s) == (
        0,
        128,
        "SUM",
        60,
    )
    assert config.unlimited and config.bind == "127.0.0.1" and config.base_port == 5570


def test_load_text_format(tmp_path):
    path = tmp_path / "ps.prototxt"
    path.write_text("slack: 2\nupdate_rule: AVERAGE\ngpu_memory_capacity: 1000000  # bytes\n")
    config = Config.load(path)
    assert (config.slack, config.update_rule, config.gpu_memory_capacity) == (2, "AVERAGE", 10**6)
    assert Config.from_proto(config.to_proto()) == config


@pytest.mark.parametrize(
    "text,where",
    [("slack: 1\nslak: 2\n", "ps.prototxt:2:1: "), ("update_rule: MEAN", "ps.prototxt:1:14: ")],
)
def test_syntax_errors_name_file_line_and_column(tmp_path, text, where):
    path = tmp_path / "ps.prototxt"
    path.write_text(text)
    with pytest.raises(PrototxtError) as info:
        Config.load(path)
    assert str(info.value).startswith(str(tmp_path / where))


@pytest.mark.parametrize(
    "field,value,rule",
    [
        ("slack", -1, "slack: must be an integer >= 0 (got -1)"),
        ("row_size", 0, "row_size: must be an integer >= 1 (got 0)"),
        ("mm_warning_level", 4, "mm_warning_level: must be 0, 1, 2 or 3 (got 4)"),
        ("update_rule", "MEAN", "update_rule: must be SUM or AVERAGE or SERVER (got 'MEAN')"),
        ("deadline_s", 0.0, "deadline_s: must be > 0 seconds (got 0.0)"),
        ("heartbeat_s", 90.0, "heartbeat_s: must be shorter than deadline_s = 60.0 (got 90.0)"),
        ("base_port", 70000, "base_port: must be in 1..65535 (got 70000)"),
        ("curve_public_key", "k.pub", "curve_server_key: must be given with curve_public_key"),
    ],
)
def test_bad_values_name_the_field(field, value, rule):
    with pytest.raises(PsConfigError) as info:
        Config().overrides(**{field: value})
    assert rule in str(info.value) and "\n" not in str(info.value)


def test_overrides(tmp_path):
    config = Config().overrides(slack=3, update_rule="server", trace_file=None)
    assert config.slack == 3 and config.update_rule == "SERVER" and config.trace_file == ""
    with pytest.raises(PsConfigError, match="no field 'slak'"):
        Config().overrides(slak=1)
    bad = tmp_path / "bad.prototxt"
    bad.write_text("slack: -2\nnum_servers: 0")
    with pytest.raises(
        PsConfigError, match=r"bad.prototxt:1: slack: .*bad.prototxt:2: num_servers"
    ):
        Config.load(bad)
    with pytest.raises(PsConfigError, match="cannot read"):
        Config.load(tmp_path / "missing.prototxt")

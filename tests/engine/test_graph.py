"""Graph passes: NetState rules and Caffe's Split insertion (names, loss weights, in-place)."""

import pytest
from google.protobuf import text_format

from geeps_net.errors import NetError
from geeps_net.graph import filter_net, insert_splits, state_meets_rule
from geeps_net.proto import caffe_pb2


def net_param(text):
    return text_format.Parse(text, caffe_pb2.NetParameter())


def rule(text):
    return text_format.Parse(text, caffe_pb2.NetStateRule())


def state(phase=caffe_pb2.TRAIN, level=0, stages=()):
    return caffe_pb2.NetState(phase=phase, level=level, stage=list(stages))


@pytest.mark.parametrize(
    "text, st, expected",
    [
        ("phase: TRAIN", state(), True),
        ("phase: TEST", state(), False),
        ("min_level: 1", state(level=1), True),
        ("min_level: 2", state(level=1), False),
        ("max_level: 0", state(level=1), False),
        ('stage: "a" stage: "b"', state(stages=["a", "b", "c"]), True),
        ('stage: "a" stage: "d"', state(stages=["a", "b"]), False),
        ('not_stage: "a"', state(stages=["a"]), False),
        ('not_stage: "x"', state(stages=["a"]), True),
        ("", state(phase=caffe_pb2.TEST), True),
    ],
)
def test_state_meets_rule(text, st, expected):
    assert state_meets_rule(st, rule(text)) is expected


def test_filter_include_exclude():
    p = net_param(
        """
        layer { name: "a" include { phase: TRAIN } include { stage: "s" } }
        layer { name: "b" exclude { phase: TRAIN } }
        layer { name: "c" }
        """
    )
    kept, origins = filter_net(p, state(phase=caffe_pb2.TEST, stages=["s"]))
    assert [layer.name for layer in kept.layer] == ["a", "b", "c"] and origins == [0, 1, 2]
    kept, origins = filter_net(p, state())
    assert [layer.name for layer in kept.layer] == ["a", "c"] and origins == [0, 2]
    with pytest.raises(NetError, match="both include and exclude"):
        filter_net(net_param('layer { name: "x" include {} exclude {} }'), state())


def test_split_names_follow_caffe():
    p = net_param(
        """
        layer { name: "data" top: "data" top: "label" }
        layer { name: "ip" bottom: "data" top: "ip" }
        layer { name: "acc" bottom: "ip" bottom: "label" top: "acc" }
        layer { name: "loss" bottom: "ip" bottom: "label" top: "loss" }
        """
    )
    out, origins = insert_splits(p)
    names = [layer.name for layer in out.layer]
    assert names == ["data", "label_data_1_split", "ip", "ip_ip_0_split", "acc", "loss"]
    assert list(out.layer[1].top) == ["label_data_1_split_0", "label_data_1_split_1"]
    assert list(out.layer[4].bottom) == ["ip_ip_0_split_0", "label_data_1_split_0"]
    assert list(out.layer[5].bottom) == ["ip_ip_0_split_1", "label_data_1_split_1"]
    assert origins == [0, 0, 1, 1, 2, 3]


def test_split_carries_loss_weight_on_first_top():
    p = net_param(
        """
        layer { name: "in" top: "x" }
        layer { name: "l" bottom: "x" top: "y" loss_weight: 2 }
        layer { name: "use" bottom: "y" top: "z" }
        """
    )
    out, _ = insert_splits(p)
    split = out.layer[2]
    assert split.type == "Split" and list(split.loss_weight) == [2.0, 0.0]
    assert not out.layer[1].loss_weight
    assert list(out.layer[3].bottom) == ["y_l_0_split_1"]


def test_in_place_rewrites_are_new_versions():
    p = net_param(
        """
        layer { name: "in" top: "x" }
        layer { name: "relu" bottom: "x" top: "x" }
        layer { name: "a" bottom: "x" top: "a" }
        layer { name: "b" bottom: "x" top: "b" }
        """
    )
    out, _ = insert_splits(p)
    assert [layer.name for layer in out.layer] == ["in", "relu", "x_relu_0_split", "a", "b"]
    assert list(out.layer[1].bottom) == ["x"]


def test_unknown_bottom():
    with pytest.raises(NetError, match='bottom "nope" is produced by no earlier layer'):
        insert_splits(net_param('layer { name: "a" bottom: "nope" top: "y" }'))

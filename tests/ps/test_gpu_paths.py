"""The GPU branches of the PS (streams, events, set/get copies, staging) run on a stand-in for
CuPy made of NumPy arrays, so their control flow is exercised without a GPU: the numbers must
stay bit-identical and the traffic must match the plan, as on the CPU path."""

import types

import numpy
import pytest

from geeps_net.ps.client import Client
from geeps_net.ps.config import Config
from geeps_net.ps.server import LocalShards

from .fake_loop import TABLES, Reference, start, step


class DeviceArray(numpy.ndarray):
    """A "device" array: NumPy memory with CuPy's copy methods."""

    def set(self, src, stream=None):
        assert isinstance(src, numpy.ndarray) and not isinstance(src, DeviceArray)
        self[...] = src

    def get(self, stream=None, out=None):
        host = numpy.empty(self.shape, self.dtype) if out is None else out
        host[...] = self.view(numpy.ndarray)
        return host


class Event:
    def __init__(self, disable_timing=False):
        self.recorded = 0

    def record(self, stream=None):
        self.recorded += 1

    def synchronize(self):
        assert self.recorded, "synchronize on an event never recorded"


class Stream:
    current = None

    def __init__(self, non_blocking=False):
        self.waits = 0

    def wait_event(self, event):
        assert event.recorded
        self.waits += 1

    def __enter__(self):
        self.outer, Stream.current = Stream.current, self
        return self

    def __exit__(self, *exc):
        Stream.current = self.outer


def fake_cupy():
    device = types.SimpleNamespace()
    for name in ("empty", "zeros", "array"):
        make = getattr(numpy, name)
        setattr(device, name, lambda *a, _make=make, **k: _make(*a, **k).view(DeviceArray))
    device.cuda = types.SimpleNamespace(
        Stream=Stream, Event=Event, get_current_stream=lambda: Stream.current or Stream()
    )
    return device


@pytest.mark.parametrize("tight", [False, True], ids=["unlimited", "tight"])
def test_gpu_control_flow_on_a_stand_in(tight):
    xp = fake_cupy()
    probe = Client(Config(row_size=16), LocalShards(Config(row_size=16)))
    start(probe)
    probe.close()
    budget = probe.plan.min_budget if tight else 0
    cfg = Config(row_size=16, gpu_memory_capacity=budget, pinned_cpu_memory=False, deadline_s=10)
    client = Client(cfg, LocalShards(cfg), xp=xp)
    assert client.device.gpu
    api = start(client)
    for t in range(6):
        step(api, 0, t)
    got = {n: client.read_table_host(i) for n, i in api.tables.items()}
    hist = client.read_local_host(api.locals["hist1"])
    stats, plan = client.stats(), client.plan
    client.close()
    assert isinstance(client.arena.buffer, DeviceArray)
    ref = Reference()
    for t in range(6):
        step(ref, 0, t)
    for name in TABLES:
        assert numpy.array_equal(got[name], ref.values[name]), name
    assert numpy.array_equal(hist, ref.data["hist1"])
    assert stats["bytes_to_host"] == 6 * plan.to_host
    assert stats["bytes_sent"] > 0  # resident logs copied to the host for the shards

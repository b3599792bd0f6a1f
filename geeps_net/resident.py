"""ResidentTrainer: a training iteration without the parameter server, every blob resident on
the Net, in Caffe's own order (ForwardBackward, then ApplyUpdate). The baseline that
worker.PsTrainer must match bit for bit, and what `-no_ps` runs."""

from __future__ import annotations

import numpy

from geeps_net.backend import to_host
from geeps_net.net import Net
from geeps_net.proto import caffe_pb2
from geeps_net.solvers import clip_gradients, normalize


class ResidentTrainer:
    """One training iteration on a resident Net: Caffe's ForwardBackward then ApplyUpdate."""

    def __init__(self, net: Net, rule, param: caffe_pb2.SolverParameter) -> None:
        self.net, self.rule, self.param, xp = net, rule, param, net.xp
        self.history = [
            [xp.zeros(p.blob.shape, p.blob.dtype) for _ in range(rule.num_history)]
            for p in net.learnable
        ]

    def step(self, it: int, rate: float) -> float:
        """Zero diffs, iter_size forward/backward passes, then the update; the mean loss."""
        net, xp, iter_size = self.net, self.net.xp, max(self.param.iter_size, 1)
        net.clear_param_diffs()
        loss = sum(net.forward_backward() for _ in range(iter_size)) / iter_size
        params = net.learnable
        if self.param.clip_gradients >= 0:
            clip_gradients(xp, [p.blob.diff for p in params], self.param.clip_gradients)
        for p, history in zip(params, self.history):
            blob = p.blob
            normalize(xp, blob.diff, iter_size)
            self.rule.update(
                xp,
                it,
                rate,
                p.lr_mult,
                p.decay_mult,
                blob.data,
                blob.diff,
                history,
                then="subtract",
            )
        return loss

    def outputs(self) -> dict[str, numpy.ndarray]:
        return {name: to_host(self.net.blobs[name].data) for name in self.net.outputs}

    def feed(self, name: str, value) -> None:
        """Set the data of an Input layer's top, used by every following iteration."""
        blob = self.net.blobs[name]
        blob.data[...] = self.net.xp.asarray(value, dtype=blob.dtype).reshape(blob.shape)

    def param_arrays(self) -> list[numpy.ndarray]:
        return [to_host(p.blob.data) for p in self.net.learnable]

    def history_arrays(self) -> list[numpy.ndarray]:
        """History blobs in Caffe's order: all first-history blobs, then all second-history
        blobs."""
        return [to_host(h[k]) for k in range(self.rule.num_history) for h in self.history]

    def load(self, params=None, history=None) -> None:
        xp = self.net.xp
        for p, value in zip(self.net.learnable, params or []):
            if value is not None:
                p.blob.data[...] = xp.asarray(value).reshape(p.blob.shape)
        if history:
            n = len(self.history)
            for k in range(self.rule.num_history):
                for i, h in enumerate(self.history):
                    h[k][...] = xp.asarray(history[k * n + i]).reshape(h[k].shape)

    def close(self) -> None:
        self.net.close()

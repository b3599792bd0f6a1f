"""Caffe's solver arithmetic: learning-rate policies, gradient clipping and the six update rules.

Pure functions of arrays and a SolverParameter; the solver loop (solver.py) owns the order of calls,
Caffe's ApplyUpdate: rate = learning_rate(param, iter) -> clip_gradients (all params) -> per
learnable param: normalize -> rule.update (regularize, compute the update value, in place on the
diff) -> the caller's data -= diff.

Scalars follow Caffe's `Dtype` arithmetic: with float32 arrays every scalar is a float32 and each
array operation rounds like Caffe's CPU code (caffe_cpu_axpby = scale then axpy, caffe_powx,
caffe_div ...); with float64 arrays the same code runs in double. Caffe computes `pow(float, int)`
in double (C++ promotion), `pow(float, float)` and `exp(float)` in float; the learning rate is a
float.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy

from geeps_net.backend import split_work
from geeps_net.errors import SolverError

log = logging.getLogger(__name__)

f32 = numpy.float32


@dataclass
class LrState:
    """Learning-rate state kept in the .solverstate: Caffe's `current_step_` (step, multistep)."""

    current_step: int = 0


# -- learning-rate policies ------------------------------------------------------------------------


def _require(ok: bool, policy: str, what: str) -> None:
    if not ok:
        raise SolverError(f'lr_policy "{policy}": {what}')


def _rate(value) -> float:
    """Round to Caffe's float `Dtype` and hand back a Python float."""
    return float(f32(value))


def _fixed(param, it: int, state: LrState) -> float:
    """base_lr."""
    return _rate(param.base_lr)


def _step(param, it: int, state: LrState) -> float:
    """base_lr · gamma^floor(iter / stepsize); also sets current_step as Caffe does."""
    _require(param.stepsize > 0, "step", f"stepsize must be > 0, got {param.stepsize}")
    _require(param.gamma >= 0, "step", f"gamma must be >= 0, got {param.gamma}")
    state.current_step = it // param.stepsize
    return _rate(param.base_lr * math.pow(param.gamma, state.current_step))  # double pow


def _exp(param, it: int, state: LrState) -> float:
    """base_lr · gamma^iter."""
    _require(param.gamma >= 0, "exp", f"gamma must be >= 0, got {param.gamma}")
    return _rate(param.base_lr * math.pow(param.gamma, it))


def _inv(param, it: int, state: LrState) -> float:
    """base_lr · (1 + gamma·iter)^(−power), all in float as Caffe's pow(float, float)."""
    _require(param.gamma >= 0, "inv", f"gamma must be >= 0, got {param.gamma}")
    base = f32(1) + f32(param.gamma) * f32(it)
    return _rate(f32(param.base_lr) * numpy.power(base, -f32(param.power)))


def _multistep(param, it: int, state: LrState) -> float:
    """base_lr · gamma^current_step; current_step advances by at most one per call (iteration)."""
    steps = param.stepvalue
    if state.current_step < len(steps) and it >= steps[state.current_step]:
        state.current_step += 1
        log.info("MultiStep Status: Iteration %d, step = %d", it, state.current_step)
    return _rate(param.base_lr * math.pow(param.gamma, state.current_step))


def _poly(param, it: int, state: LrState) -> float:
    """base_lr · (1 − iter/max_iter)^power, in float."""
    _require(param.max_iter > 0, "poly", f"max_iter must be > 0, got {param.max_iter}")
    base = f32(1) - f32(it) / f32(param.max_iter)
    return _rate(f32(param.base_lr) * numpy.power(base, f32(param.power)))


def _sigmoid(param, it: int, state: LrState) -> float:
    """base_lr · 1/(1 + exp(−gamma·(iter − stepsize))), in float."""
    _require(param.gamma >= 0, "sigmoid", f"gamma must be >= 0, got {param.gamma}")
    _require(param.stepsize > 0, "sigmoid", f"stepsize must be > 0, got {param.stepsize}")
    with numpy.errstate(over="ignore"):  # exp overflow -> inf -> rate 0, as in C
        e = numpy.exp(-f32(param.gamma) * (f32(it) - f32(param.stepsize)))
        return _rate(f32(param.base_lr) * (f32(1) / (f32(1) + e)))


LR_POLICIES: dict[str, Callable[..., float]] = {
    "fixed": _fixed,
    "step": _step,
    "exp": _exp,
    "inv": _inv,
    "multistep": _multistep,
    "poly": _poly,
    "sigmoid": _sigmoid,
}


def learning_rate(param, it: int, state: LrState) -> float:
    """Caffe's GetLearningRate: LR_POLICIES[param.lr_policy]; unknown ones name the known."""
    if not param.lr_policy:
        raise SolverError(f"lr_policy is not set (known: {', '.join(LR_POLICIES)})")
    try:
        policy = LR_POLICIES[param.lr_policy]
    except KeyError:
        known = ", ".join(LR_POLICIES)
        raise SolverError(f'unknown lr_policy "{param.lr_policy}" (known: {known})') from None
    return policy(param, it, state)


# -- gradient scaling ----------------------------------------------------------------------------


def clip_gradients(xp, diffs: list, clip: float) -> None:
    """Caffe's ClipGradients: if clip >= 0 and L = √(Σ all g²) > clip, every diff ·= clip / L.

    `diffs` are the diffs of all learnable params (accumulated over iter_size, not yet normalized).
    """
    if clip < 0 or not diffs:
        return
    t = diffs[0].dtype.type
    sumsq = t(0)
    for d in diffs:  # one dot per blob summed in Dtype, as Blob::sumsq_diff
        flat = d.ravel()
        sumsq = sumsq + t(float(xp.vdot(flat, flat)))
    norm = numpy.sqrt(sumsq)
    if norm > t(clip):
        scale = t(clip) / norm
        log.info(
            "Gradient clipping: scaling down gradients (L2 norm %g > %g) by scale factor %g",
            norm,
            clip,
            scale,
        )
        for d in diffs:
            d *= scale


def normalize(xp, diff, iter_size: int) -> None:
    """Caffe's Normalize: diff ·= 1/iter_size (the reciprocal, in Dtype) when iter_size > 1."""
    if iter_size > 1:
        t = diff.dtype.type
        diff *= t(1) / t(iter_size)


# -- update rules --------------------------------------------------------------------------------

SOLVERS: dict[str, type[UpdateRule]] = {}

# SolverParameter.solver_type (legacy enum value) -> type string, as Caffe's UpgradeSolverType
LEGACY_SOLVER_TYPES = {
    0: "SGD",
    1: "Nesterov",
    2: "AdaGrad",
    3: "RMSProp",
    4: "AdaDelta",
    5: "Adam",
}


def _rule(name: str):
    def decorate(cls):
        cls.type = name
        SOLVERS[name] = cls
        return cls

    return decorate


def solver_type(param) -> str:
    """The solver type string: `type`, or the legacy `solver_type` enum upgraded as Caffe does."""
    if not param.HasField("solver_type"):
        return param.type
    if param.HasField("type"):
        raise SolverError(
            "solver_type (legacy enum) and type (string) cannot both be set; keep only type"
        )
    try:
        return LEGACY_SOLVER_TYPES[param.solver_type]
    except KeyError:
        raise SolverError(f"unknown solver_type {param.solver_type}") from None


def create_update_rule(param) -> UpdateRule:
    """The update rule for `param` (type or legacy solver_type); unknown ones name the known."""
    name = solver_type(param)
    try:
        cls = SOLVERS[name]
    except KeyError:
        known = ", ".join(sorted(SOLVERS))
        raise SolverError(f'unknown solver type "{name}" (known: {known})') from None
    return cls(param)


class UpdateRule:
    """One of Caffe's SGD-family solvers, reduced to its per-parameter arithmetic.

    `num_history` history arrays per learnable param, shaped like it and zero at the start; in the
    .solverstate Caffe stores the first history of every param, then the second of every param.
    """

    type = ""
    num_history = 1

    def __init__(self, param) -> None:
        self.param = param
        if param.regularization_type not in ("L1", "L2"):
            raise SolverError(
                f'{self.type}: unknown regularization_type "{param.regularization_type}" '
                "(known: L1, L2)"
            )

    def update(
        self,
        xp,
        it: int,
        rate: float,
        lr_mult: float,
        decay_mult: float,
        data,
        diff,
        history: list,
        then: str | None = None,
    ) -> None:
        """Regularize, then turn `diff` into the value to subtract (data -= diff is the caller's).

        it: iteration (before increment); rate: the policy's learning rate; lr_mult / decay_mult:
        the param's ParamSpec; history: this param's `num_history` arrays, updated in place.
        `then` finishes each block while it is in cache: "subtract" (data -= diff, Caffe's
        Blob::Update) or "negate" (diff = −diff, for a PS that adds the buffer); None leaves it.

        Every rule is elementwise, so on the CPU it runs block by block (UPDATE_BLOCK elements):
        the same float operations per element, in the same order, with block-sized temporaries
        instead of whole-blob ones (measured 4x faster on AlexNet's 61 M params), the blocks
        shared out to the CPU threads (AlexNet's fc6, fc7 and conv4 together, alternating in
        one process: 48 ms on one thread, 32 ms on two).
        """
        if then not in (None, "subtract", "negate"):
            raise ValueError(f'then must be None, "subtract" or "negate", got {then!r}')
        t = diff.dtype.type
        decay, lr = t(self.param.weight_decay) * t(decay_mult), t(rate) * t(lr_mult)

        def run(blocks) -> None:
            for d, g, h in blocks:
                self.regularize(xp, decay, d, g)
                self.compute(xp, it, lr, g, h)
                if then == "subtract":
                    d -= g
                elif then == "negate":
                    xp.negative(g, out=g)

        split_work(xp, run, list(_blocks(xp, data, diff, history)))

    def regularize(self, xp, decay, data, diff) -> None:
        """L2: g += λ·w; L1: g += λ·sign(w); nothing when λ = 0 (Caffe's `if (local_decay)`)."""
        if not decay:
            return
        term = xp.sign(data) if self.param.regularization_type == "L1" else data
        diff += decay * term  # caffe_axpy(λ, term, diff)

    def compute(self, xp, it, lr, diff, history) -> None:  # pragma: no cover - abstract
        """ComputeUpdateValue with local rate `lr` (rate · lr_mult, in Dtype)."""
        raise NotImplementedError


# Elements per block of the CPU update. 1 << 16 kept a block's data, diff and history in L2,
# but its NumPy calls were too short to run on two threads at once. AlexNet's fc6, fc7 and conv4
# (medians of 7 rounds in one process): 57 ms at 1 << 16 on one thread, 51 ms on two; 48 and
# 32 ms at 1 << 18. LeNet's params took 0.29-0.33 ms every way.
UPDATE_BLOCK = 1 << 18


def _blocks(xp, data, diff, history):
    """(data, diff, history) as matching flat blocks; the whole arrays on a GPU or when one of
    them is not contiguous (a flat view would be a copy, and writes to it would be lost)."""
    arrays = [data, diff, *history]
    if (
        xp is not numpy
        or diff.size <= UPDATE_BLOCK
        or not all(a.flags.c_contiguous for a in arrays)
    ):
        yield data, diff, history
        return
    flat = [a.reshape(-1) for a in arrays]
    for start in range(0, diff.size, UPDATE_BLOCK):
        block = [a[start : start + UPDATE_BLOCK] for a in flat]
        yield block[0], block[1], block[2:]


def _axpby(a, x, b, y) -> None:
    """y = a·x + b·y in place, rounded as Caffe's cblas_saxpby fallback (scale y, then axpy)."""
    y *= b
    y += a * x


@_rule("SGD")
class SGD(UpdateRule):
    """v = momentum·v + lr·g; g = v."""

    def compute(self, xp, it, lr, diff, history) -> None:
        (v,) = history
        _axpby(lr, diff, diff.dtype.type(self.param.momentum), v)
        diff[...] = v


@_rule("Nesterov")
class Nesterov(UpdateRule):
    """v_prev = v; v = momentum·v + lr·g; g = (1 + momentum)·v − momentum·v_prev."""

    def compute(self, xp, it, lr, diff, history) -> None:
        (v,) = history
        m = diff.dtype.type(self.param.momentum)
        update = v.copy()  # Caffe's update_ temp: the previous momentum
        _axpby(lr, diff, m, v)
        _axpby(diff.dtype.type(1) + m, v, -m, update)
        diff[...] = update


def _check_no_momentum(rule: UpdateRule) -> None:
    if rule.param.momentum != 0:
        raise SolverError(
            f"{rule.type}: momentum cannot be used with {rule.type} (got {rule.param.momentum:g})"
        )


def _scaled_ratio(xp, lr, numerator, h, delta, out) -> None:
    """out = lr · numerator/(√h + delta): Caffe's powx(0.5), add_scalar, div, axpby(lr, ·, 0)."""
    update = xp.sqrt(h)
    update += delta
    xp.divide(numerator, update, out=update)
    update *= lr
    out[...] = update


@_rule("AdaGrad")
class AdaGrad(UpdateRule):
    """h += g²; g = lr·g/(√h + delta). Momentum must be 0."""

    def __init__(self, param) -> None:
        super().__init__(param)
        _check_no_momentum(self)

    def compute(self, xp, it, lr, diff, history) -> None:
        (h,) = history
        h += diff * diff
        _scaled_ratio(xp, lr, diff, h, diff.dtype.type(self.param.delta), diff)


@_rule("RMSProp")
class RMSProp(UpdateRule):
    """h = rms_decay·h + (1 − rms_decay)·g²; g = lr·g/(√h + delta). Momentum must be 0."""

    def __init__(self, param) -> None:
        super().__init__(param)
        _check_no_momentum(self)
        if not 0 <= param.rms_decay < 1:
            raise SolverError(f"RMSProp: rms_decay must lie in [0, 1), got {param.rms_decay}")

    def compute(self, xp, it, lr, diff, history) -> None:
        (h,) = history
        t = diff.dtype.type
        decay = t(self.param.rms_decay)
        _axpby(t(1) - decay, diff * diff, decay, h)
        _scaled_ratio(xp, lr, diff, h, t(self.param.delta), diff)


@_rule("AdaDelta")
class AdaDelta(UpdateRule):
    """h1 = m·h1 + (1−m)·g²; u = g·√((h2 + δ)/(h1 + δ)); h2 = m·h2 + (1−m)·u²; g = lr·u."""

    num_history = 2

    def compute(self, xp, it, lr, diff, history) -> None:
        h1, h2 = history
        t = diff.dtype.type
        m, delta = t(self.param.momentum), t(self.param.delta)
        _axpby(t(1) - m, diff * diff, m, h1)
        update = h2 + delta
        update /= h1 + delta  # ratio before the square root, as AdaDeltaSolver does
        xp.sqrt(update, out=update)
        diff *= update
        _axpby(t(1) - m, diff * diff, m, h2)
        diff *= lr


@_rule("Adam")
class Adam(UpdateRule):
    """m = β1·m + (1−β1)·g; v = β2·v + (1−β2)·g²; g = lr·√(1−β2ᵗ)/(1−β1ᵗ)·m/(√v + δ), t = it + 1."""

    num_history = 2

    def compute(self, xp, it, lr, diff, history) -> None:
        m, v = history
        t = diff.dtype.type
        beta1, beta2 = t(self.param.momentum), t(self.param.momentum2)
        step = it + 1
        # pow(Dtype, int) promotes to double in C++; the correction is rounded to Dtype once
        correction = t(math.sqrt(1.0 - math.pow(beta2, step)) / (1.0 - math.pow(beta1, step)))
        _axpby(t(1) - beta1, diff, beta1, m)
        _axpby(t(1) - beta2, diff * diff, beta2, v)
        _scaled_ratio(xp, lr * correction, m, v, t(self.param.delta), diff)

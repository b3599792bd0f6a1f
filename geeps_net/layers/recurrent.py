"""Recurrent layers: RNN and LSTM (Caffe's RecurrentLayer family) and the single-step LSTMUnit.

Caffe builds RNN/LSTM as an unrolled internal net; here each is one explicit loop over the T
timesteps, vectorised over the N streams and the features, with Caffe's learnable blobs (order,
shapes, fillers) and numbers. Every per-timestep value backward needs is an internal blob.

Two Caffe 1.0 facts kept on purpose:
- with expose_hidden, the initial-state bottoms feed forward only: their diff is zero, and the
  diffs of the final-state tops are ignored (Caffe shares their data, not their diff: it does not
  backpropagate across batches);
- the forget gate is f = cont * sigmoid(.), with gradient dc * c_prev * f * (1 - f) (LSTMUnitLayer).

One deliberate difference: without expose_hidden, Caffe copies the previous forward's final state
into the next forward's initial state; here the initial state is zero at every forward (a layer
keeps no state between passes). The two agree whenever each batch starts its sequences with
cont = 0; they differ only for streams that continue across batches (cont = 1 at t = 0).
"""

from __future__ import annotations

from geeps_net.layer import Layer, register


def _sigmoid_(xp, z) -> None:
    """z <- 1 / (1 + exp(-z)) in place, as 0.5 * tanh(z / 2) + 0.5 (no overflow for large |z|)."""
    xp.multiply(z, 0.5, out=z)
    xp.tanh(z, out=z)
    xp.multiply(z, 0.5, out=z)
    xp.add(z, 0.5, out=z)


def lstm_cell(xp, z, cont, c_prev, c, h) -> None:
    """One LSTM step (Caffe's LSTMUnit) for N streams of width D.

    z (N, 4D): gate pre-activations [i, f, o, g], overwritten with the activations
    [i, cont * f, o, g]; cont (N,); c_prev (N, D). Writes c = f * c_prev + i * g, h = o * tanh(c).
    """
    d = c_prev.shape[-1]
    _sigmoid_(xp, z[:, : 3 * d])
    z[:, d : 2 * d] *= cont[:, None]
    xp.tanh(z[:, 3 * d :], out=z[:, 3 * d :])
    i, f, o, g = z[:, :d], z[:, d : 2 * d], z[:, 2 * d : 3 * d], z[:, 3 * d :]
    c[...] = f * c_prev + i * g
    h[...] = o * xp.tanh(c)


def lstm_cell_backward(xp, acts, c_prev, c, dc, dh, dz):
    """Caffe's LSTMUnit gradient. acts (N, 4D) from `lstm_cell`; dc, dh: diffs reaching c and h.

    Writes dz (N, 4D), the diff of the gate pre-activations; returns c_prev's diff (dc_total * f).
    """
    d = c.shape[-1]
    i, f, o, g = acts[:, :d], acts[:, d : 2 * d], acts[:, 2 * d : 3 * d], acts[:, 3 * d :]
    tanh_c = xp.tanh(c)
    dct = dc + dh * o * (1 - tanh_c * tanh_c)
    dz[:, :d] = dct * g * i * (1 - i)
    dz[:, d : 2 * d] = dct * c_prev * f * (1 - f)
    dz[:, 2 * d : 3 * d] = dh * tanh_c * o * (1 - o)
    dz[:, 3 * d :] = dct * i * (1 - g * g)
    return dct * f


class RecurrentLayer(Layer):
    """Shared part of RNN and LSTM.

    Bottoms: x (T, N, ...), cont (T, N), [x_static (N, ...)], then with expose_hidden the
    initial states (1, N, num_output). Tops: the output (T, N, num_output), then with expose_hidden
    the final states (1, N, num_output). x is flattened from axis 2, x_static from axis 1.
    """

    num_bottoms = (2, 5)  # checked exactly in setup, where expose_hidden is known
    num_tops = (1, 3)
    no_gradient_bottoms = (1,)  # cont: Caffe refuses to backpropagate to sequence indicators
    state_names: tuple[str, ...] = ()  # recurrent states, in Caffe's bottom/top order

    def setup(self, bottoms, tops):
        p = self.layer_param.recurrent_param
        self.num_output, self.expose_hidden = p.num_output, p.expose_hidden
        if self.num_output <= 0:
            raise self.error("recurrent_param.num_output must be positive")
        exposed = len(self.state_names) if self.expose_hidden else 0
        if len(bottoms) not in (2 + exposed, 3 + exposed) or len(tops) != 1 + exposed:
            states = ", ".join(f"{s}_0" for s in self.state_names) if exposed else ""
            raise self.error(
                f"expose_hidden {str(self.expose_hidden).lower()} takes bottoms x, cont, [x_static]"
                f"{', ' + states if states else ''} and {1 + exposed} top(s); "
                f"got {len(bottoms)} bottom(s), {len(tops)} top(s)"
            )
        self.static_input = len(bottoms) == 3 + exposed
        if bottoms[0].num_axes < 2:
            raise self.error(f"bottom x must be (T, N, ...), got shape {bottoms[0].shape}")
        self.input_dim = bottoms[0].count_range(2)
        self.static_dim = bottoms[2].count_range(1) if self.static_input else 0
        self.declare_params(p.weight_filler, p.bias_filler)

    def declare_params(self, weight_filler, bias_filler) -> None:
        """add_param the learnable blobs in Caffe's order."""
        raise NotImplementedError

    def reshape(self, bottoms, tops):
        x, cont = bottoms[0], bottoms[1]
        if x.num_axes < 2 or x.count_range(2) != self.input_dim:
            raise self.error(f"bottom x {x.shape}: want (T, N, ...) of {self.input_dim} per step")
        t, n = x.shape[:2]
        self.steps, self.streams = t, n
        if cont.shape != (t, n):
            raise self.error(f"bottom cont must be (T, N) = {(t, n)}, got {cont.shape}")
        if self.static_input:
            xs = bottoms[2]
            if xs.num_axes < 1 or xs.shape[0] != n or xs.count_range(1) != self.static_dim:
                raise self.error(
                    f"bottom x_static {xs.shape}: want ({n}, ...) of {self.static_dim} per stream"
                )
        state_shape = (1, n, self.num_output)
        for k, blob in enumerate(self.state_bottoms(bottoms)):
            if blob.shape != state_shape:
                raise self.error(
                    f"bottom {self.state_names[k]}_0 must be {state_shape}, got {blob.shape}"
                )
        tops[0].reshape((t, n, self.num_output))
        for top in tops[1:]:
            top.reshape(state_shape)
        self.declare_internals(t, n)

    def declare_internals(self, steps: int, streams: int) -> None:
        """add_internal the per-timestep state backward reads."""
        raise NotImplementedError

    def state_bottoms(self, bottoms):
        """The initial-state bottoms (empty without expose_hidden)."""
        return bottoms[3 if self.static_input else 2 :] if self.expose_hidden else []

    def input_transform(self, xp, bottoms, weight, bias, static_weight, out) -> None:
        """out (T, N, M) = x W^T + b (+ x_static W_static^T, the same for every timestep)."""
        t, n = self.steps, self.streams
        x2 = bottoms[0].data.reshape(t * n, self.input_dim)
        out[...] = xp.matmul(x2, weight.T).reshape(out.shape)
        out += bias
        if self.static_input:
            out += xp.matmul(bottoms[2].data.reshape(n, self.static_dim), static_weight.T)

    def input_backward(self, xp, propagate_down, bottoms, dz, weight, bias, static_weight) -> None:
        """Diffs of input_transform for dz (T, N, M): accumulate params, write x, x_static diffs."""
        t, n = self.steps, self.streams
        dz2 = dz.reshape(t * n, -1)
        weight.diff += xp.matmul(dz2.T, bottoms[0].data.reshape(t * n, self.input_dim))
        bias.diff += dz2.sum(axis=0)
        if propagate_down[0]:
            bottoms[0].diff[...] = xp.matmul(dz2, weight.data).reshape(bottoms[0].shape)
        if self.static_input:
            dzs = dz.sum(axis=0)  # x_static feeds every timestep
            xs2 = bottoms[2].data.reshape(n, self.static_dim)
            static_weight.diff += xp.matmul(dzs.T, xs2)
            if propagate_down[2]:
                dxs = xp.matmul(dzs, static_weight.data)
                bottoms[2].diff[...] = dxs.reshape(bottoms[2].shape)
        for k, blob in enumerate(self.state_bottoms(bottoms)):
            if propagate_down[len(bottoms) - len(self.state_names) + k]:
                blob.diff[...] = 0  # Caffe: the exposed initial state takes no gradient


@register("RNN")
class RNNLayer(RecurrentLayer):
    """Elman RNN, D = num_output.

    h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static]);
    top o_t = tanh(W_ho h_t + b_o), (T, N, D). Learnable: W_xh (D, input_dim), b_h (D),
    [W_xh_static (D, static_dim)], W_hh (D, D), W_ho (D, D), b_o (D).
    Internal "h" (T+1, N, D): h_0..h_T.
    """

    backward_reads = frozenset({"bottom_data", "top_data", "top_diff"})  # o for tanh'
    state_names = ("h",)

    def declare_params(self, weight_filler, bias_filler):
        d = self.num_output
        self.add_param((d, self.input_dim), weight_filler)  # W_xh
        self.add_param((d,), bias_filler)  # b_h
        if self.static_input:
            self.add_param((d, self.static_dim), weight_filler)  # W_xh_static
        self.add_param((d, d), weight_filler)  # W_hh
        self.add_param((d, d), weight_filler)  # W_ho
        self.add_param((d,), bias_filler)  # b_o

    def params(self):
        """(W_xh, b_h, W_xh_static or None, W_hh, W_ho, b_o)."""
        b = self.blobs
        return (b[0], b[1], b[2], b[3], b[4], b[5]) if self.static_input else (*b[:2], None, *b[2:])

    def declare_internals(self, steps, streams):
        self.add_internal("h", (steps + 1, streams, self.num_output))

    def forward(self, xp, bottoms, tops):
        w_xh, b_h, w_s, w_hh, w_ho, b_o = self.params()
        h, cont = self.internals["h"].data, bottoms[1].data
        static = None if w_s is None else w_s.data
        self.input_transform(xp, bottoms, w_xh.data, b_h.data, static, h[1:])
        states = self.state_bottoms(bottoms)
        h[0] = states[0].data[0] if states else 0
        for t in range(self.steps):
            h[t + 1] += xp.matmul(cont[t][:, None] * h[t], w_hh.data.T)
            xp.tanh(h[t + 1], out=h[t + 1])
        o = tops[0].data
        o[...] = xp.matmul(h[1:], w_ho.data.T)
        o += b_o.data
        xp.tanh(o, out=o)
        if self.expose_hidden:
            tops[1].data[0] = h[self.steps]

    def backward(self, xp, tops, propagate_down, bottoms):
        w_xh, b_h, w_s, w_hh, w_ho, b_o = self.params()
        h, cont = self.internals["h"].data, bottoms[1].data
        d = self.num_output
        o = tops[0].data
        dzo = tops[0].diff * (1 - o * o)  # only the o top's diff: Caffe drops the exposed h_T's
        w_ho.diff += xp.matmul(dzo.reshape(-1, d).T, h[1:].reshape(-1, d))
        b_o.diff += dzo.reshape(-1, d).sum(axis=0)
        dz = xp.matmul(dzo, w_ho.data)  # dE/dh_t from o_t; becomes dE/d(pre-tanh h_t) below
        dnext = xp.zeros_like(dz[0])
        for t in range(self.steps - 1, -1, -1):
            dz[t] += dnext
            dz[t] *= 1 - h[t + 1] * h[t + 1]
            dnext = cont[t][:, None] * xp.matmul(dz[t], w_hh.data)
        h_conted = cont[:, :, None] * h[:-1]
        w_hh.diff += xp.matmul(dz.reshape(-1, d).T, h_conted.reshape(-1, d))
        self.input_backward(xp, propagate_down, bottoms, dz, w_xh, b_h, w_s)


@register("LSTM")
class LSTMLayer(RecurrentLayer):
    """LSTM, D = num_output.

    Gates z_t = W_xc x_t + b_c [+ W_xc_static x_static] + W_hc (cont_t h_{t-1}), rows [i, f, o, g];
    c_t = cont_t sigmoid(f) c_{t-1} + sigmoid(i) tanh(g); top h_t = sigmoid(o) tanh(c_t), (T, N, D).
    Learnable: W_xc (4D, input_dim), b_c (4D), [W_xc_static (4D, static_dim)], W_hc (4D, D).
    Internals: "gates" (T, N, 4D) activations, "c" (T+1, N, D) c_0..c_T, "h_conted" (T, N, D)
    cont_t h_{t-1}.
    """

    backward_reads = frozenset({"bottom_data", "top_diff"})
    state_names = ("h", "c")

    def declare_params(self, weight_filler, bias_filler):
        d4 = 4 * self.num_output
        self.add_param((d4, self.input_dim), weight_filler)  # W_xc
        self.add_param((d4,), bias_filler)  # b_c
        if self.static_input:
            self.add_param((d4, self.static_dim), weight_filler)  # W_xc_static
        self.add_param((d4, self.num_output), weight_filler)  # W_hc

    def params(self):
        """(W_xc, b_c, W_xc_static or None, W_hc)."""
        b = self.blobs
        return tuple(b) if self.static_input else (b[0], b[1], None, b[2])

    def declare_internals(self, steps, streams):
        d = self.num_output
        self.add_internal("gates", (steps, streams, 4 * d))
        self.add_internal("c", (steps + 1, streams, d))
        self.add_internal("h_conted", (steps, streams, d))

    def forward(self, xp, bottoms, tops):
        w_xc, b_c, w_s, w_hc = self.params()
        gates, c = self.internals["gates"].data, self.internals["c"].data
        h_conted, cont, h = self.internals["h_conted"].data, bottoms[1].data, tops[0].data
        static = None if w_s is None else w_s.data
        self.input_transform(xp, bottoms, w_xc.data, b_c.data, static, gates)
        states = self.state_bottoms(bottoms)
        h_prev = states[0].data[0] if states else xp.zeros_like(h[0])
        c[0] = states[1].data[0] if states else 0
        for t in range(self.steps):
            xp.multiply(cont[t][:, None], h_prev, out=h_conted[t])
            gates[t] += xp.matmul(h_conted[t], w_hc.data.T)
            lstm_cell(xp, gates[t], cont[t], c[t], c[t + 1], h[t])
            h_prev = h[t]
        if self.expose_hidden:
            tops[1].data[0] = h[self.steps - 1]
            tops[2].data[0] = c[self.steps]

    def backward(self, xp, tops, propagate_down, bottoms):
        w_xc, b_c, w_s, w_hc = self.params()
        gates, c = self.internals["gates"].data, self.internals["c"].data
        h_conted, cont, dh_top = self.internals["h_conted"].data, bottoms[1].data, tops[0].diff
        d = self.num_output
        dz = xp.empty_like(gates)
        dh_next = xp.zeros_like(dh_top[0])
        dc_next = xp.zeros_like(dh_top[0])  # Caffe drops the exposed c_T's and h_T's diffs
        for t in range(self.steps - 1, -1, -1):
            dh = dh_top[t] + dh_next
            dc_next = lstm_cell_backward(xp, gates[t], c[t], c[t + 1], dc_next, dh, dz[t])
            dh_next = cont[t][:, None] * xp.matmul(dz[t], w_hc.data)
        w_hc.diff += xp.matmul(dz.reshape(-1, 4 * d).T, h_conted.reshape(-1, d))
        self.input_backward(xp, propagate_down, bottoms, dz, w_xc, b_c, w_s)


@register("LSTMUnit")
class LSTMUnitLayer(Layer):
    """One LSTM step: bottoms c_prev (1, N, D), gates x (1, N, 4D) as [i, f, o, g], cont (1, N);
    tops c = cont sigmoid(f) c_prev + sigmoid(i) tanh(g) and h = sigmoid(o) tanh(c), both (1, N, D).
    Backward recomputes the activations from the bottoms (Caffe's CPU path does too).
    """

    num_bottoms = 3
    num_tops = 2
    backward_reads = frozenset({"bottom_data", "top_diff"})
    no_gradient_bottoms = (2,)

    def reshape(self, bottoms, tops):
        c_prev, x, cont = bottoms
        if c_prev.num_axes != 3 or c_prev.shape[0] != 1:
            raise self.error(f"bottom c_prev must be (1, N, D), got {c_prev.shape}")
        n, d = c_prev.shape[1:]
        if x.shape != (1, n, 4 * d):
            raise self.error(f"bottom gates must be (1, N, 4D) = {(1, n, 4 * d)}, got {x.shape}")
        if cont.shape != (1, n):
            raise self.error(f"bottom cont must be (1, N) = {(1, n)}, got {cont.shape}")
        tops[0].reshape(c_prev.shape)
        tops[1].reshape(c_prev.shape)

    def forward(self, xp, bottoms, tops):
        c_prev, x, cont = (b.data[0] for b in bottoms)
        acts = x.copy()
        lstm_cell(xp, acts, cont, c_prev, tops[0].data[0], tops[1].data[0])

    def backward(self, xp, tops, propagate_down, bottoms):
        if not (propagate_down[0] or propagate_down[1]):
            return
        c_prev, x, cont = (b.data[0] for b in bottoms)
        acts, c, h = x.copy(), xp.empty_like(c_prev), xp.empty_like(c_prev)
        lstm_cell(xp, acts, cont, c_prev, c, h)
        dz = bottoms[1].diff[0] if propagate_down[1] else xp.empty_like(x)
        dc_prev = lstm_cell_backward(xp, acts, c_prev, c, tops[0].diff[0], tops[1].diff[0], dz)
        if propagate_down[0]:
            bottoms[0].diff[0] = dc_prev

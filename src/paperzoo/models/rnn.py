"""Recurrent networks written from their equations: Elman RNN, LSTM and GRU.

* Elman, "Finding Structure in Time", Cognitive Science 14 (1990) (no arXiv id).
* Hochreiter & Schmidhuber, "Long Short-Term Memory", Neural Computation 9 (1997); the forget gate is from
  Gers, Schmidhuber & Cummins, "Learning to Forget" (2000), as in every modern LSTM.
* Cho et al., "Learning Phrase Representations using RNN Encoder-Decoder for Statistical Machine
  Translation", arXiv:1406.1078 (2014), Sec. 2.3 (the GRU).

Key idea: a recurrent cell folds the past into a state h_t = f(x_t, h_{t-1}). A plain RNN multiplies the
state by the same W_hh at every step, so gradients through many steps vanish or explode (the "long-term
dependency" problem). The LSTM adds a cell state c_t updated *additively* (c_t = f⊙c_{t-1} + i⊙g), which lets
information and gradients flow across many steps; the GRU gets a similar effect with two gates.

Equations (gate order and names exactly as in ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU``; σ = sigmoid):

    RNN   h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)            (or ReLU)
    LSTM  i, f, g, o = σ, σ, tanh, σ (W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)   split in 4 chunks
          c_t = f ⊙ c_{t-1} + i ⊙ g;   h_t = o ⊙ tanh(c_t)   [;  h_t = W_hr h_t  if proj_size > 0]
    GRU   r, z = σ(W_i{r,z} x_t + b_i{r,z} + W_h{r,z} h_{t-1} + b_h{r,z})
          n = tanh(W_in x_t + b_in + r ⊙ (W_hn h_{t-1} + b_hn))
          h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}

Speed: the input projection W_ih x_t + b for *all* time steps is one matrix product over the whole
sequence; only the recurrent part h_{t-1} -> h_t loops over time (one ``addmm`` per step).

Deviations and options:
* GRU: PyTorch's variant (as cuDNN) applies the reset gate *after* the recurrent product,
  r ⊙ (W_hn h + b_hn); Cho et al. (Eq. 8) apply it before, W_hn (r ⊙ h). ``reset_after=False`` gives the
  paper's form (teaching path only; the parameters have the same shapes).
* Two paths, same parameters, equal to float tolerance (tested): ``fused=False`` runs the equations above in
  Python (one ``addmm`` + a few elementwise ops per step; autograd does backprop-through-time, except that the
  RNN's and LSTM's W_hh gradient is one product over all steps, see ``_RecurrentWeightGrad``);
  ``fused=True`` hands the time loop to PyTorch's fused kernels (``torch._VF.lstm`` etc., the ones
  ``nn.LSTM`` calls: oneDNN on CPU, cuDNN on GPU), which also batch the weight gradients over time.
  The default ``fused=None`` picks the fused path whenever it computes the same function (everything but
  ``reset_after=False``); set ``fused=False`` to step through the equations. See docs/models/recurrent.md.
* ``lengths`` (B,) gives variable-length batches: outputs past a sequence's length are zero and its final
  state is taken at its last valid step (the reverse direction starts there), like ``pack_padded_sequence``.
  A ``PackedSequence`` input is also accepted and gives a ``PackedSequence`` output.
* Initialisation: U(-1/√H, 1/√H) for every weight and bias, PyTorch's default for these modules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

__all__ = ["RNNCell", "LSTMCell", "GRUCell", "RNN", "LSTM", "GRU", "rnn_step", "lstm_step", "gru_step"]

# --- one time step of each cell: gx = W_ih x_t + b (precomputed), h = h_{t-1} ----------------------------


def rnn_step(gx: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None, relu: bool = False) -> Tensor:
    """Elman RNN: h_t = act(gx + W_hh h_{t-1} + b_hh). ``gx`` (B, H), ``h`` (B, H)."""
    pre = torch.addmm(gx if b_hh is None else gx + b_hh, h, w_hh.t())
    return torch.relu(pre) if relu else torch.tanh(pre)


def lstm_step(gx: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, b_hh: Tensor | None,
              w_hr: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """LSTM: gates i, f, g, o from gx + W_hh h + b_hh (B, 4H); c_t = f⊙c + i⊙g; h_t = o⊙tanh(c_t)."""
    gates = torch.addmm(gx if b_hh is None else gx + b_hh, h, w_hh.t())  # (B, 4H)
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # the additive cell update
    h = torch.sigmoid(o) * torch.tanh(c)
    if w_hr is not None:  # LSTM with projection (Sak et al. 2014), nn.LSTM's proj_size
        h = h @ w_hr.t()
    return h, c


def gru_step(gx: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor | None, reset_after: bool = True) -> Tensor:
    """GRU (gate order r, z, n). ``reset_after=True``: n = tanh(gx_n + r⊙(W_hn h + b_hn)) (PyTorch/cuDNN);
    ``False``: n = tanh(gx_n + W_hn (r⊙h) + b_hn) (Cho et al., Eq. 8)."""
    H = h.shape[1]
    if reset_after:
        gh = F.linear(h, w_hh, b_hh)  # (B, 3H)
        rz = torch.sigmoid(gx[:, : 2 * H] + gh[:, : 2 * H])
        r, z = rz.chunk(2, dim=1)
        n = torch.tanh(gx[:, 2 * H :] + r * gh[:, 2 * H :])
    else:
        b_rz, b_n = (None, None) if b_hh is None else (b_hh[: 2 * H], b_hh[2 * H :])
        rz = torch.sigmoid(gx[:, : 2 * H] + F.linear(h, w_hh[: 2 * H], b_rz))
        r, z = rz.chunk(2, dim=1)
        n = torch.tanh(gx[:, 2 * H :] + F.linear(r * h, w_hh[2 * H :], b_n))
    return n + z * (h - n)  # = (1 - z)⊙n + z⊙h, one op fewer


# --- cells: one step, parameters named like nn.RNNCell / nn.LSTMCell / nn.GRUCell --------------------------

State = tuple[Tensor, ...]  # (h,), or (h, c) for the LSTM


class _Cell(nn.Module):
    """One time step; a subclass gives its gate count (blocks stacked in W_ih, W_hh) and :meth:`_step`."""

    gates = 1
    has_cell_state = False  # the LSTM's c_t next to h_t

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        g = self.gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(g, input_size))
        self.weight_hh = nn.Parameter(torch.empty(g, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(g)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(g)) if bias else None
        bound = 1.0 / math.sqrt(hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def _step(self, gx: Tensor, state: State) -> State:
        raise NotImplementedError

    def forward(self, x: Tensor, hx: Tensor | tuple[Tensor, Tensor] | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """x (B, In) or unbatched (In,); hx: h (B, H) (LSTM: (h, c)), zeros if None. Returns h' (LSTM: (h', c'))."""
        if x.dim() not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(f"{type(self).__name__} expects input (B, {self.input_size}) or "
                             f"({self.input_size},), got {tuple(x.shape)}")
        if hx is None:
            zeros = x.new_zeros(*x.shape[:-1], self.hidden_size)
            hx = (zeros, zeros) if self.has_cell_state else zeros
        state = hx if isinstance(hx, tuple) else (hx,)
        unbatched = x.dim() == 1
        if unbatched:  # (In,) -> (1, In)
            x, state = x[None], tuple(s[None] for s in state)
        new = self._step(F.linear(x, self.weight_ih, self.bias_ih), state)
        if unbatched:
            new = tuple(s[0] for s in new)
        return new if self.has_cell_state else new[0]


class RNNCell(_Cell):
    """One Elman RNN step; ``forward(x (B, In), h (B, H)) -> h'``."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh") -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias)

    def _step(self, gx: Tensor, state: State) -> State:
        return (rnn_step(gx, state[0], self.weight_hh, self.bias_hh, relu=self.nonlinearity == "relu"),)


class LSTMCell(_Cell):
    """One LSTM step; ``forward(x (B, In), (h, c)) -> (h', c')``."""

    gates, has_cell_state = 4, True

    def _step(self, gx: Tensor, state: State) -> State:
        return lstm_step(gx, state[0], state[1], self.weight_hh, self.bias_hh)


class GRUCell(_Cell):
    """One GRU step; ``forward(x (B, In), h (B, H)) -> h'``. See ``gru_step`` for ``reset_after``."""

    gates = 3

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, reset_after: bool = True) -> None:
        self.reset_after = reset_after
        super().__init__(input_size, hidden_size, bias)

    def _step(self, gx: Tensor, state: State) -> State:
        return (gru_step(gx, state[0], self.weight_hh, self.bias_hh, self.reset_after),)


# --- multi-layer, bidirectional stacks: parameters named like nn.RNN / nn.LSTM / nn.GRU ---------------------


class _RecurrentStack(nn.Module):
    """Shared machinery of :class:`RNN`, :class:`LSTM` and :class:`GRU` (see the module docstring).

    ``forward(input, hx=None, lengths=None)`` with input (T, B, In), or (B, T, In) if ``batch_first``, or
    unbatched (T, In), or a ``PackedSequence``. Returns ``(output, h_n)`` (LSTM: ``(output, (h_n, c_n))``),
    output (T, B, D*H_out), h_n (num_layers*D, B, H_out), D = 2 if bidirectional; layer-major, direction-minor
    as in PyTorch.

    A subclass says what sets its recurrence apart: ``gates`` (blocks stacked in W_ih, W_hh),
    ``has_cell_state`` (the LSTM's c_t), ``additive_hh`` (W_hh h_{t-1} + b_hh is only *added* to the
    pre-activations, true of the RNN and LSTM but not of the GRU, whose W_hn h sits inside r ⊙ (...)), its
    fused ``kernel`` and :meth:`_step`.
    """

    gates = 1
    has_cell_state = False
    additive_hh = True
    kernel = staticmethod(torch._VF.rnn_tanh)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, fused: bool | None = None) -> None:
        super().__init__()
        if num_layers < 1 or hidden_size < 1:
            raise ValueError(f"num_layers and hidden_size must be >= 1, got {num_layers}, {hidden_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if proj_size and (not self.has_cell_state or not 0 < proj_size < hidden_size):
            raise ValueError("proj_size is only for LSTM and must satisfy 0 < proj_size < hidden_size")
        if fused and not self._kernel_matches():
            raise ValueError("fused kernels implement only reset_after=True (PyTorch's GRU)")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size = bidirectional, proj_size
        self.fused = self._kernel_matches() if fused is None else fused  # auto: fused whenever the kernel matches
        self.num_directions = 2 if bidirectional else 1
        self.output_size = proj_size or hidden_size  # size of h_t
        self._flat_names: list[str] = []  # in the order torch's kernels expect
        for layer in range(num_layers):
            in_size = input_size if layer == 0 else self.output_size * self.num_directions
            for suffix in ("", "_reverse")[: self.num_directions]:
                self._add_parameters(f"l{layer}{suffix}", in_size)
        self.reset_parameters()

    def _add_parameters(self, key: str, in_size: int) -> None:
        g = self.gates * self.hidden_size
        shapes = {"weight_ih": (g, in_size), "weight_hh": (g, self.output_size)}
        if self.bias:
            shapes.update(bias_ih=(g,), bias_hh=(g,))
        if self.proj_size:
            shapes["weight_hr"] = (self.proj_size, self.hidden_size)
        for kind, shape in shapes.items():
            self.register_parameter(f"{kind}_{key}", nn.Parameter(torch.empty(shape)))
            self._flat_names.append(f"{kind}_{key}")

    def _kernel_matches(self) -> bool:
        """Whether PyTorch's fused kernel computes this recurrence."""
        return True

    def _step(self, gx: Tensor, state: State, w_hh: Tensor, b_hh: Tensor | None, w_hr: Tensor | None) -> State:
        raise NotImplementedError

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        for k in ("batch_first", "bidirectional"):
            if getattr(self, k):
                s += f", {k}=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        return s + f", fused={self.fused}"

    # -- input checks -------------------------------------------------------------------------------------

    def _check(self, x: Tensor, states: State, lengths) -> Tensor | None:
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"{type(self).__name__} expects input ({'B, T' if self.batch_first else 'T, B'}, "
                             f"{self.input_size}) or unbatched (T, {self.input_size}), got {tuple(x.shape)}")
        T, B = (x.shape[1], x.shape[0]) if self.batch_first else x.shape[:2]
        want = self._state_shapes(B)
        if len(states) != len(want) or any(tuple(s.shape) != w for s, w in zip(states, want)):
            raise ValueError(f"initial state has shape(s) {[tuple(s.shape) for s in states]}; expected {want}")
        if lengths is None:
            return None
        lengths = torch.as_tensor(lengths, device=x.device).long()
        if lengths.shape != (B,) or lengths.min() < 1 or lengths.max() > T:
            raise ValueError(f"lengths must be a (B,) = ({B},) tensor with values in [1, T={T}], "
                             f"got shape {tuple(lengths.shape)} and values {lengths.tolist()}")
        return lengths

    def _state_shapes(self, batch: int) -> list[tuple[int, int, int]]:
        """(num_layers*D, B, H_out) for h, and (num_layers*D, B, H) for the LSTM's c."""
        n = self.num_layers * self.num_directions
        shapes = [(n, batch, self.output_size)]
        if self.has_cell_state:
            shapes.append((n, batch, self.hidden_size))
        return shapes

    # -- forward --------------------------------------------------------------------------------------------

    def forward(self, input: Tensor | PackedSequence, hx: Tensor | tuple[Tensor, Tensor] | None = None,
                lengths: Tensor | Sequence[int] | None = None
                ) -> tuple[Tensor | PackedSequence, Tensor | tuple[Tensor, Tensor]]:
        if isinstance(input, PackedSequence):  # unpack, run with lengths, pack again
            if lengths is not None:
                raise ValueError("give either a PackedSequence or lengths, not both")
            x, lens = pad_packed_sequence(input, batch_first=self.batch_first)
            out, state = self.forward(x, hx, lens)
            return pack_padded_sequence(out, lens, self.batch_first, enforce_sorted=False), state
        states = () if hx is None else hx if isinstance(hx, tuple) else (hx,)
        unbatched = input.dim() == 2
        if unbatched:  # (T, In) -> (T, 1, In) or (1, T, In); states (L*D, H) -> (L*D, 1, H)
            input, states = input.unsqueeze(0 if self.batch_first else 1), tuple(s.unsqueeze(1) for s in states)
        if not states:
            B = input.shape[0] if self.batch_first else input.shape[1]
            states = tuple(input.new_zeros(shape) for shape in self._state_shapes(B))
        lengths = self._check(input, states, lengths)
        run = self._forward_fused if self.fused else self._forward_loop
        out, states = run(input, states, lengths)
        if unbatched:
            out, states = out.squeeze(0 if self.batch_first else 1), tuple(s.squeeze(1) for s in states)
        return out, (states if self.has_cell_state else states[0])

    def _forward_loop(self, x: Tensor, hx: State, lengths: Tensor | None) -> tuple[Tensor, State]:
        """The equations, one layer and direction at a time."""
        if self.batch_first:
            x = x.transpose(0, 1)  # (B, T, In) -> (T, B, In)
        T = x.shape[0]
        mask = None
        if lengths is not None:  # (T, B, 1): True while t < length of sequence b
            mask = (torch.arange(T, device=x.device)[:, None] < lengths[None, :])[..., None]
        finals: list[State] = []  # per layer and direction, the final (h,) or (h, c)
        for layer in range(self.num_layers):
            outs = []
            for d, suffix in enumerate(("", "_reverse")[: self.num_directions]):
                k = layer * self.num_directions + d
                out, last = self._run_direction(x, tuple(s[k] for s in hx), f"l{layer}{suffix}", d == 1, mask)
                outs.append(out)
                finals.append(last)
            x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)  # (T, B, D*H)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)  # between layers, not after the last
        if self.batch_first:
            x = x.transpose(0, 1)  # (T, B, D*H) -> (B, T, D*H)
        return x, tuple(torch.stack(s) for s in zip(*finals))  # each (L*D, B, H)

    def _run_direction(self, x: Tensor, state: State, key: str, reverse: bool,
                       mask: Tensor | None) -> tuple[Tensor, State]:
        """One layer, one direction over x (T, B, In) -> outputs (T, B, H), final state."""
        w_ih, w_hh = getattr(self, f"weight_ih_{key}"), getattr(self, f"weight_hh_{key}")
        b_ih, b_hh = getattr(self, f"bias_ih_{key}", None), getattr(self, f"bias_hh_{key}", None)
        if b_hh is not None and self.additive_hh:  # b_hh sits outside any gate product: fold it in once
            b_ih, b_hh = b_ih + b_hh, None
        T, B = x.shape[:2]
        # Input projection for every time step at once: (T*B, In) @ (In, G) -> (T, B, G)
        gx = F.linear(x.reshape(T * B, -1), w_ih, b_ih).view(T, B, -1)
        w_hr = getattr(self, f"weight_hr_{key}", None)
        h_prev: list[Tensor] | None = None
        if self.additive_hh and w_hh.requires_grad and torch.is_grad_enabled():
            # W_hh's gradient for all steps in one GEMM (see _RecurrentWeightGrad); the loop uses a detached W_hh
            h_prev = [x] * T
            gx, w_hh = _RecurrentWeightGrad.apply(gx, w_hh, h_prev), w_hh.detach()
        outs: list[Tensor] = [x] * T  # placeholders, every slot is overwritten
        gxs = gx.unbind(0)
        for t in range(T - 1, -1, -1) if reverse else range(T):
            if h_prev is not None:
                h_prev[t] = state[0].detach()  # h_{t-1}, read by _RecurrentWeightGrad.backward
            new = self._step(gxs[t], state, w_hh, b_hh, w_hr)
            if mask is not None:  # finished sequences keep their state (and a reverse pass waits for its start)
                m = mask[t]
                new = tuple(torch.where(m, n, s) for n, s in zip(new, state))
                outs[t] = new[0] * m  # zero past the length
            else:
                outs[t] = new[0]
            state = new
        return torch.stack(outs), state

    def _forward_fused(self, x: Tensor, hx: State, lengths: Tensor | None) -> tuple[Tensor, State]:
        """The same parameters through PyTorch's fused kernels (what nn.RNN/LSTM/GRU run)."""
        weights = [getattr(self, n) for n in self._flat_names]
        args = (weights, self.bias, self.num_layers, self.dropout, self.training, self.bidirectional)
        state_in = hx if self.has_cell_state else hx[0]  # the kernels take (h, c) or h
        if lengths is None:
            res = self.kernel(x, state_in, *args, self.batch_first)
            return res[0], tuple(res[1:])
        T = x.shape[1] if self.batch_first else x.shape[0]
        packed = pack_padded_sequence(x, lengths.cpu(), self.batch_first, enforce_sorted=False)
        sort, unsort = packed.sorted_indices, packed.unsorted_indices
        sorted_hx = tuple(s.index_select(1, sort) for s in hx)
        res = self.kernel(packed.data, packed.batch_sizes, sorted_hx if self.has_cell_state else sorted_hx[0], *args)
        out, _ = pad_packed_sequence(PackedSequence(res[0], packed.batch_sizes, sort, unsort),
                                     batch_first=self.batch_first, total_length=T)
        return out, tuple(s.index_select(1, unsort) for s in res[1:])


class _RecurrentWeightGrad(torch.autograd.Function):
    """Identity on the precomputed input gates G = W_ih x + b (T, B, G) whose backward also returns W_hh's gradient.

    For the RNN and the LSTM the pre-activation at step t is G_t + W_hh h_{t-1}, so its gradient is exactly dG_t
    and dW_hh = Σ_t dG_tᵀ h_{t-1}: one (G, T·B) @ (T·B, H) product here instead of T small ones accumulated
    step by step by autograd (cuDNN and oneDNN do the same). ``h_prev`` is filled by the time loop *after* this
    forward runs; by the time backward runs it holds every h_{t-1}. The GRU's W_hn sits inside r ⊙ (...), so
    it keeps autograd's per-step gradient.
    """

    @staticmethod
    def forward(ctx, gx: Tensor, w_hh: Tensor, h_prev: list[Tensor]) -> Tensor:
        ctx.h_prev = h_prev
        return gx.view_as(gx)

    @staticmethod
    def backward(ctx, d_gx: Tensor) -> tuple[Tensor, Tensor, None]:
        h = torch.stack(ctx.h_prev)  # T x (B, H) -> (T, B, H)
        d_w = d_gx.reshape(-1, d_gx.shape[-1]).t() @ h.reshape(-1, h.shape[-1])  # (G, T*B) @ (T*B, H) -> (G, H)
        return d_gx, d_w, None


class RNN(_RecurrentStack):
    """Elman RNN stack, drop-in for ``nn.RNN`` (same arguments and parameter names) plus ``lengths``."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 **kwargs: Any) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        self.kernel = torch._VF.rnn_tanh if nonlinearity == "tanh" else torch._VF.rnn_relu
        super().__init__(input_size, hidden_size, num_layers, **kwargs)

    def _step(self, gx: Tensor, state: State, w_hh: Tensor, b_hh: Tensor | None, w_hr: Tensor | None) -> State:
        return (rnn_step(gx, state[0], w_hh, b_hh, relu=self.nonlinearity == "relu"),)


class LSTM(_RecurrentStack):
    """LSTM stack, drop-in for ``nn.LSTM`` (same arguments, ``proj_size`` included) plus ``lengths``."""

    gates, has_cell_state = 4, True
    kernel = staticmethod(torch._VF.lstm)

    def _step(self, gx: Tensor, state: State, w_hh: Tensor, b_hh: Tensor | None, w_hr: Tensor | None) -> State:
        return lstm_step(gx, state[0], state[1], w_hh, b_hh, w_hr)


class GRU(_RecurrentStack):
    """GRU stack, drop-in for ``nn.GRU`` plus ``lengths`` and ``reset_after`` (see module docstring)."""

    gates, additive_hh = 3, False
    kernel = staticmethod(torch._VF.gru)

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, reset_after: bool = True,
                 **kwargs: Any) -> None:
        self.reset_after = reset_after
        super().__init__(input_size, hidden_size, num_layers, **kwargs)

    def _kernel_matches(self) -> bool:
        return self.reset_after  # the kernels implement PyTorch's GRU only

    def _step(self, gx: Tensor, state: State, w_hh: Tensor, b_hh: Tensor | None, w_hr: Tensor | None) -> State:
        return (gru_step(gx, state[0], w_hh, b_hh, self.reset_after),)

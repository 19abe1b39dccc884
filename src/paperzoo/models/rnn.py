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

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

__all__ = ["RNNCell", "LSTMCell", "GRUCell", "RNN", "LSTM", "GRU", "rnn_step", "lstm_step", "gru_step"]

GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


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


class _CellBase(nn.Module):
    def __init__(self, input_size: int, hidden_size: int, bias: bool, gates: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        self.weight_ih = nn.Parameter(torch.empty(gates * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(gates * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(gates * hidden_size)) if bias else None
        self.bias_hh = nn.Parameter(torch.empty(gates * hidden_size)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def _input_proj(self, x: Tensor) -> Tensor:
        if x.dim() not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(f"{type(self).__name__} expects input (B, {self.input_size}) or "
                             f"({self.input_size},), got {tuple(x.shape)}")
        return F.linear(x, self.weight_ih, self.bias_ih)

    def _zeros(self, x: Tensor) -> Tensor:
        return x.new_zeros(*x.shape[:-1], self.hidden_size)


class RNNCell(_CellBase):
    """One Elman RNN step; ``forward(x (B, In), h (B, H)) -> h'``."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh") -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias, 1)

    def forward(self, x: Tensor, hx: Tensor | None = None) -> Tensor:
        h = self._zeros(x) if hx is None else hx
        unbatched = x.dim() == 1
        gx = self._input_proj(x)
        if unbatched:
            gx, h = gx[None], h[None]
        out = rnn_step(gx, h, self.weight_hh, self.bias_hh, relu=self.nonlinearity == "relu")
        return out[0] if unbatched else out


class LSTMCell(_CellBase):
    """One LSTM step; ``forward(x (B, In), (h, c)) -> (h', c')``."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__(input_size, hidden_size, bias, 4)

    def forward(self, x: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        h, c = (self._zeros(x), self._zeros(x)) if hx is None else hx
        unbatched = x.dim() == 1
        gx = self._input_proj(x)
        if unbatched:
            gx, h, c = gx[None], h[None], c[None]
        h, c = lstm_step(gx, h, c, self.weight_hh, self.bias_hh)
        return (h[0], c[0]) if unbatched else (h, c)


class GRUCell(_CellBase):
    """One GRU step; ``forward(x (B, In), h (B, H)) -> h'``. See ``gru_step`` for ``reset_after``."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, reset_after: bool = True) -> None:
        self.reset_after = reset_after
        super().__init__(input_size, hidden_size, bias, 3)

    def forward(self, x: Tensor, hx: Tensor | None = None) -> Tensor:
        h = self._zeros(x) if hx is None else hx
        unbatched = x.dim() == 1
        gx = self._input_proj(x)
        if unbatched:
            gx, h = gx[None], h[None]
        out = gru_step(gx, h, self.weight_hh, self.bias_hh, self.reset_after)
        return out[0] if unbatched else out


# --- multi-layer, bidirectional stacks: parameters named like nn.RNN / nn.LSTM / nn.GRU ---------------------


class _RecurrentStack(nn.Module):
    """Shared machinery of :class:`RNN`, :class:`LSTM` and :class:`GRU` (see the module docstring).

    ``forward(input, hx=None, lengths=None)`` with input (T, B, In), or (B, T, In) if ``batch_first``, or
    unbatched (T, In), or a ``PackedSequence``. Returns ``(output, h_n)`` (LSTM: ``(output, (h_n, c_n))``),
    output (T, B, D*H_out), h_n (num_layers*D, B, H_out), D = 2 if bidirectional; layer-major, direction-minor
    as in PyTorch.
    """

    mode = "RNN_TANH"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, fused: bool | None = None, reset_after: bool = True) -> None:
        super().__init__()
        if num_layers < 1 or hidden_size < 1:
            raise ValueError(f"num_layers and hidden_size must be >= 1, got {num_layers}, {hidden_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if proj_size and (self.mode != "LSTM" or not 0 < proj_size < hidden_size):
            raise ValueError("proj_size is only for LSTM and must satisfy 0 < proj_size < hidden_size")
        if fused and not reset_after:
            raise ValueError("fused kernels implement only reset_after=True (PyTorch's GRU)")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size = bidirectional, proj_size
        self.fused = reset_after if fused is None else fused  # auto: fused whenever the kernel matches
        self.reset_after = reset_after
        self.num_directions = 2 if bidirectional else 1
        self.output_size = proj_size or hidden_size  # size of h_t
        G = GATES[self.mode] * hidden_size
        self._flat_names: list[str] = []  # in the order torch's kernels expect
        for layer in range(num_layers):
            in_size = input_size if layer == 0 else self.output_size * self.num_directions
            for suffix in ("", "_reverse")[: self.num_directions]:
                shapes = {"weight_ih": (G, in_size), "weight_hh": (G, self.output_size)}
                if bias:
                    shapes.update(bias_ih=(G,), bias_hh=(G,))
                if proj_size:
                    shapes["weight_hr"] = (proj_size, hidden_size)
                for kind, shape in shapes.items():
                    name = f"{kind}_l{layer}{suffix}"
                    self.register_parameter(name, nn.Parameter(torch.empty(shape)))
                    self._flat_names.append(name)
        self.reset_parameters()

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

    def _check(self, x: Tensor, hx, lengths) -> tuple[Tensor, Tensor | None]:
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"{type(self).__name__} expects input ({'B, T' if self.batch_first else 'T, B'}, "
                             f"{self.input_size}) or unbatched (T, {self.input_size}), got {tuple(x.shape)}")
        T, B = (x.shape[1], x.shape[0]) if self.batch_first else x.shape[:2]
        states = hx if isinstance(hx, tuple) else (hx,)
        want = [(self.num_layers * self.num_directions, B, self.output_size)]
        if self.mode == "LSTM":
            want.append((self.num_layers * self.num_directions, B, self.hidden_size))
        if hx is not None and (len(states) != len(want) or any(tuple(s.shape) != w for s, w in zip(states, want))):
            raise ValueError(f"initial state has shape(s) {[tuple(s.shape) for s in states]}; expected {want}")
        if lengths is None:
            return x, None
        lengths = torch.as_tensor(lengths, device=x.device).long()
        if lengths.shape != (B,) or lengths.min() < 1 or lengths.max() > T:
            raise ValueError(f"lengths must be a (B,) = ({B},) tensor with values in [1, T={T}], "
                             f"got shape {tuple(lengths.shape)} and values {lengths.tolist()}")
        return x, lengths

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
        unbatched = input.dim() == 2
        if unbatched:  # (T, In) -> (T, 1, In) or (1, T, In); states (L*D, H) -> (L*D, 1, H)
            input = input.unsqueeze(0 if self.batch_first else 1)
            if hx is not None:
                hx = tuple(s.unsqueeze(1) for s in hx) if isinstance(hx, tuple) else hx.unsqueeze(1)
        x, lengths = self._check(input, hx, lengths)
        if hx is None:
            B = x.shape[0] if self.batch_first else x.shape[1]
            zeros = x.new_zeros(self.num_layers * self.num_directions, B, self.output_size)
            hx = (zeros, x.new_zeros(zeros.shape[:2] + (self.hidden_size,))) if self.mode == "LSTM" else zeros
        run = self._forward_fused if self.fused else self._forward_loop
        out, state = run(x, hx, lengths)
        if unbatched:
            out = out.squeeze(0 if self.batch_first else 1)
            state = tuple(s.squeeze(1) for s in state) if isinstance(state, tuple) else state.squeeze(1)
        return out, state

    def _forward_loop(self, x: Tensor, hx, lengths: Tensor | None):
        """The equations, one layer and direction at a time."""
        if self.batch_first:
            x = x.transpose(0, 1)  # (B, T, In) -> (T, B, In)
        T, B = x.shape[:2]
        mask = None
        if lengths is not None:  # (T, B, 1): True while t < length of sequence b
            mask = (torch.arange(T, device=x.device)[:, None] < lengths[None, :])[..., None]
        h0 = hx[0] if self.mode == "LSTM" else hx
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outs = []
            for d, suffix in enumerate(("", "_reverse")[: self.num_directions]):
                k = layer * self.num_directions + d
                init = (h0[k], hx[1][k]) if self.mode == "LSTM" else (h0[k],)
                out, last = self._run_direction(x, init, f"l{layer}{suffix}", reverse=d == 1, mask=mask)
                outs.append(out)
                h_n.append(last[0])
                if self.mode == "LSTM":
                    c_n.append(last[1])
            x = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)  # (T, B, D*H)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)  # between layers, not after the last
        if self.batch_first:
            x = x.transpose(0, 1)  # (T, B, D*H) -> (B, T, D*H)
        h_n = torch.stack(h_n)  # (L*D, B, H)
        return x, ((h_n, torch.stack(c_n)) if self.mode == "LSTM" else h_n)

    def _run_direction(self, x: Tensor, state: tuple[Tensor, ...], key: str, reverse: bool,
                       mask: Tensor | None) -> tuple[Tensor, tuple[Tensor, ...]]:
        """One layer, one direction over x (T, B, In) -> outputs (T, B, H), final state."""
        w_ih, w_hh = getattr(self, f"weight_ih_{key}"), getattr(self, f"weight_hh_{key}")
        b_ih, b_hh = getattr(self, f"bias_ih_{key}", None), getattr(self, f"bias_hh_{key}", None)
        if b_hh is not None and self.mode != "GRU":  # b_hh sits outside any gate product: fold it in once
            b_ih, b_hh = b_ih + b_hh, None
        T, B = x.shape[:2]
        # Input projection for every time step at once: (T*B, In) @ (In, G) -> (T, B, G)
        gx = F.linear(x.reshape(T * B, -1), w_ih, b_ih).view(T, B, -1)
        w_hr = getattr(self, f"weight_hr_{key}", None)
        h_prev: list[Tensor] | None = None
        if self.mode != "GRU" and w_hh.requires_grad and torch.is_grad_enabled():
            # W_hh's gradient for all steps in one GEMM (see _RecurrentWeightGrad); the loop uses a detached W_hh
            h_prev = [x] * T
            gx, w_hh = _RecurrentWeightGrad.apply(gx, w_hh, h_prev), w_hh.detach()
        outs: list[Tensor] = [x] * T  # placeholders, every slot is overwritten
        gxs = gx.unbind(0)
        for t in range(T - 1, -1, -1) if reverse else range(T):
            g = gxs[t]
            if h_prev is not None:
                h_prev[t] = state[0].detach()  # h_{t-1}, read by _RecurrentWeightGrad.backward
            if self.mode == "LSTM":
                new = lstm_step(g, state[0], state[1], w_hh, b_hh, w_hr)
            elif self.mode == "GRU":
                new = (gru_step(g, state[0], w_hh, b_hh, self.reset_after),)
            else:
                new = (rnn_step(g, state[0], w_hh, b_hh, relu=self.mode == "RNN_RELU"),)
            if mask is not None:  # finished sequences keep their state (and a reverse pass waits for its start)
                m = mask[t]
                new = tuple(torch.where(m, n, s) for n, s in zip(new, state))
                outs[t] = new[0] * m  # zero past the length
            else:
                outs[t] = new[0]
            state = new
        return torch.stack(outs), state

    def _forward_fused(self, x: Tensor, hx, lengths: Tensor | None):
        """The same parameters through PyTorch's fused kernels (what nn.RNN/LSTM/GRU run)."""
        fn = {"LSTM": torch._VF.lstm, "GRU": torch._VF.gru, "RNN_TANH": torch._VF.rnn_tanh,
              "RNN_RELU": torch._VF.rnn_relu}[self.mode]
        weights = [getattr(self, n) for n in self._flat_names]
        args = (weights, self.bias, self.num_layers, self.dropout, self.training, self.bidirectional)
        if lengths is None:
            res = fn(x, hx, *args, self.batch_first)
            return res[0], (tuple(res[1:]) if self.mode == "LSTM" else res[1])
        T = x.shape[1] if self.batch_first else x.shape[0]
        packed = pack_padded_sequence(x, lengths.cpu(), self.batch_first, enforce_sorted=False)
        sort, unsort = packed.sorted_indices, packed.unsorted_indices
        hx = tuple(s.index_select(1, sort) for s in hx) if self.mode == "LSTM" else hx.index_select(1, sort)
        res = fn(packed.data, packed.batch_sizes, hx, *args)
        out, _ = pad_packed_sequence(PackedSequence(res[0], packed.batch_sizes, sort, unsort),
                                     batch_first=self.batch_first, total_length=T)
        if self.mode == "LSTM":
            return out, (res[1].index_select(1, unsort), res[2].index_select(1, unsort))
        return out, res[1].index_select(1, unsort)


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
                 **kwargs) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, num_layers, **kwargs)


class LSTM(_RecurrentStack):
    """LSTM stack, drop-in for ``nn.LSTM`` (same arguments, ``proj_size`` included) plus ``lengths``."""

    mode = "LSTM"


class GRU(_RecurrentStack):
    """GRU stack, drop-in for ``nn.GRU`` plus ``lengths`` and ``reset_after`` (see module docstring)."""

    mode = "GRU"

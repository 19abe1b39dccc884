"""Our RNN / LSTM / GRU (written from their equations) against nn.RNN / nn.LSTM / nn.GRU with the same weights:
outputs, final states and gradients over layers x directions x batch_first x lengths x fused."""

import itertools

import pytest
import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from paperzoo.models import rnn

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only cost (conftest)


MODES = {  # name -> (ours, theirs, kwargs)
    "rnn_tanh": (rnn.RNN, nn.RNN, {}),
    "rnn_relu": (rnn.RNN, nn.RNN, {"nonlinearity": "relu"}),
    "lstm": (rnn.LSTM, nn.LSTM, {}),
    "gru": (rnn.GRU, nn.GRU, {}),
}
T, B, IN, H = 5, 3, 4, 6
LENGTHS = [5, 2, 4]  # unsorted on purpose (enforce_sorted=False semantics)


def _pair(mode, fused=False, **kw):
    ours_cls, ref_cls, extra = MODES[mode]
    ref = ref_cls(IN, H, **extra, **kw)
    ours = ours_cls(IN, H, **extra, fused=fused, **kw)
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=True)
    assert not missing and not unexpected
    return ours, ref


def _ref_forward(ref, x, hx, lengths, batch_first):
    if lengths is None:
        return ref(x, hx)
    packed = pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False)
    out, state = ref(packed, hx)
    out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
    return out, state


def _states(state):
    return state if isinstance(state, tuple) else (state,)


def _init_state(mode, num_layers, bidir):
    n = num_layers * (2 if bidir else 1)
    h = torch.randn(n, B, H)
    return (h, torch.randn(n, B, H)) if mode == "lstm" else h


GRID = list(itertools.product(MODES, [1, 2], [False, True], [False, True], [None, LENGTHS], [False, True]))


@pytest.mark.parametrize("mode,num_layers,bidir,batch_first,lengths,fused", GRID)
def test_equals_torch(mode, num_layers, bidir, batch_first, lengths, fused):
    ours, ref = _pair(mode, fused, num_layers=num_layers, bidirectional=bidir, batch_first=batch_first)
    x = torch.randn((B, T, IN) if batch_first else (T, B, IN))
    hx = _init_state(mode, num_layers, bidir) if num_layers == 2 else None  # zeros and given states both covered
    with torch.no_grad():
        out, state = ours(x, hx, lengths=lengths)
        ref_out, ref_state = _ref_forward(ref, x, hx, lengths, batch_first)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    for s, r in zip(_states(state), _states(ref_state), strict=True):
        torch.testing.assert_close(s, r, rtol=1e-5, atol=1e-6)
    if lengths is not None:  # outputs past each length are exactly zero
        lens = torch.tensor(lengths)
        pad = torch.arange(T)[None, :] >= lens[:, None]  # (B, T)
        o = out if batch_first else out.transpose(0, 1)
        assert (o[pad] == 0).all()


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("fused", [False, True])
def test_gradients_equal_torch(mode, fused):
    ours, ref = _pair(mode, fused, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(B, T, IN)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    hx = _init_state(mode, 2, True)
    ha = tuple(s.clone().requires_grad_() for s in _states(hx))
    hb = tuple(s.clone().requires_grad_() for s in _states(hx))
    out, state = ours(xa, ha if mode == "lstm" else ha[0], lengths=LENGTHS)
    ref_out, ref_state = _ref_forward(ref, xb, hb if mode == "lstm" else hb[0], LENGTHS, True)
    w = torch.randn_like(out)
    (out * w).sum().add(sum(s.sum() for s in _states(state))).backward()
    (ref_out * w).sum().add(sum(s.sum() for s in _states(ref_state))).backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-6)
    for a, b in zip(ha, hb):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("fused", [False, True])
def test_lstm_proj_size_equals_torch(fused):
    ref = nn.LSTM(IN, H, num_layers=2, bidirectional=True, proj_size=3)
    ours = rnn.LSTM(IN, H, num_layers=2, bidirectional=True, proj_size=3, fused=fused)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, IN)
    out, (h, c) = ours(x, lengths=LENGTHS)
    ref_out, (rh, rc) = _ref_forward(ref, x, None, LENGTHS, False)
    assert out.shape == (T, B, 6) and h.shape == (4, B, 3) and c.shape == (4, B, H)
    for a, b in [(out, ref_out), (h, rh), (c, rc)]:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", list(MODES))
def test_lengths_equal_running_each_sequence_alone(mode):
    """The definition of variable-length semantics, independent of PyTorch's packing."""
    ours, _ = _pair(mode, num_layers=2, bidirectional=True)
    x = torch.randn(T, B, IN)
    out, state = ours(x, lengths=LENGTHS)
    for b, n in enumerate(LENGTHS):
        alone, alone_state = ours(x[:n, b : b + 1])
        torch.testing.assert_close(out[:n, b : b + 1], alone)
        for s, a in zip(_states(state), _states(alone_state)):
            torch.testing.assert_close(s[:, b : b + 1], a)


def test_packed_sequence_in_and_out():
    ours, ref = _pair("lstm", bidirectional=True)
    x = torch.randn(T, B, IN)
    packed = pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False)
    out, (h, c) = ours(packed)
    ref_out, (rh, rc) = ref(packed)
    torch.testing.assert_close(out.data, ref_out.data)
    torch.testing.assert_close(h, rh)
    with pytest.raises(ValueError, match="either"):
        ours(packed, lengths=LENGTHS)


@pytest.mark.parametrize("mode", list(MODES))
def test_unbatched_input(mode):
    ours, ref = _pair(mode, num_layers=2)
    x = torch.randn(T, IN)
    out, state = ours(x)
    ref_out, ref_state = ref(x)
    torch.testing.assert_close(out, ref_out)
    for s, r in zip(_states(state), _states(ref_state)):
        torch.testing.assert_close(s, r)


@pytest.mark.parametrize(
    "ours_cls,ref_cls,kw",
    [(rnn.RNNCell, nn.RNNCell, {"nonlinearity": "relu"}), (rnn.LSTMCell, nn.LSTMCell, {}),
     (rnn.GRUCell, nn.GRUCell, {}), (rnn.RNNCell, nn.RNNCell, {"bias": False})],
)
def test_cells_equal_torch(ours_cls, ref_cls, kw):
    ref, ours = ref_cls(IN, H, **kw), ours_cls(IN, H, **kw)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(B, IN)
    hx = (torch.randn(B, H), torch.randn(B, H)) if ours_cls is rnn.LSTMCell else torch.randn(B, H)
    for a, b in zip(_states(ours(x, hx)), _states(ref(x, hx))):
        torch.testing.assert_close(a, b)
    for a, b in zip(_states(ours(x[0])), _states(ref(x[0]))):  # unbatched, zero state
        torch.testing.assert_close(a, b)


def test_gru_reset_before_is_cho_eq8():
    """reset_after=False: h~ = tanh(W x + U (r ⊙ h)) as in Cho et al. 2014, Eq. 8, written out by hand."""
    cell = rnn.GRUCell(IN, H, reset_after=False)
    x, h = torch.randn(B, IN), torch.randn(B, H)
    Wr, Wz, Wn = cell.weight_ih.chunk(3)
    Ur, Uz, Un = cell.weight_hh.chunk(3)
    bir, biz, bin_ = cell.bias_ih.chunk(3)
    bhr, bhz, bhn = cell.bias_hh.chunk(3)
    r = torch.sigmoid(x @ Wr.T + bir + h @ Ur.T + bhr)
    z = torch.sigmoid(x @ Wz.T + biz + h @ Uz.T + bhz)
    n = torch.tanh(x @ Wn.T + bin_ + (r * h) @ Un.T + bhn)
    torch.testing.assert_close(cell(x, h), (1 - z) * n + z * h)
    stack = rnn.GRU(IN, H, reset_after=False)
    stack.load_state_dict({k + "_l0": v for k, v in cell.state_dict().items()})
    out, h_n = stack(x[None], h[None])
    torch.testing.assert_close(h_n[0], (1 - z) * n + z * h)
    assert not torch.allclose(rnn.GRUCell(IN, H)(x, h), cell(x, h))  # the two variants really differ


def test_dropout_between_layers_only():
    m = rnn.LSTM(IN, H, num_layers=2, dropout=0.5).train()
    x = torch.randn(T, B, IN)
    a, _ = m(x)
    b, _ = m(x)
    assert not torch.allclose(a, b), "training mode must drop between layers"
    m.eval()
    torch.testing.assert_close(m(x)[0], m(x)[0])
    one = rnn.LSTM(IN, H, num_layers=1, dropout=0.5).train()  # nothing after the last layer
    torch.testing.assert_close(one(x)[0], one(x)[0])


def test_fused_default_and_teaching_switch():
    assert rnn.LSTM(IN, H).fused and rnn.GRU(IN, H).fused and rnn.RNN(IN, H).fused
    assert not rnn.LSTM(IN, H, fused=False).fused
    assert not rnn.GRU(IN, H, reset_after=False).fused  # only the equations path computes Cho's variant
    assert "fused=False" in repr(rnn.LSTM(IN, H, fused=False))


def test_state_dict_names_and_shapes_match_torch():
    for mode in MODES:
        ours, ref = _pair(mode, num_layers=3, bidirectional=True)
        assert {k: v.shape for k, v in ours.state_dict().items()} == {
            k: v.shape for k, v in ref.state_dict().items()}


def test_clear_errors():
    m = rnn.LSTM(IN, H, num_layers=2)
    with pytest.raises(ValueError, match="expects input"):
        m(torch.randn(T, B, IN + 1))
    with pytest.raises(ValueError, match="lengths"):
        m(torch.randn(T, B, IN), lengths=[T + 1, 1, 1])
    with pytest.raises(ValueError, match="lengths"):
        m(torch.randn(T, B, IN), lengths=[0, 1, 1])
    with pytest.raises(ValueError, match="initial state"):
        m(torch.randn(T, B, IN), (torch.zeros(1, B, H), torch.zeros(1, B, H)))
    with pytest.raises(ValueError, match="proj_size"):
        rnn.GRU(IN, H, proj_size=2)
    with pytest.raises(ValueError, match="reset_after"):
        rnn.GRU(IN, H, fused=True, reset_after=False)

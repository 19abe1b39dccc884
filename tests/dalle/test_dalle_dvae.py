"""The DALL-E dVAE (paperzoo.dalle.dvae): released layout and parameter counts, loading the released state dict
layout with equal outputs, and each training formula on hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from paperzoo import load_weights
from paperzoo.dalle.dvae import (
    DiscreteVAE,
    DVAEConfig,
    UnknownDVAEError,
    create_dvae,
    dvae_names,
    gumbel_softmax_relaxation,
    kl_to_uniform,
    kl_weight_at,
    logit_laplace_nll,
    map_pixels,
    temperature_at,
    unmap_pixels,
)
from paperzoo.weights import WeightLoadError


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------------ architecture
def test_released_config_has_the_released_parameter_counts():
    with torch.device("meta"):  # 98M parameters: no memory, no init time
        model = create_dvae("dvae_openai")
    assert _count(model.encoder) == 53_786_240
    assert _count(model.decoder) == 43_829_766
    assert model.grid == (32, 32) and model.vocab_size == 8192


def test_registry_lists_builders_and_refuses_unknown_names_with_a_hint():
    assert {"dvae_openai", "dvae_fmnist"} <= set(dvae_names())
    with pytest.raises(UnknownDVAEError, match="did you mean dvae_fmnist"):
        create_dvae("dvae_fmnst")


def test_small_config_maps_28x28_to_a_7x7_grid_and_back():
    model = create_dvae("dvae_fmnist").eval()
    x = torch.rand(3, 1, 28, 28)
    assert model.grid == (7, 7)
    assert model.encode_logits(x).shape == (3, 512, 7, 7)
    tokens = model.tokens(x)
    assert tokens.shape == (3, 7, 7) and tokens.dtype == torch.int64
    y = model.decode(tokens)
    assert y.shape == (3, 1, 28, 28) and 0 <= float(y.min()) and float(y.max()) <= 1


def test_bad_shapes_and_tokens_raise_value_errors():
    model = create_dvae("dvae_fmnist", n_hid=16, vocab_size=8, n_init=8)
    with pytest.raises(ValueError, match="expected images"):
        model.encode_logits(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"tokens must be in \[0, 8\)"):
        model.decode(torch.full((1, 7, 7), 8))
    with pytest.raises(ValueError, match="image_size 30 is not divisible"):
        DVAEConfig(image_size=30, group_count=3)


# ------------------------------------------------------------------------------------------------ released weights
# The released layout written out from dall_e/encoder.py and decoder.py (not from our modules), and the released
# forward as a function of the state dict alone.
def _released_keys(kind: str, c: int, n_hid: int, n_blk: int, vocab: int, n_init: int) -> dict[str, tuple]:
    keys: dict[str, tuple] = {}

    def conv(name: str, n_in: int, n_out: int, kw: int) -> None:
        keys[f"{name}.w"], keys[f"{name}.b"] = (n_out, n_in, kw, kw), (n_out,)

    enc = kind == "encoder"
    widths = [1, 2, 4, 8] if enc else [8, 4, 2, 1]
    conv("blocks.input", c if enc else vocab, n_hid if enc else n_init, 7 if enc else 1)
    prev = n_hid if enc else n_init
    kernels = (3, 3, 3, 1) if enc else (1, 3, 3, 3)
    for g, m in enumerate(widths, start=1):
        for i in range(1, n_blk + 1):
            n_in, n_out = (prev if i == 1 else m * n_hid), m * n_hid
            p = f"blocks.group_{g}.block_{i}"
            if n_in != n_out:
                conv(f"{p}.id_path", n_in, n_out, 1)
            dims = [(n_in, n_out // 4), (n_out // 4, n_out // 4), (n_out // 4, n_out // 4), (n_out // 4, n_out)]
            for j, ((a, b), k) in enumerate(zip(dims, kernels), start=1):
                conv(f"{p}.res_path.conv_{j}", a, b, k)
        prev = m * n_hid
    conv("blocks.output.conv", prev, vocab if enc else 2 * c, 1)
    return keys


def _released_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, enc: bool, n_blk: int) -> torch.Tensor:
    def conv(name: str, h: torch.Tensor) -> torch.Tensor:
        w = sd[f"{name}.w"]
        return F.conv2d(h, w, sd[f"{name}.b"], padding=(w.shape[-1] - 1) // 2)

    post_gain = 1 / (4 * n_blk) ** 2
    h = conv("blocks.input", x)
    for g in range(1, 5):
        for i in range(1, n_blk + 1):
            p = f"blocks.group_{g}.block_{i}"
            r = h
            for j in range(1, 5):
                r = conv(f"{p}.res_path.conv_{j}", F.relu(r))
            h = (conv(f"{p}.id_path", h) if f"{p}.id_path.w" in sd else h) + post_gain * r
        if g < 4:
            h = F.max_pool2d(h, 2) if enc else F.interpolate(h, scale_factor=2, mode="nearest")
    return conv("blocks.output.conv", F.relu(h))


@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_openai_state_dict_loads_and_gives_the_released_forward(tmp_path, kind):
    dims = dict(c=3, n_hid=16, n_blk=2, vocab=32, n_init=8)
    g = torch.Generator().manual_seed(0)
    sd = {k: 0.2 * torch.randn(shape, generator=g) for k, shape in _released_keys(kind, **dims).items()}
    torch.save(sd, tmp_path / f"{kind}.pt")
    model = DiscreteVAE(DVAEConfig(in_channels=3, n_hid=16, group_count=4, n_blk_per_group=2, vocab_size=32,
                                   n_init=8, image_size=32))
    load_weights(getattr(model, kind), tmp_path / f"{kind}.pt", source="openai")
    if kind == "encoder":
        x = torch.rand(2, 3, 32, 32, generator=g)
        ours, ref = model.encode_logits(x), _released_forward(sd, map_pixels(x), True, 2)
    else:
        tokens = torch.randint(0, 32, (2, 4, 4), generator=g)
        ours = model.decode(tokens)  # the release's notebook: unmap_pixels(sigmoid(x_stats[:, :3]))
        stats = _released_forward(sd, F.one_hot(tokens, 32).permute(0, 3, 1, 2).float(), False, 2)
        ref = unmap_pixels(torch.sigmoid(stats[:, :3]))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_openai_halves_into_the_whole_model_are_refused(tmp_path):
    sd = {k: torch.zeros(s) for k, s in _released_keys("encoder", 1, 16, 1, 16, 8).items()}
    torch.save(sd, tmp_path / "encoder.pt")
    model = create_dvae("dvae_fmnist", n_hid=16, vocab_size=16, n_init=8)
    with pytest.raises(WeightLoadError, match="model.encoder and model.decoder"):
        load_weights(model, tmp_path / "encoder.pt", source="openai")


# ------------------------------------------------------------------------------------------------ the formulas
def test_map_pixels_and_its_inverse_on_hand_values():
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3)
    torch.testing.assert_close(map_pixels(x).flatten(), torch.tensor([0.1, 0.5, 0.9]))  # 0.8 x + 0.1
    torch.testing.assert_close(unmap_pixels(torch.tensor([0.0, 0.1, 0.3, 0.9, 1.0])),
                               torch.tensor([0.0, 0.0, 0.25, 1.0, 1.0]))  # (x - 0.1) / 0.8, clamped


def test_logit_laplace_nll_on_hand_values():
    # x = 0.5, mu = 0, b = 1: ln 2 + 0 + ln 0.25 + |0 - 0| = ln 2 - ln 4 = -ln 2
    # x = 0.9, mu = 1, b = 2: ln 2 + ln 2 + ln 0.09 + |ln 9 - 1| / 2 = 1.386294 - 2.407946 + 0.598612 = -0.423039
    x, mu, log_b = torch.tensor([0.5, 0.9]), torch.tensor([0.0, 1.0]), torch.tensor([0.0, math.log(2.0)])
    torch.testing.assert_close(logit_laplace_nll(x, mu, log_b), torch.tensor([-math.log(2.0), -0.423039]))


def test_logit_laplace_density_integrates_to_one():
    x = torch.linspace(1e-6, 1 - 1e-6, 400_001, dtype=torch.float64)
    density = torch.exp(-logit_laplace_nll(x, torch.tensor(0.7, dtype=torch.float64),
                                           torch.tensor(math.log(0.3), dtype=torch.float64)))
    assert abs(float(torch.trapezoid(density, x)) - 1.0) < 1e-3


def test_kl_to_uniform_on_hand_values():
    # q = (0.75, 0.25), K = 2: 0.75 ln 0.75 + 0.25 ln 0.25 + ln 2 = -0.215762 - 0.346574 + 0.693147 = 0.130812
    logits = torch.tensor([[math.log(3.0), 0.0], [5.0, 5.0]]).view(2, 2, 1, 1)
    torch.testing.assert_close(kl_to_uniform(logits).flatten(), torch.tensor([0.130812, 0.0]), atol=1e-6, rtol=0)


def test_gumbel_softmax_is_seeded_sums_to_one_and_samples_the_softmax():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2])).view(1, 3, 1, 1).expand(20_000, 3, 1, 1)
    a = gumbel_softmax_relaxation(logits, 1.0, generator=torch.Generator().manual_seed(3))
    b = gumbel_softmax_relaxation(logits, 1.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a.sum(1), torch.ones(20_000, 1, 1))
    # at a low temperature the sample is one-hot at argmax(logits + g), whose law is softmax(logits) (Gumbel-max)
    hard = gumbel_softmax_relaxation(logits, 1e-3, generator=torch.Generator().manual_seed(4))
    assert float((hard.max(1).values > 0.99).float().mean()) > 0.99  # all but near-ties of logits + g
    freq = hard.argmax(1).flatten().bincount(minlength=3) / 20_000
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.2]), atol=0.015, rtol=0)


def test_temperature_and_kl_weight_follow_cosine_schedules():
    # tau: 1 at 0, (1 + 1/16) / 2 = 0.53125 half way, 1/16 at the end and after
    assert [temperature_at(s, 100) for s in (0, 50, 100, 500)] == pytest.approx([1.0, 0.53125, 0.0625, 0.0625])
    # 25 % of the way: 1 - (1 - 1/16) (1 - cos(pi / 4)) / 2 = 1 - 0.9375 * 0.1464466 = 0.862706
    assert temperature_at(25, 100) == pytest.approx(0.862706, abs=1e-6)
    # beta: 0 at 0, 6.6 / 2 half way, 6.6 from the end of the warm-up on
    assert [kl_weight_at(s, 10) for s in (0, 5, 10, 11)] == pytest.approx([0.0, 3.3, 6.6, 6.6])


def test_forward_loss_is_the_beta_weighted_elbo_and_eval_scores_the_argmax_tokens():
    torch.manual_seed(0)
    model = create_dvae("dvae_fmnist", n_hid=16, vocab_size=32, n_init=16)
    x = torch.rand(4, 1, 28, 28)
    out = model(x, temperature=0.5, kl_weight=2.0, generator=torch.Generator().manual_seed(0))
    # 49 grid cells for 784 pixel values: the KL counts 49 / 784 per value in the ELBO's sum
    torch.testing.assert_close(out["loss"], out["recon_nll"] + 2.0 * 49 / 784 * out["kl"])
    torch.testing.assert_close(out["kl"], kl_to_uniform(model.encode_logits(x)).mean())
    model.eval()
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out["mse"], F.mse_loss(model.decode(model.tokens(x)), x))

"""DALL-E's Transformer: embeddings, the 1/8-7/8 loss, masks as dependence, cached == uncached decoding."""

import pytest
import torch
import torch.nn.functional as F

from paperzoo.dalle.masks import make_mask
from paperzoo.dalle.transformer import DALLE, DALLEConfig


def tiny(**kw) -> DALLE:
    torch.manual_seed(0)
    cfg = {"text_len": 5, "text_vocab": 30, "image_vocab": 17, "grid": (3, 4), "n_layer": 2, "n_head": 2,
           "n_embd": 16, **kw}
    return DALLE(DALLEConfig(**cfg)).eval()


def batch(model: DALLE, b: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    text = torch.randint(1, cfg.text_vocab, (b, cfg.text_len), generator=g)
    text[0, 3:] = cfg.text_pad_id  # a short caption: two pads
    return text, torch.randint(0, cfg.image_vocab, (b, *cfg.grid), generator=g)


def test_pads_get_their_positions_own_token_and_images_row_and_column_embeddings():
    m = tiny()
    text = torch.tensor([[7, 0, 0, 9, 0]])
    e = m.embed_text(text)
    torch.testing.assert_close(e[0, 1], m.pad_emb[1] + m.text_pos[1])
    torch.testing.assert_close(e[0, 2], m.pad_emb[2] + m.text_pos[2])  # a different pad vector per position
    torch.testing.assert_close(e[0, 3], m.text_emb.weight[9] + m.text_pos[3])
    codes = torch.tensor([[5, 6]])
    e = m.embed_image(codes, start=6)  # raster positions 6 = (1, 2) and 7 = (1, 3) of a 3 x 4 grid
    torch.testing.assert_close(e[0, 0], m.image_emb.weight[5] + m.row_emb[1] + m.col_emb[2])
    torch.testing.assert_close(e[0, 1], m.image_emb.weight[6] + m.row_emb[1] + m.col_emb[3])


@pytest.mark.parametrize("order", ["text", "image"])
def test_loss_is_one_eighth_text_seven_eighths_image_of_per_kind_means(order):
    m = tiny()
    text, image = batch(m)
    out = m(text, image, order)
    ce_t = F.cross_entropy(out["text_logits"].flatten(0, 1), text.flatten())
    ce_i = F.cross_entropy(out["image_logits"].flatten(0, 1), image.flatten())
    torch.testing.assert_close(out["loss_text"], ce_t)
    torch.testing.assert_close(out["loss_image"], ce_i)
    w_t, w_i = (1 / 8, 7 / 8) if order == "text" else (7 / 8, 1 / 8)  # image first: the weights swap
    torch.testing.assert_close(out["loss"], w_t * ce_t + w_i * ce_i)


def test_a_mixed_batch_equals_each_item_in_its_own_order():
    m = tiny(mask_pattern="sparse", n_layer=3)
    text, image = batch(m)
    mixed = m(text, image, torch.tensor([False, True, False]))
    one = m(text[1:2], image[1:2], "image")
    torch.testing.assert_close(mixed["text_logits"][1], one["text_logits"][0])
    torch.testing.assert_close(mixed["image_logits"][1], one["image_logits"][0])
    two = m(text[2:], image[2:], "text")
    torch.testing.assert_close(mixed["image_logits"][2], two["image_logits"][0])


def reach(masks: list[torch.Tensor]) -> torch.Tensor:
    """Which inputs each output position can depend on after the layers: the boolean product of the masks
    (each mask holds its diagonal, so the residual path is included)."""
    r = torch.eye(masks[0].shape[0], dtype=torch.bool)
    for m in masks:
        r = (m.float() @ r.float()) > 0
    return r


@pytest.mark.parametrize("image_first", [False, True])
@pytest.mark.parametrize("pattern,n_layer", [("causal", 2), ("sparse", 1), ("sparse", 3)])
def test_output_depends_exactly_on_what_the_layer_masks_allow(pattern, n_layer, image_first):
    """Brute force through autograd: output position p depends on input position q iff q is reachable from p
    through the layers' masks."""
    m = tiny(mask_pattern=pattern, n_layer=n_layer).double()
    cfg = m.cfg
    t = cfg.seq_len
    first = torch.tensor([image_first])
    x = torch.randn(1, t, cfg.n_embd, dtype=torch.double, requires_grad=True)
    h = m.hidden(x, first)
    dep = torch.zeros(t, t, dtype=torch.bool)
    r = torch.randn(cfg.n_embd, dtype=torch.double)  # not .sum(): a LayerNorm output sums to a constant
    for p in range(t):
        (g,) = torch.autograd.grad((h[0, p] * r).sum(), x, retain_graph=True)
        dep[p] = g[0].abs().sum(-1) > 0
    masks = [make_mask(k, cfg.text_len, cfg.grid, kernel=cfg.conv_kernel, image_first=image_first, lead=1)
             for k in m.kinds]
    assert torch.equal(dep, reach(masks))


@pytest.mark.parametrize("pattern", ["causal", "sparse"])
def test_cached_sampling_equals_uncached_under_the_same_seed(pattern):
    m = tiny(mask_pattern=pattern, n_layer=3)
    text, _ = batch(m)
    kw = {"temperature": 1.0, "top_k": 10}
    cached = m.generate_images(text, generator=torch.Generator().manual_seed(5), **kw)
    uncached = m.generate_images(text, generator=torch.Generator().manual_seed(5), use_cache=False, **kw)
    assert cached.shape == (3, 3, 4)
    assert torch.equal(cached, uncached)
    other = m.generate_images(text, generator=torch.Generator().manual_seed(6), **kw)
    assert not torch.equal(cached, other)  # the seed matters: the test above can fail


@pytest.mark.parametrize("pattern", ["causal", "sparse"])
def test_greedy_generation_and_captioning_agree_with_the_teacher_forced_forward(pattern):
    """Fed back through forward, greedy output is the argmax at every position: decoding and training see the
    same model."""
    m = tiny(mask_pattern=pattern, n_layer=3)
    text, image = batch(m)
    codes = m.generate_images(text, temperature=0.0)
    assert torch.equal(m(text, codes, "text")["image_logits"].argmax(-1), codes.flatten(1))
    caption = m.caption(image)
    assert torch.equal(caption, m.caption(image, use_cache=False))
    pred = m(caption, image, "image")["text_logits"].argmax(-1)
    pad = m.cfg.text_pad_id
    ended = (caption == pad).cumsum(1) > 0
    before_end = ~ended | ((caption == pad) & (ended.cumsum(1) == 1))  # up to and including the first pad
    assert torch.equal(pred[before_end], caption[before_end])
    assert torch.equal(caption[ended], torch.full_like(caption[ended], pad))  # after it, pads only


def test_a_pad_forces_every_later_caption_position_to_pad():
    m = tiny()
    with torch.no_grad():
        m.text_head.weight.zero_()
        m.text_head.weight[m.cfg.text_pad_id, 0] = 1.0  # pad wins wherever hidden[0] > 0 ...
        m.text_head.weight[4, 0] = -1.0  # ... token 4 elsewhere
    _, image = batch(m)
    caption = m.caption(image)
    for row in caption.tolist():
        if 0 in row:
            assert all(t == 0 for t in row[row.index(0):])


def test_bad_inputs_raise_value_errors():
    m = tiny()
    text, image = batch(m)
    with pytest.raises(ValueError, match="text_len"):
        m(text[:, :3], image)
    with pytest.raises(ValueError, match="codes"):
        m(text, image[:, :2])
    with pytest.raises(ValueError, match="image codes must lie"):
        m(text, image + 100)
    with pytest.raises(ValueError, match="order"):
        m(text, image, "sideways")
    with pytest.raises(ValueError, match="top_p"):
        m.generate_images(text, top_p=0.0)
    with pytest.raises(ValueError, match=">= 1"):
        DALLEConfig(n_layer=0)


def test_a_few_steps_of_adam_lower_the_loss_on_fixed_pairs():
    torch.manual_seed(0)
    m = tiny().train()
    text, image = batch(m, b=8)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss = m(text, image, torch.arange(8) % 2 == 1)["loss"]
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.7 * first  # 3.12 -> 1.95 when written

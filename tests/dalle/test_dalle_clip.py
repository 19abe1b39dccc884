"""The small CLIP: the symmetric InfoNCE against hand computation, the encoders, reranking, the dalle_clip task."""

from __future__ import annotations

import math
import os

import pytest
import torch

import paperzoo
from paperzoo.dalle.clip import CLIP, CLIPConfig, clip_loss, clip_scores, create_clip, rerank, tokenize_captions

HAVE_FMNIST = os.path.isdir("/usr/share/datasets/fashion-mnist") or bool(os.environ.get("PAPERZOO_DATA"))
needs_data = pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed")


def _tiny(**kw) -> CLIP:
    torch.manual_seed(0)
    return create_clip("clip_tiny", vocab_size=40, context_length=12, **kw).eval()


def test_clip_loss_matches_the_hand_computed_symmetric_infonce():
    logits = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    # images -> texts (rows): -log softmax of the diagonal = log(1 + e^(other - diag))
    rows = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-2))) / 2
    cols = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-3))) / 2  # texts -> images (columns)
    assert clip_loss(logits).item() == pytest.approx((rows + cols) / 2, abs=1e-6)


def test_clip_loss_equals_a_brute_force_loop_and_soft_targets_reduce_to_it():
    torch.manual_seed(0)
    logits = torch.randn(5, 5) * 3
    total = 0.0
    for i in range(5):  # the two cross-entropies written out, one pair at a time
        total += -math.log(math.exp(logits[i, i]) / sum(math.exp(logits[i, j]) for j in range(5))) / 10
        total += -math.log(math.exp(logits[i, i]) / sum(math.exp(logits[j, i]) for j in range(5))) / 10
    assert clip_loss(logits).item() == pytest.approx(total, abs=1e-5)
    assert clip_loss(logits, torch.eye(5, dtype=torch.bool)).item() == pytest.approx(total, abs=1e-5)


def test_texts_describing_several_images_spread_the_targets_by_hand():
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.5, 1.5, -1.0], [0.0, 0.0, 4.0]])
    # text 1 ("a sneaker") also describes image 0; text 0 ("a small sneaker") does not describe image 1
    pos = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.bool)
    lr, lc = logits.log_softmax(1), logits.log_softmax(0)  # over texts (rows), over images (columns)
    to_text = -(0.5 * (lr[0, 0] + lr[0, 1]) + lr[1, 1] + lr[2, 2]) / 3
    to_image = -(lc[0, 0] + 0.5 * (lc[0, 1] + lc[1, 1]) + lc[2, 2]) / 3
    assert clip_loss(logits, pos).item() == pytest.approx(((to_text + to_image) / 2).item(), abs=1e-6)
    with pytest.raises(ValueError, match="diagonal"):
        clip_loss(logits, torch.zeros(3, 3, dtype=torch.bool))


def test_forward_is_the_scaled_cosine_similarity_of_unit_embeddings():
    model = _tiny()
    images = torch.rand(3, 1, 28, 28)
    tokens = torch.tensor([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0], [1, 8, 9, 10, 2]])
    img, txt = model.encode_image(images), model.encode_text(tokens)
    assert img.shape == txt.shape == (3, 32)
    torch.testing.assert_close(img.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(model(images, tokens), (img @ txt.t()) / 0.07)  # initial temperature 0.07


def test_text_embedding_is_read_at_eos_and_ignores_padding():
    model = _tiny()
    short = torch.tensor([[1, 5, 6, 2, 0, 0]])
    longer = torch.tensor([[1, 5, 6, 2, 0, 0, 0, 0, 0, 0]])
    junk = torch.tensor([[1, 5, 6, 2, 0, 0]])
    torch.testing.assert_close(model.encode_text(short), model.encode_text(longer))
    # a different pad id: the tokens after EOS are never attended (causal), whatever they are
    junk[0, 4:] = 9
    torch.testing.assert_close(model.encode_text(short), model.encode_text(junk, pad_id=9))
    with pytest.raises(ValueError, match="L <= 12"):
        model.encode_text(torch.ones(1, 13, dtype=torch.long))


def test_logit_scale_is_clipped_at_100_and_passes_no_gradient_there():
    model = _tiny()
    assert model.scale().item() == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(500.0))
    model.scale().backward()
    assert model.scale().item() == pytest.approx(100.0) and model.logit_scale.grad.item() == 0.0


def test_rerank_orders_by_brute_force_cosine_similarity():
    model = _tiny()
    images, tokens = torch.rand(7, 1, 28, 28), torch.tensor([[1, 5, 6, 2]])
    with torch.no_grad():
        t = model.encode_text(tokens)[0]
        sims = [float(model.encode_image(images[i: i + 1])[0] @ t) for i in range(7)]
    expected = sorted(range(7), key=lambda i: -sims[i])
    assert rerank(model, images, tokens).tolist() == expected
    torch.testing.assert_close(clip_scores(model, images, tokens, batch_size=3), torch.tensor(sims))


def test_tokenize_captions_brackets_pads_and_refuses_long_captions():
    from paperzoo.dalle.captions import build_caption_tokenizer

    tok = build_caption_tokenizer(512)
    out = tokenize_captions(tok, ["a sneaker", "운동화"], 8)
    assert out.shape == (2, 8) and out.dtype == torch.int64
    for row, text in zip(out.tolist(), ["a sneaker", "운동화"]):
        ids = tok.encode(text)
        assert row[: len(ids) + 2] == [tok.bos_id, *ids, tok.eos_id] and set(row[len(ids) + 2:]) <= {tok.pad_id}
    with pytest.raises(ValueError, match="more than 3 tokens"):
        tokenize_captions(tok, ["a small dark sneaker pointing left"], 3)


def test_clip_fmnist_parameter_count_by_hand():
    model = create_clip("clip_fmnist")
    convs = [(1, 16), (16, 32), (32, 32), (32, 64), (64, 64)]  # 3x3 convs without bias, each + BN (2 x C)
    visual = sum(9 * i * o + 2 * o for i, o in convs) + 64 * 128  # + the projection W_i
    w = 64  # text width; the MLP is 4 w wide, the joint embedding 128
    block = 2 * 2 * w + (w * 3 * w + 3 * w) + (w * w + w) + (w * 4 * w + 4 * w) + (4 * w * w + w)  # LNs, attn, MLP
    text = 512 * w + 16 * w + 2 * block + 2 * w + w * 128  # embeddings, 2 blocks, ln_final, W_t
    assert sum(p.numel() for p in model.visual.parameters()) == visual == 77_872
    assert sum(p.numel() for p in model.text.parameters()) == text == 142_080
    assert sum(p.numel() for p in model.parameters()) == visual + text + 1  # + the log temperature


def test_bad_config_and_unknown_model_are_value_errors():
    with pytest.raises(ValueError, match="divisible"):
        CLIPConfig(text_width=30, text_heads=4)
    with pytest.raises(ValueError, match="unknown CLIP model 'nope'"):
        create_clip("nope")
    with pytest.raises(ValueError, match="do not fit clip_tiny"):
        create_clip("clip_tiny", depth=3)


def _cfg(tmp_path, *overrides: str) -> dict:
    base = {"task": "dalle_clip", "model": {"name": "clip_tiny"},
            "data": {"n_train": 512, "n_test": 200, "batch_size": 64, "eval_batch_size": 100},
            "train": {"epochs": 1, "threads": 1, "log_every": 2},
            "run": {"out_dir": str(tmp_path), "name": "clip", "progress": "off", "tensorboard": False,
                    "plots": False}}
    from paperzoo.train.config import apply_overrides

    return apply_overrides(base, list(overrides))


@needs_data
def test_task_resumes_bitwise_with_the_tokenizer_of_its_metadata(tmp_path, monkeypatch):
    from paperzoo.dalle import clip_task
    from paperzoo.dalle.clip_task import load_clip, rerank_prompt
    from paperzoo.train import checkpoint as ckpt
    from paperzoo.train.checkpoint import find_checkpoint, read_weights

    ref = paperzoo.train(_cfg(tmp_path, "run.name=ref"))
    monkeypatch.setenv("PAPERZOO_FAULT", "step:3:INT")  # Ctrl-C after step 3 of 8
    monkeypatch.setattr(ckpt, "_FAULT_COUNTS", {})
    cut = paperzoo.train(_cfg(tmp_path, "run.name=cut"))
    assert ref.status == "done" and cut.status == "interrupted" and cut.step == 3
    monkeypatch.delenv("PAPERZOO_FAULT")

    def no_new_tokenizer(*a, **k):
        raise AssertionError("a resumed run must take its tokenizer from the checkpoint")

    monkeypatch.setattr(clip_task, "build_caption_tokenizer", no_new_tokenizer)
    done = paperzoo.train(resume=cut.run_dir)
    wa, wb = (read_weights(find_checkpoint(r.run_dir, "final")) for r in (ref, done))
    assert done.step == 8 and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert done.metrics["test_zeroshot_acc"] == ref.metrics["test_zeroshot_acc"]
    assert {"test_retrieval_acc", "test_attr_acc", "test_heldout_attr_acc", "test_zeroshot_acc_ko"} <= set(done.metrics)
    model, tok = load_clip(done.run_dir, "final")
    assert tok.encode("a sneaker") and model.cfg.vocab_size == tok.vocab_size and not model.training
    order = rerank_prompt(model, tok, torch.rand(5, 1, 28, 28), "a small dark sneaker")
    assert sorted(order.tolist()) == list(range(5))
    other = tmp_path / "other"
    other.mkdir()
    (other / "meta.json").write_text('{"task": "segmentation"}')
    (other / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not a paperzoo dalle_clip checkpoint"):
        load_clip(other / "model.safetensors")

"""Dynamic int8 of the text models (deploy/quantize_text.py): the int8 linear against its rounding bound, tiny
overfit models giving the same greedy tokens, the saved file reloading without pickle, and ``paperzoo quantize``
on a text run. One thread, models of width 16-64."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from paperzoo.cli import main
from paperzoo.deploy.quantize_text import (
    Int8Weight,
    dynamic_int8_linear,
    int8_error_bound,
    is_int8_text_file,
    load_int8_text,
    quantize_text_model,
    quantize_weight,
    save_text_weights,
)
from paperzoo.registry import create_model
from paperzoo.text.tokenizers import build_tokenizer

torch.set_num_threads(1)


def test_weight_rounding_is_within_half_a_step_per_row():
    w = torch.randn(24, 40) * torch.linspace(0.01, 3, 24)[:, None]  # rows of very different ranges
    q, s = quantize_weight(w)
    assert q.dtype == torch.int8 and s.shape == (24,)
    assert int(q.abs().amax(1).min()) == 127  # each row's largest weight maps to ±127: per-channel scale
    assert bool(((w - s[:, None] * q.float()).abs() <= s[:, None] / 2 + 1e-7).all())


@pytest.mark.parametrize("shape", [(5, 64), (2, 3, 64)])
def test_int8_linear_within_the_hand_derived_rounding_bound(shape):
    torch.manual_seed(0)
    x, w, b = torch.randn(shape) + 0.3, torch.randn(48, 64) * 0.1, torch.randn(48)
    qw = Int8Weight(*quantize_weight(w))
    exact = F.linear(x, w, b)
    bound = int8_error_bound(x, w, qw.scale) + 1e-5
    kernel, reference = F.linear(x, qw, b), dynamic_int8_linear(x, qw.q, qw.scale, b)
    assert kernel.shape == exact.shape
    for y in (kernel, reference):
        err = (y - exact).abs()
        assert bool((err <= bound).all()), f"max error / bound {float((err / bound).max()):.3f}"
        assert float(err.max()) > 1e-4  # it did quantize
    # the kernel computes the reference's formula, activations quantized too (not just the weights)
    weight_only = F.linear(x, qw.q.float() * qw.scale[:, None], b)
    assert float((kernel - reference).abs().max()) < 1e-5 < 1e-3 < float((kernel - weight_only).abs().max())


def test_row_slices_stay_int8_and_other_ops_see_the_rounded_weights():
    qw = Int8Weight(*quantize_weight(torch.randn(12, 8)))
    top = qw[:4]
    assert isinstance(top, Int8Weight) and top is qw[:4]  # cached: packed once
    assert torch.equal(top.q, qw.q[:4])
    col = qw[:, 2:]  # a column slice: plain fp32 of the dequantized values
    assert type(col) is torch.Tensor and torch.equal(col, qw.q[:, 2:].float() * qw.scale[:, None])


def _overfit(model, batches, steps=150, lr=1e-2):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        for inputs, target in batches:
            loss = F.cross_entropy(model(*inputs).flatten(0, 1), target.flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def test_tiny_gpt_overfit_gives_the_same_greedy_tokens_in_int8(monkeypatch):
    torch.manual_seed(0)
    seq = torch.tensor([[3, 7, 1, 4, 9, 2, 6, 5, 8, 3, 7, 1, 4, 9, 2, 6]])
    gpt = create_model("gpt_char_small", vocab_size=10, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    _overfit(gpt, [((seq[:, :-1],), seq[:, 1:])], steps=120)
    fp32 = gpt.generate(seq[:, :2], 14, method="greedy")  # the KV-cached steps (models/fast_decode.py)
    assert torch.equal(fp32, seq)  # learnt
    quantize_text_model(gpt)
    assert isinstance(gpt.lm_head.weight, Int8Weight) and gpt.lm_head.weight is gpt.wte.weight  # still tied
    calls = []
    monkeypatch.setattr(Int8Weight, "linear", lambda self, x, b: calls.append(1) or dynamic_int8_linear(
        x, self.q, self.scale, b))
    assert torch.equal(gpt.generate(seq[:, :2], 14, method="greedy"), fp32)
    assert len(calls) >= 13 * 9  # every linear of the cached steps ran int8: 4 per block x 2 + the head


def test_tiny_transformer_and_lstm_translators_overfit_give_the_same_greedy_tokens_in_int8():
    torch.manual_seed(0)
    src = torch.tensor([[5, 6, 7, 8, 2], [9, 4, 3, 6, 2], [7, 7, 5, 3, 2]])  # EOS = 2
    tgt = torch.stack([torch.cat([torch.tensor([1]), s.flip(0)[1:], torch.tensor([2])]) for s in src])  # reverse
    for name, kw in [("transformer_tiny", dict(N_enc=1, N_dec=1, d_model=32, d_ff=64, h=2, P_drop=0.0)),
                     ("rnn_seq2seq_attn", dict(cell="lstm", m=16, n=32, n_attn=32, l=32))]:
        model = create_model(name, src_vocab_size=10, tgt_vocab_size=10, **kw)
        _overfit(model, [((src, tgt[:, :-1]), tgt[:, 1:])], steps=150 if name.startswith("t") else 300, lr=1e-2)
        fp32 = model.generate(src, method="greedy", max_len=6)
        assert torch.equal(fp32[:, :5], tgt[:, 1:]), name
        quantize_text_model(model)
        assert torch.equal(model.generate(src, method="greedy", max_len=6), fp32), name


def test_lstm_lm_logits_within_two_percent_in_int8():
    torch.manual_seed(0)
    lm = create_model("lstm_lm", vocab_size=20, emb_dim=32, hidden_size=32, dropout=0.0).eval()
    x = torch.randint(0, 20, (2, 12))
    with torch.no_grad():
        ref = lm(x)
        quantize_text_model(lm)
        err = (lm(x) - ref).abs().max() / ref.abs().max()
    assert 0 < float(err) < 0.02


def _meta(model_name, args, tok):
    return {"task": "language_model", "model": {"name": model_name, "args": args},
            "tokenizers": {"lm": tok.to_dict()}, "data": {}}


def test_int8_file_reloads_without_pickle_and_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    tok = build_tokenizer("char", ["abcdefgh\n"])
    args = dict(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=64)
    gpt = quantize_text_model(create_model("gpt_char_small", **args))
    path = tmp_path / "m.int8.safetensors"
    fp32_size = save_text_weights(create_model("gpt_char_small", **args), _meta("gpt_char_small", args, tok),
                                  tmp_path / "fp32.safetensors")
    size = save_text_weights(gpt, _meta("gpt_char_small", args, tok), path)
    raw = load_file(str(path))  # plain tensors: safetensors has no objects to unpickle
    assert raw["wte.weight.int8"].dtype == torch.int8 and "lm_head.weight.int8" not in raw  # tied: stored once
    assert is_int8_text_file(path) and not is_int8_text_file(tmp_path / "fp32.safetensors")
    assert fp32_size / size > 3  # not 4: LayerNorms, biases, position embeddings and the header stay
    back = load_int8_text(path).model
    assert back.lm_head.weight is back.wte.weight
    x = torch.randint(0, tok.vocab_size, (2, 9))
    with torch.no_grad():
        assert torch.equal(back(x), gpt(x))
    assert torch.equal(back.generate(x[:, :3], 8, method="greedy"), gpt.generate(x[:, :3], 8, method="greedy"))
    with pytest.raises(ValueError, match="CPU only"):
        load_int8_text(path, device="cuda")


def test_quantize_cli_on_a_text_run_then_lm_uses_the_int8_file(tmp_path, capsys):
    from paperzoo.text.tasks import train_lm
    from paperzoo.train.config import find_recipe

    text = tmp_path / "corpus.txt"
    text.write_text("".join(f"Fortune {i}: you will {'read' if i % 3 else 'write'} code.\n%\n" for i in range(40)))
    result = train_lm(find_recipe("lm_fortunes"), overrides=[
        f"data.train={text}", "model.args={n_layer: 1, n_head: 2, n_embd: 16, dropout: 0.0}", "data.block_size=32",
        "data.batch_size=8", "data.eval_batch_size=16", "train.epochs=1", "train.time_budget_s=null",
        "train.threads=1", "run.tensorboard=false", "run.plots=false", "run.progress=off",
        f"run.out_dir={tmp_path}", "run.name=lm"])
    assert main(["quantize", str(result.run_dir), "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "dynamic int8 (5 matrices" in out and "val_ppl" in out and "greedy decoding, batch 8" in out
    int8 = result.run_dir / "export" / "model.int8.safetensors"
    report = json.loads((tmp_path / "lm" / "export" / "model.int8.safetensors.json").read_text())
    assert report["size_fp32_bytes"] > report["size_int8_bytes"] and report["task"] == "language_model"
    assert main(["lm", "sample", str(int8), "--num", "1", "--max-new", "5", "--temperature", "0"]) == 0
    assert "--- sample 1 ---" in capsys.readouterr().out


def test_quantize_refuses_an_unsupported_run_in_one_line(tmp_path, capsys):
    from safetensors.torch import save_file

    fake = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(1)}, str(fake), metadata={"paperzoo": json.dumps({"task": "detection"})})
    assert main(["quantize", str(fake)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a 'detection' run" in err and "Traceback" not in err

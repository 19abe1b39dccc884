"""Quantization-aware training (deploy/qat.py, Jacob et al. 2018): the fake quantizers compute the
quantize-dequantize formula of the int8 runtime, QAT recovers what post-training rounding loses, and
``paperzoo quantize --qat`` writes the QAT int8 model with fp32 / PTQ / QAT accuracies."""

import json

import pytest
import torch
from torch import nn

from paperzoo.cli import main
from paperzoo.deploy.qat import (
    ActivationFakeQuant,
    QATLayer,
    activation_qparams,
    fake_quant_weight,
    prepare_qat,
    set_observe,
    strip_qat,
    train_qat,
)


def test_weight_fake_quant_is_symmetric_per_channel_int8_on_hand_values():
    w = torch.tensor([[1.0, -0.25, 0.3], [0.02, -4.0, 1.0]])
    # row 0: S = 1/127 -> q = 127, round(-31.75) = -32, round(38.1) = 38
    # row 1: S = 4/127 -> q = round(0.635) = 1, -127, round(31.75) = 32
    want = torch.tensor([[127.0, -32.0, 38.0], [4 * 1.0, 4 * -127.0, 4 * 32.0]]) / 127
    assert torch.allclose(fake_quant_weight(w), want, atol=1e-7)


def test_activation_fake_quant_is_asymmetric_uint8_with_zero_exact_on_hand_values():
    assert activation_qparams(-1.0, 3.0) == pytest.approx((4 / 255, 64))  # Z = round(1 / (4/255)) = round(63.75)
    assert activation_qparams(0.5, 2.0)[1] == 0  # the range is widened to hold 0
    fq = ActivationFakeQuant()
    fq(torch.tensor([-1.0, 3.0]))  # first batch sets the range
    fq.observe = False
    x = torch.tensor([0.5, 5.0, -2.1, 0.0], requires_grad=True)
    s = 4 / 255
    # 0.5: round(31.875) + 64 = 96 -> 32 S; 5.0: clamped to 255 -> 191 S; -2.1: clamped to 0 -> -64 S; 0 exact
    want = torch.tensor([32 * s, 191 * s, -64 * s, 0.0])
    y = fq(x)
    assert torch.allclose(y, want, atol=1e-6)
    y.sum().backward()  # straight-through inside the range, zero outside (clamped)
    assert x.grad.tolist() == [1.0, 0.0, 0.0, 1.0]


def test_activation_range_is_an_ema_of_batch_minima_and_maxima():
    fq = ActivationFakeQuant(decay=0.9)
    fq(torch.tensor([-1.0, 1.0]))
    fq(torch.tensor([-3.0, 11.0]))
    assert float(fq.lo) == pytest.approx(0.9 * -1 + 0.1 * -3) and float(fq.hi) == pytest.approx(0.9 + 1.1)


def test_qat_layer_computes_the_layer_on_fake_quantized_input_and_weight():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    layer = QATLayer(conv)
    x = torch.randn(2, 3, 5, 5)
    got = layer(x)
    scale, zero = activation_qparams(float(x.min()), float(x.max()))
    xq = (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale  # Jacob et al. Eq. 1, by hand
    want = nn.functional.conv2d(xq, fake_quant_weight(conv.weight), conv.bias, padding=1)
    assert torch.allclose(got, want, atol=1e-5)


def _teacher_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    teacher = torch.randn(8, 4, generator=torch.Generator().manual_seed(99))
    return x, (torch.tanh(x @ teacher) @ torch.randn(4, 4, generator=torch.Generator().manual_seed(7))).argmax(1)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: more threads only contend (minutes instead of seconds on a busy machine)
    yield
    torch.set_num_threads(n)


def test_qat_recovers_what_post_training_rounding_loses_at_3_bits(one_thread):
    torch.manual_seed(0)
    x, y = _teacher_data(1024, 0)
    xt, yt = _teacher_data(1024, 1)
    model = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):  # fp32 training to convergence
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    acc32 = _accuracy(model, xt, yt)
    # 3-bit weights and activations: the rounding a post-training quantizer cannot absorb
    qmodel = prepare_qat(model, x[:4], bits=3)
    qmodel(x)  # calibration pass: the activation ranges
    set_observe(qmodel, False)
    acc_ptq = _accuracy(qmodel, xt, yt)
    batches = lambda: [(x[i:i + 64], y[i:i + 64]) for i in range(0, len(x), 64)]  # noqa: E731
    train_qat(qmodel, batches, epochs=20, lr=0.05)
    acc_qat = _accuracy(qmodel, xt, yt)
    # measured: fp32 0.887, 3-bit PTQ 0.733, QAT 0.796
    assert acc32 > 0.85 and acc_ptq < acc32 - 0.1  # the case loses under post-training rounding
    assert acc_qat > acc_ptq + 0.03
    plain = strip_qat(qmodel)
    assert not any(isinstance(m, QATLayer) for m in plain.modules())
    assert not any(isinstance(m, nn.BatchNorm1d) for m in plain.modules())  # folded before fine-tuning


def test_cli_quantize_qat_prints_fp32_ptq_qat_and_stores_them(tmp_path_factory, tiny_run, tmp_path, capsys,
                                                               one_thread):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    run_dir = tiny_run(tmp_path_factory.mktemp("runs"), width=8, image_size=16, images=128, batch_size=32, epochs=2)
    out = tmp_path / "q.onnx"
    assert main(["quantize", str(run_dir), "--qat", "--qat-epochs", "2", "--calib", "32", "-o", str(out),
                 "--limit", "64"]) == 0
    text = capsys.readouterr().out
    assert "fp32" in text and "int8 PTQ" in text and "int8 QAT" in text and "QAT 2 epoch(s) on 128 images" in text
    q = json.loads(out.with_name("q.onnx.json").read_text())["quantization"]
    assert q["accuracy_qat"] == q["accuracy_int8"] and q["qat_epochs"] == 2
    assert q["accuracy_qat"] >= q["accuracy_ptq"] - 0.05  # never much worse than PTQ
    assert main(["quantize", str(run_dir), "--qat", "--qat-epochs", "0", "-o", str(tmp_path / "x.onnx")]) == 2

"""paperzoo quantize: a static int8 ONNX model calibrated on training images, smaller, agreeing with the fp32
model, its accuracy before and after in the card; predict runs it."""

import json

import pytest
import torch

from paperzoo.cli import main
from paperzoo.deploy import load_card, run_onnx
from paperzoo.deploy.quantize import quantize_run
from paperzoo.train.evaluate import load_checkpoint

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_run):
    return tiny_run(tmp_path_factory.mktemp("runs"), width=8, image_size=16, images=128, batch_size=32, epochs=2)


def test_int8_model_agrees_with_fp32_is_smaller_and_records_accuracy_before_and_after(run_dir, tmp_path):
    out = tmp_path / "m.int8.onnx"
    r = quantize_run(run_dir, out, calib=64)
    assert r.calib_images == 64 and r.test_images == 128
    assert r.size_int8_bytes * 2.5 < r.size_fp32_bytes  # int8 weights: ~4x smaller for a conv net
    assert abs(r.accuracy_int8 - r.accuracy_fp32) <= 0.05
    card = load_card(out)
    assert card.format == "onnx-int8" and card.quantization["accuracy_int8"] == r.accuracy_int8
    ck = load_checkpoint(run_dir, fused=False)
    x = (torch.rand(16, *ck.meta["input_size"]) - 0.5) / 0.3
    with torch.no_grad():
        want = ck.model(x)
    got = run_onnx(out, x)
    assert (got.argmax(1) == want.argmax(1)).float().mean() >= 0.8  # int8 rounding moves few decisions
    assert float((got - want).abs().max()) < 0.25 * float(want.abs().max())


def test_int8_file_drops_the_all_zero_bias_zero_points_and_keeps_the_outputs(run_dir, tmp_path, monkeypatch):
    import shutil

    import onnx
    from onnx import numpy_helper

    from paperzoo.deploy import quantize as q

    drop = q._drop_zero_bias_zero_points
    monkeypatch.setattr(q, "_drop_zero_bias_zero_points", lambda path: None)
    full, lean = tmp_path / "full.int8.onnx", tmp_path / "lean.int8.onnx"
    quantize_run(run_dir, full, calib=32, test_limit=16)
    shutil.copy(full, lean)
    drop(lean)
    proto = onnx.load(str(lean))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    biases = [n for n in dq if inits[n.input[0]].dtype.name == "int32"]
    assert biases and all(len(n.input) == 2 for n in biases)  # the zero point is dropped: 0 by default
    assert all(len(n.input) == 3 for n in dq if inits[n.input[0]].dtype.name == "int8")  # weights keep theirs
    assert lean.stat().st_size < full.stat().st_size
    x = torch.randn(8, *load_card(full).input_size)
    torch.testing.assert_close(run_onnx(lean, x), run_onnx(full, x), rtol=0, atol=0)


def test_cli_quantize_prints_accuracy_and_size_and_predict_runs_the_int8_file(run_dir, tmp_path, capsys):
    from PIL import Image

    from paperzoo.train.classification import make_synthetic

    out = tmp_path / "q.onnx"
    assert main(["quantize", str(run_dir), "--calib", "32", "-o", str(out), "--limit", "64"]) == 0
    text = capsys.readouterr().out
    assert "test accuracy on 64 images: fp32" in text and "smaller" in text
    img = tmp_path / "a.png"
    Image.fromarray(make_synthetic("test", 4, 16).images[0, 0].numpy(), mode="L").save(img)
    assert main(["predict", str(out), str(img), "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["top"]) == 4
    assert main(["quantize", str(run_dir), "--calib", "0", "-o", str(tmp_path / "x.onnx")]) == 2

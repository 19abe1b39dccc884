"""The transformers' fast exports give the eager fp32 model's logits: ONNX at opset 23 (one Attention node per
SDPA) in ONNX Runtime, the AOTInductor package in fp32 and bf16, and ONNX Runtime's dynamic int8 of the linears,
each within its stated tolerance (tiny ViT / Swin configurations so the checks stay fast)."""

import collections

import pytest
import torch

from paperzoo.cli import main
from paperzoo.deploy.export import (
    ATTENTION_OPSET,
    RTOL_OF_MAX,
    RTOL_OF_MAX_BF16,
    export_model,
    has_attention,
    load_exported,
    quantize_dynamic_onnx,
    run_onnx,
)
from paperzoo.registry import create_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SIZE = 32
TINY = {  # two blocks of width 32: the same graph structure as ViT-Ti / Swin-T, milliseconds to run
    "vit": ("vit_tiny_patch4_32", dict(depth=2, embed_dim=32, num_heads=2)),
    "swin": ("swin_tiny_patch2_window4_32", dict(depths=(1, 1), embed_dim=32, num_heads=(2, 4))),
}


def _tiny(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    name, kw = TINY[family]
    return create_model(name, num_classes=10, **kw).eval()


def _export(model, path, **kw):
    return export_model(model, path, input_size=[3, SIZE, SIZE], classes=[str(i) for i in range(10)],
                        mean=[0.5] * 3, std=[0.5] * 3, **kw)


def _rel_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_attention_is_one_onnx_node_and_onnxruntime_gives_the_eager_logits(family, tmp_path):
    model = _tiny(family)
    assert has_attention(model)
    card = _export(model, tmp_path / "m.onnx")
    graph = onnx.load(str(tmp_path / "m.onnx"))
    ops = collections.Counter(n.op_type for n in graph.graph.node)
    assert card.opset == ATTENTION_OPSET and ops["Attention"] >= 2 and ops["Softmax"] == 0  # no decomposed SDPA
    x = torch.randn(5, 3, SIZE, SIZE)  # another batch than traced (2) and verified (3)
    with torch.no_grad():
        want = model(x)
    assert _rel_diff(run_onnx(tmp_path / "m.onnx", x), want) <= RTOL_OF_MAX


def test_a_cnn_keeps_the_exporters_default_opset(tmp_path):
    model = create_model("resnet18", num_classes=10, small_input=True, width=4).eval()
    assert not has_attention(model)
    assert _export(model, tmp_path / "m.onnx").opset < ATTENTION_OPSET


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_dynamic_int8_quantizes_every_linear_and_stays_near_the_fp32_logits(family, tmp_path):
    model = _tiny(family)
    _export(model, tmp_path / "m.onnx")
    quantize_dynamic_onnx(tmp_path / "m.onnx", tmp_path / "m.int8.onnx")
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "m.int8.onnx")).graph.node)
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert ops["MatMulInteger"] >= n_linear - 1  # the classifier may stay a float Gemm; every other linear is int8
    x = torch.randn(8, 3, SIZE, SIZE)
    with torch.no_grad():
        want = model(x)
    # int8 weights per output channel and int8 activations per call: a few percent, far from random logits (~100 %)
    assert _rel_diff(run_onnx(tmp_path / "m.int8.onnx", x), want) < 0.1


def test_bad_option_combinations_are_one_clear_error(tmp_path):
    model = _tiny("vit")
    with pytest.raises(ValueError, match="pt2 format only"):
        _export(model, tmp_path / "m.onnx", fmt="onnx", compiled=True)
    with pytest.raises(ValueError, match="--compile"):
        _export(model, tmp_path / "m.pt2", fmt="pt2", precision="bf16")
    assert main(["export", str(tmp_path / "no-run"), "--format", "onnx", "--precision", "bf16"]) == 2


@pytest.mark.slow  # each AOTInductor build runs the C++ compiler: about a minute on 2 cores
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_aotinductor_package_gives_the_eager_fp32_logits(precision, tmp_path):
    model = _tiny("vit")
    path = tmp_path / "m.pt2"
    card = _export(model, path, fmt="pt2", compiled=True, precision=precision)
    assert card.compiled and card.precision == precision
    x = torch.randn(5, 3, SIZE, SIZE)
    with torch.no_grad():
        want = model(x)
        got = load_exported(path)(x)  # the card says: compiled package
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert _rel_diff(got, want) <= (RTOL_OF_MAX if precision == "fp32" else RTOL_OF_MAX_BF16)
    if precision == "bf16":
        assert _rel_diff(got, want) > RTOL_OF_MAX  # it did compute in bf16, not silently in fp32

"""paperzoo export: ONNX (run by ONNX Runtime) and torch.export programs of a run's fused classifier give the
eager model's logits at any batch size, with the classes and normalization in the card beside them; what cannot
be traced is one clear error."""

import json

import pytest
import torch
from torch import nn

from paperzoo.cli import main
from paperzoo.deploy import ExportError, export_model, export_run, load_card, run_onnx
from paperzoo.registry import create_model, get_entry, list_models
from paperzoo.train.evaluate import load_checkpoint

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_run):
    return tiny_run(tmp_path_factory.mktemp("runs"), width=4, image_size=8, images=32, batch_size=16, epochs=1)


def _load(path, fmt):
    if fmt == "onnx":
        return lambda x: run_onnx(path, x)
    return torch.export.load(str(path)).module()


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_exported_run_gives_the_eager_logits_at_another_batch_size_and_carries_its_card(run_dir, tmp_path, fmt):
    path = tmp_path / f"m.{fmt}"
    card = export_run(run_dir, path, fmt=fmt)
    eager = load_checkpoint(run_dir, fused=False)
    x = torch.randn(5, *eager.meta["input_size"])  # batch 5: the export traced batch 2
    with torch.no_grad():
        want = eager.model(x)
    got = _load(path, fmt)(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * float(want.abs().max()))
    assert load_card(path) == card and card.classes == eager.classes and card.fused
    assert card.mean == eager.meta["normalization"]["mean"] and card.input_size == [1, 8, 8]


def test_onnx_export_carries_no_debug_metadata_or_local_paths(run_dir, tmp_path):
    import onnx

    path = tmp_path / "m.onnx"
    export_run(run_dir, path)
    proto = onnx.load(str(path))
    assert proto.graph.node and not any(n.metadata_props or n.doc_string for n in proto.graph.node)
    assert b"stack_trace" not in path.read_bytes() and b"paperzoo/models" not in path.read_bytes()


def test_cli_export_writes_the_file_and_its_card_and_refuses_a_missing_run(run_dir, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", str(run_dir), "--format", "onnx", "-o", str(out)]) == 0
    assert "logits equal the eager model's" in capsys.readouterr().out
    assert out.is_file() and json.loads((tmp_path / "model.onnx.json").read_text())["format"] == "onnx"
    assert main(["export", str(tmp_path / "nothing")]) == 2
    assert "error" in capsys.readouterr().err


class _DataDependent(nn.Module):
    """Python control flow on a tensor's value: one graph cannot hold both branches."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x.flatten(1)) if float(x.sum()) > 0 else -self.fc(x.flatten(1))


def test_a_model_with_data_dependent_control_flow_is_one_clear_export_error(tmp_path):
    with pytest.raises(ExportError, match="cannot be exported to pt2") as e:
        export_model(_DataDependent(), tmp_path / "m.pt2", fmt="pt2", input_size=[1, 2, 2], classes=["a", "b"],
                     mean=[0.5], std=[0.5], fused=False)
    assert "\n" not in str(e.value) and not (tmp_path / "m.pt2").exists()


def _representatives() -> list[str]:
    """The smallest model of each image family (ViT and Swin included)."""
    best: dict[str, tuple[int, str]] = {}
    for name in list_models(kind="image"):
        with torch.device("meta"):
            n = sum(p.numel() for p in create_model(name, num_classes=10, in_chans=1, small_input=True).parameters())
        fam = get_entry(name).family
        if fam not in best or n < best[fam][0]:
            best[fam] = (n, name)
    return sorted(name for _, name in best.values())


@pytest.mark.slow
@pytest.mark.parametrize("name", _representatives())
@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_every_image_family_exports_with_equal_logits(name, fmt, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=1, small_input=True).eval()
    size = max(32, *getattr(model, "min_input_size", (32, 32)))
    card = export_model(model, tmp_path / f"m.{fmt}", fmt=fmt, input_size=[1, size, size],
                        classes=[str(i) for i in range(10)], mean=[0.5], std=[0.5])
    assert card.max_abs_diff <= 1e-4  # export_model verified it; the card records by how much


def test_predict_through_onnxruntime_gives_the_torch_top_classes(run_dir, tmp_path, capsys):
    from PIL import Image

    from paperzoo.train.classification import make_synthetic

    img = tmp_path / "a.png"
    Image.fromarray(make_synthetic("test", 4, 8).images[1, 0].numpy(), mode="L").save(img)
    answers = []
    for extra in ([], ["--runtime", "onnxruntime"]):
        assert main(["predict", str(run_dir), str(img), "--format", "json", "--topk", "3", *extra]) == 0
        answers.append(json.loads(capsys.readouterr().out)[0]["top"])
    assert (run_dir / "export" / "model.onnx").is_file()  # --runtime onnxruntime exported the run first
    assert [t["class"] for t in answers[0]] == [t["class"] for t in answers[1]]
    assert [t["prob"] for t in answers[1]] == pytest.approx([t["prob"] for t in answers[0]], abs=1e-4)
    assert main(["predict", str(run_dir / "export" / "model.onnx"), str(img), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["top"][0]["class"] == answers[0][0]["class"]


def test_bench_times_the_onnxruntime_session_for_inference_only(capsys):
    from paperzoo.tools.bench import BenchConfig, bench_model

    r = bench_model("resnet18", BenchConfig(batch_size=2, input_size=16, small_input=True, num_classes=10, warmup=1,
                                            repeats=2, modes=("infer",), runtime="onnxruntime"))
    assert r.runtime == "onnxruntime" and r.infer_img_s > 0 and r.train_img_s is None
    with pytest.raises(ValueError, match="fp32 graph"):
        bench_model("resnet18", BenchConfig(small_input=True, dtype="bf16", modes=("infer",), runtime="onnxruntime"))
    assert main(["bench", "resnet18", "--small-input", "--size", "16", "--batch", "2", "--warmup", "0", "--repeats",
                 "1", "--runtime", "onnxruntime", "--format", "csv"]) == 0
    assert "onnxruntime" in capsys.readouterr().out

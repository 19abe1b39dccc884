"""`paperzoo models` (table, formats, --check) and `paperzoo bench` (metrics, formats, plot)."""

import json

import pytest

from paperzoo.cli import main
from paperzoo.tools.bench import BenchConfig, bench_model, matmul_gflops


def test_models_lists_resnet_with_params_and_gflops(capsys):
    assert main(["models", "resnet*"]) == 0
    out = capsys.readouterr().out
    assert "resnet50" in out and "25,557,032" in out and "Deep Residual Learning" in out
    assert "gflops" in out.splitlines()[0]


def test_models_json_and_md_formats(capsys):
    assert main(["models", "resnet18", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["name"] == "resnet18" and rows[0]["params"] == 11_689_512
    # resnet18 at 224: 1.82 GMACs = 3.64 GFLOPs (multiply-adds x 2)
    assert rows[0]["gflops"] == pytest.approx(3.64, rel=0.01)
    assert main(["models", "resnet18", "--format", "md"]) == 0
    assert capsys.readouterr().out.startswith("| name |")


def test_models_check_passes_when_counts_match(capsys):
    assert main(["models", "--check", "resnet*"]) == 0
    assert "match their reference parameter count" in capsys.readouterr().out


def test_models_unknown_pattern_is_a_clear_error(capsys):
    assert main(["models", "resnt18"]) == 2
    assert "did you mean: resnet18" in capsys.readouterr().err


def test_bench_model_reports_consistent_throughput_and_flops():
    cfg = BenchConfig(batch_size=4, small_input=True, warmup=1, repeats=2, num_classes=10)
    r = bench_model("resnet18", cfg, machine_gflops=100.0)
    assert r.params == 11_173_962  # 10 classes
    assert r.infer_img_s > 0 and r.train_img_s > 0
    assert r.infer_gflop_s == pytest.approx(r.gflops_per_img * r.infer_img_s)
    assert r.train_gflop_s == pytest.approx(3 * r.gflops_per_img * r.train_img_s)
    assert r.util_train_pct == pytest.approx(r.train_gflop_s)
    weights = 11_173_962 * 4 / 2**20
    assert r.train_mem_mb > 3 * weights  # weights + grads + momentum + saved activations


def test_matmul_gflops_is_positive():
    assert matmul_gflops("fp32", n=256, repeats=2) > 0


def test_bench_cli_writes_csv_and_plot(tmp_path, capsys):
    out, png = tmp_path / "b.csv", tmp_path / "b.png"
    rc = main(["bench", "resnet18", "--small-input", "--size", "16", "--batch", "2", "--warmup", "0",
               "--repeats", "1", "--format", "csv", "--out", str(out), "--plot", str(png)])
    assert rc == 0
    assert out.read_text().splitlines()[0].startswith("name,params")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_counts_parameters_as_models_does_by_default_and_says_why_when_it_differs(capsys):
    # `paperzoo models` counts each model at its registered default (1000 classes); so does bench unless asked
    argv = ["bench", "resnet18", "--size", "32", "--batch", "2", "--warmup", "0", "--repeats", "1",
            "--mode", "infer", "--format", "csv"]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "11689512" in out.out and "note:" not in out.err
    assert main([*argv, "--num-classes", "10"]) == 0
    err = capsys.readouterr().err
    assert "11,181,642 parameters as benchmarked (num_classes=10)" in err and "11,689,512" in err


def test_bench_warns_when_the_spread_of_its_repeats_is_too_wide_to_trust():
    from paperzoo.tools.bench import BenchResult, trust_notes

    row = dict(name="m", params=1, input="8x8", batch=1, dtype="fp32", gflops_per_img=0.1)
    calm = BenchResult(**row, infer_spread_pct=5.0, train_spread_pct=12.0)
    noisy = BenchResult(**row, infer_spread_pct=5.0, train_spread_pct=60.0)
    assert trust_notes([calm], BenchConfig(repeats=5)) == []
    (line,) = trust_notes([noisy], BenchConfig(repeats=5))
    assert line.startswith("warning: m: the training times spread 60 %") and "--repeats" in line


def test_bench_fused_times_the_folded_model_for_inference_only_and_names_the_bf16_features(capsys):
    rc = main(["bench", "resnet18", "--small-input", "--size", "16", "--batch", "2", "--warmup", "0",
               "--repeats", "1", "--fused", "--format", "csv"])
    out, err = capsys.readouterr()
    assert rc == 0 and "inference only" in err and "native bf16:" in err
    header, row = out.splitlines()[:2]
    assert "train_img_s" not in header and dict(zip(header.split(","), row.split(",")))["fused"] == "True"
    # the folded model has a bias per conv and no BatchNorm: fewer parameters than the 11.2M of the eager one
    eager = bench_model("resnet18", BenchConfig(batch_size=2, input_size=16, small_input=True, num_classes=10,
                                                warmup=0, repeats=1, modes=("infer",)))
    fused = bench_model("resnet18", BenchConfig(batch_size=2, input_size=16, small_input=True, num_classes=10,
                                                warmup=0, repeats=1, modes=("infer",), fused=True))
    assert fused.params < eager.params and fused.fused and eager.fused is None
    with pytest.raises(ValueError, match="inference only"):
        bench_model("resnet18", BenchConfig(batch_size=2, input_size=16, small_input=True, fused=True))

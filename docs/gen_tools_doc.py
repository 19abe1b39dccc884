"""Regenerate docs/tools.md: every `paperzoo` tool run for real, its output pasted, its pictures saved.

    python docs/gen_tools_doc.py                 # uses runs in docs/_work (trains two tiny runs if needed)
    python docs/gen_tools_doc.py --run RUN_DIR   # draw curves/confusion/attention from a real training run

Pictures go to docs/img/tools/. The tiny runs use the generated `synthetic` dataset so the script needs no data;
pass --run to show a real Fashion-MNIST run instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import shlex
import shutil
import sys
import textwrap
import time
from pathlib import Path

from paperzoo.cli import main as cli

DOCS = Path(__file__).resolve().parent
IMG = DOCS / "img" / "tools"
WORK = DOCS / "_work"


def run(cmd: str) -> str:
    """Run a paperzoo command in-process and return what it printed (stdout and stderr)."""
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = cli(shlex.split(cmd)[1:])
    if rc != 0:
        raise SystemExit(f"`{cmd}` failed with {rc}:\n{out.getvalue()}")
    print(f"ran `{cmd}` in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return out.getvalue().rstrip().replace(f"{DOCS.parent}/", "")


def block(cmd: str, output: str, max_lines: int = 40) -> str:
    lines = output.splitlines()
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [f"... ({len(lines) - max_lines + 1} more lines)"]
    return f"```console\n$ {cmd}\n" + "\n".join(lines) + "\n```\n"


def rel(p: Path) -> str:
    return str(p.relative_to(DOCS))


def tiny_runs() -> list[Path]:
    runs = []
    for lr in ("0.05", "0.2"):
        name = f"tiny-lr{lr}"
        if not (WORK / name / "final").exists():
            shutil.rmtree(WORK / name, ignore_errors=True)
            run(f"paperzoo train fashion_mnist_default --set model.name=resnet20 model.args.width=8 "
                f"data.dataset=synthetic data.synthetic_size=256 train.epochs=4 train.precision=fp32 "
                f"train.channels_last=false optim.lr={lr} run.progress=off run.tensorboard=false "
                f"--out-dir {WORK} --name {name}")
        runs.append(WORK / name)
    return runs


def tune_section(base_run: Path) -> list[str]:
    """The `paperzoo tune` section: a six-trial study over a tiny run's config (seconds per trial)."""
    s: list[str] = []
    add = s.append
    add("## `paperzoo tune`: hyper-parameter search (Optuna)\n")
    space = WORK / "space.yaml"
    space.write_text(textwrap.dedent(f"""\
        base: {base_run / 'config.yaml'}
        fixed: [train.epochs=2, run.progress=off, run.tensorboard=false, run.plots=false]
        params:
          optim.lr:           {{type: log_float, low: 0.01, high: 0.5}}
          optim.weight_decay: {{type: log_float, low: 1.0e-5, high: 1.0e-3}}
          loss.smoothing:     {{type: float, low: 0.0, high: 0.2}}
        """))
    add("A search space is YAML: a base recipe, fixed overrides, and typed ranges over any config key "
        "(`float`, `log_float`, `int`, `log_int`, `categorical`). `paperzoo tune SPACE` takes a path or the name "
        "of a space in `./configs/tune/` or shipped with paperzoo, from any directory, as `paperzoo train` finds "
        "recipes: `paperzoo tune fashion_mnist --n-trials 20` runs `configs/tune/fashion_mnist.yaml`. "
        "`--set KEY=VALUE` overrides the base recipe for every trial (after the space's `fixed`; a searched key "
        "is refused). TPE proposes, the median pruner stops trials behind the median at the same epoch, and "
        "trials select on a validation split held out from the training set (`data.val_fraction` 0.1 unless "
        "set; 0 is refused, so the test set stays untouched).\n")
    add("Everything of a study lands in `<--out-dir>/tune-<study>/` (default `runs/tune-<space name>/`), said "
        "before the first trial: the trial runs `trial_0000/`, `trial_0001/`, ... (ordinary run directories), "
        "the SQLite database `study.db`, `trials.csv`, `best_config.yaml` (ready to train) and the two plots. "
        "`--storage` takes any database URL; several workers may share one study, and re-running resumes it "
        "(with the same base recipe and `--set`; another needs another `--study`).\n")
    add("```yaml\n" + space.read_text().replace(str(DOCS), "docs") + "```\n")
    shutil.rmtree(WORK / "tune-demo", ignore_errors=True)
    cmd = f"paperzoo tune {space} --study demo --n-trials 6 --startup-trials 3 --seed 0 --out-dir {WORK}"
    add(block(cmd.replace(str(DOCS), "docs"), run(cmd).replace(str(DOCS), "docs")))
    for name in ("optimization_history", "param_importances"):
        src = WORK / "tune-demo" / f"{name}.png"
        if src.exists():
            shutil.copy(src, IMG / f"tune_{name}.png")
            add(f"![{name}]({rel(IMG / f'tune_{name}.png')})\n")
    return s


def tune_ray_section(space: Path) -> list[str]:
    """The Ray Tune backend of `paperzoo tune`: the tune section's space, 4 trials, 2 at a time (needs Ray)."""
    s: list[str] = []
    add = s.append
    add("### `--backend ray`: the same search with Ray Tune\n")
    add("`pip install 'paperzoo[ray]'` (Ray Tune and Optuna; not in `[all]`: about 500 MB with pyarrow and pandas, "
        "and the Optuna backend needs none of it). `--backend ray` runs the same search space with the same trials "
        "(config, run directory `trial_NNNN/`, `trials.csv`, `best_config.yaml`, history plot; no importance "
        "plot). Ray runs `--max-concurrent` trials at a time (default 2), each in its own worker process with "
        "`--cpus-per-trial` CPUs (default 1) and `--gpus-per-trial` GPUs (default 0), on a Ray started for the "
        "study (that many CPUs, no dashboard, a temporary directory in /tmp) or, with `--address` (e.g. `auto` "
        "after `ray start --head`), on an existing cluster; there `--out-dir` must be on a file system every node "
        "sees and paperzoo installed on every node, and a cluster with Ray's token authentication (the default "
        "of `ray start` since Ray 2.59) wants `RAY_AUTH_MODE=token` in the environment and its token in "
        "`~/.ray/auth_token` or `RAY_AUTH_TOKEN`. `--n-trials` and `--timeout` count for the whole study.\n")
    add("ASHA (Li et al., arXiv 1810.05934) stops trials early: each trial reports the metric after every "
        "evaluation, and at 1, 3, 9, ... evaluations (all before the longest trials' last) a trial goes on only "
        "if it is in the top third of the trials that reached that point before it. `--search random` "
        "(default) samples the space; `grid` runs every combination (categorical and integer parameters, floats "
        "with a `step`; no `--n-trials`); `optuna` puts Optuna's TPE inside Ray (`--startup-trials` random "
        "trials first). In the table, `pruned` is a trial stopped early (by ASHA, or by `--timeout`), `waiting` "
        "one that never started. Running the same command again resumes an interrupted study: finished trials "
        "stay, the others continue from their run directory's newest checkpoint; a finished study is reported "
        "again (another `--study` starts a new one).\n")
    shutil.rmtree(WORK / "tune-demo-ray", ignore_errors=True)
    cmd = (f"paperzoo tune {space} --backend ray --study demo-ray --n-trials 4 --seed 0 --set train.eval_every=1 "
           f"--out-dir {WORK}")  # an evaluation per epoch, so that ASHA has a rung before the last
    shown = "\n".join(line for line in run(cmd).splitlines() if "WARNING" not in line)  # Ray's token notice
    add(block(cmd.replace(str(DOCS), "docs"), shown.replace(str(DOCS), "docs")))
    return s


def compare_section() -> list[str]:
    """The `paperzoo compare` section: three small models for the same 10-second budget on generated images."""
    s: list[str] = []
    add = s.append
    add("## `paperzoo compare`: models for the same time budget\n")
    add("Each MODEL trains, one after the other, for the same training-time budget (`train.time_budget_s`: a "
        "throughput probe sizes each one-cycle schedule to end inside it; evaluation is not counted), from "
        "`--recipe` (a recipe name or path) or, with `--recipe auto` (the default), from each family's own "
        "Fashion-MNIST recipe. The table (best accuracy first) is printed and written with the rows and curves "
        "as `OUT_DIR/compare.{md,json}`, next to a picture of accuracy against parameters, training img/s and "
        "training time; the runs are ordinary run directories (`OUT_DIR/MODEL`). Here on the generated "
        "`synthetic` dataset; arguments of the recipe's own model that another family does not take are "
        "dropped with a line each (docs/training.md, \"Every family\").\n")
    out = WORK / "compare"
    shutil.rmtree(out, ignore_errors=True)
    cmd = (f"paperzoo compare resnet20 shufflenet_v2_x0_5 mobilenetv2_050 --recipe fashion_mnist_default "
           f"--budget 10s --set data.dataset=synthetic data.synthetic_size=2048 data.image_size=16 "
           f"train.eval_every=100 run.progress=off run.tensorboard=false --out-dir {out}")
    add(block(cmd.replace(str(DOCS), "docs"), run(cmd)))
    shutil.copy(out / "compare.png", IMG / "compare.png")
    add(f"![compare]({rel(IMG / 'compare.png')})\n")
    return s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", help="a real image-classification run directory for curves/confusion")
    ap.add_argument("--translation", help="a trained translation run (paperzoo translate train translate_en_ko) "
                                          "for the encoder-decoder attention picture")
    args = ap.parse_args()
    IMG.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    tiny = tiny_runs()  # the tune example searches over these (seconds per trial)
    runs = [Path(args.run)] if args.run else tiny
    s: list[str] = []
    add = s.append

    add("# Tools: models, bench, viz, compare, tune\n")
    add("<!-- Generated by `python docs/gen_tools_doc.py`: every output below is real; re-run after changes. -->\n")

    add("## `paperzoo models`: the registry\n")
    add("Name, family, paper, parameters, and GFLOPs (multiply-adds x 2) at the default input size. `--check` "
        "compares our parameter counts with the reference implementations and exits 1 on any difference.\n")
    cmd = "paperzoo models 'swin*'"
    add(block(cmd, run(cmd)))
    cmd = "paperzoo models --check"
    add(block(cmd, run(cmd), max_lines=80))

    add("## `paperzoo bench`: speed\n")
    add("Inference and training-step throughput, achieved GFLOP/s against the machine's measured dense-matmul "
        "GFLOP/s (utilization), and the memory a training step holds. Options: `--batch`, `--size`, "
        "`--small-input`, `--num-classes`, `--precision fp32|bf16`, `--channels-last`, `--compile`, `--device`, "
        "`--threads`, `--format table|md|csv|json`, `--plot`. Parameters are counted as `paperzoo models` counts "
        "them (1000 classes) unless the options change the network, and then a note says so; a row whose timed "
        "repeats spread more than 25 % of their median gets a warning: re-run it on a quiet machine with more "
        "`--repeats`. The measured tables are in BENCHMARKS.md.\n")
    cmd = (f"paperzoo bench resnet20 mobilenetv2_100 vit_tiny_patch4_32 --small-input --batch 16 --repeats 3 "
           f"--warmup 1 --plot {IMG / 'bench.png'}")
    add(block(cmd.replace(str(IMG), "docs/img/tools"), run(cmd)))
    add(f"![throughput vs FLOPs]({rel(IMG / 'bench.png')})\n")

    add("## `paperzoo viz`: pictures of the mechanisms\n")
    add("### Swin's cyclic shift and its masks\n")
    add("The map before and after `torch.roll`, and each window's attention mask (white: may attend), drawn from "
        "`paperzoo.models.swin.swin_shift_mask`, the function the model adds to its scores. With an 8x8 map, "
        "window 4 and shift 2 the four windows hold 1, 2, 2 and 4 regions: the seed note's Q·Kᵀ patterns.\n")
    cmd = f"paperzoo viz swin-mask --height 8 --width 8 --window 4 --shift 2 -o {IMG / 'swin_mask.png'}"
    add(block(cmd.replace(str(IMG), "docs/img/tools"), run(cmd)))
    add(f"![swin mask]({rel(IMG / 'swin_mask.png')})\n")

    add("### Positional encoding\n")
    cmd = f"paperzoo viz posenc --positions 100 --dim 512 -o {IMG / 'posenc.png'}"
    add(block(cmd.replace(str(IMG), "docs/img/tools"), run(cmd)))
    add(f"![positional encoding]({rel(IMG / 'posenc.png')})\n")

    add("### Attention maps and rollout (ViT / Swin)\n")
    add("Per-head [CLS] attention of one layer and attention rollout over all layers (Abnar & Zuidema 2020). "
        "Given a checkpoint and an image it shows what a trained model looks at; here, a model name gives "
        "random weights (shapes only).\n")
    cmd = f"paperzoo viz attention vit_tiny_patch4_32 --size 32 --layer -1 --max-heads 3 -o {IMG / 'attention.png'}"
    add(block(cmd.replace(str(IMG), "docs/img/tools"), run(cmd)))
    add(f"![attention]({rel(IMG / 'attention.png')})\n")

    if args.translation:
        add("### Encoder-decoder attention of a translation model\n")
        add("For a translation checkpoint and a sentence: which source tokens each output token read (decoder "
            "layer, mean over heads and per head), after the model's own translation. Korean labels need a font "
            "with Hangul (matplotlib's DejaVu Sans has none): the picture uses the first installed font that "
            "covers every label (here Debian's fonts-nanum) and warns with what to install when none does.\n")
        cmd = (f"paperzoo viz attention {args.translation} --sentence 'Thursday, August 12, 2021' --layer -1 "
               f"--max-heads 2 -o {IMG / 'translation_attention.png'}")
        add(block(cmd.replace(str(IMG), "docs/img/tools"), run(cmd)))
        add(f"![translation attention]({rel(IMG / 'translation_attention.png')})\n")

    add("### Feature maps and SE channel weights\n")
    cmd = f"paperzoo viz features seresnet50 --se --size 64 -o {IMG / 'se.png'}"
    add(block(cmd.replace(str(IMG), "docs/img/tools"), run(cmd)))
    add(f"![SE weights]({rel(IMG / 'se.png')})\n")

    add("### Learning curves and confusion matrix\n")
    shown = " ".join(str(r) for r in runs)
    cmd = f"paperzoo viz curves {shown} --x step -o {IMG / 'curves.png'}"
    add(block(cmd.replace(str(IMG), "docs/img/tools").replace(str(DOCS), "docs"), run(cmd)))
    add(f"![curves]({rel(IMG / 'curves.png')})\n")
    ev = WORK / "eval"
    run(f"paperzoo eval {runs[0]} -o {ev}")
    cmd = f"paperzoo viz confusion {ev} -o {IMG / 'confusion.png'}"
    add(block(cmd.replace(str(IMG), "docs/img/tools").replace(str(DOCS), "docs"), run(cmd)))
    add(f"![confusion]({rel(IMG / 'confusion.png')})\n")

    s += compare_section()
    s += tune_section(tiny[0])
    if importlib.util.find_spec("ray") is not None:
        s += tune_ray_section(WORK / "space.yaml")

    (DOCS / "tools.md").write_text("\n".join(s))
    print("wrote docs/tools.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

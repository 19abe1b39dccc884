"""Time inference and a training step of registered image models and record the table with its command.

    python benchmarks/bench_models.py                          # small-input suite, 32x32, batch 64
    python benchmarks/bench_models.py resnet18 'mobilenet*' --precision bf16 --channels-last
    python benchmarks/bench_models.py --suite default --batch 8  # reference configs at their default size

Writes benchmarks/results/<name>.md (header with machine, threads and measured matmul GFLOP/s, the exact
command, and the table) and prints the same table. Every option of `paperzoo bench` passes through.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

from paperzoo.cli import main as cli_main
from paperzoo.commands.bench import COLUMNS
from paperzoo.tools.tables import render

SUITES = {
    # one small-input config per family, the neighbours the transformers are compared with (issue 3)
    "small": ["resnet20", "resnet18", "seresnet50", "densenet121", "mobilenetv2_100", "mobilenetv3_large_100",
              "shufflenet_v2_x1_0", "efficientnet_b0", "vit_tiny_patch4_32", "swin_tiny_patch2_window4_32"],
    "default": ["resnet50", "mobilenetv3_large_100", "efficientnet_b0", "vit_base_patch16_224",
                "swin_tiny_patch4_window7_224"],
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=sorted(SUITES), default="small")
    p.add_argument("--out", help="result file (default benchmarks/results/models_<suite>[_<dtype>].md)")
    args, rest = p.parse_known_args()
    first_opt = next((i for i, a in enumerate(rest) if a.startswith("-")), len(rest))
    models, opts = rest[:first_opt], rest[first_opt:]  # leading names/globs, then `paperzoo bench` options
    if not models:
        from paperzoo import list_models

        models = [m for m in SUITES[args.suite] if m in list_models()]
    if args.suite == "small" and "--small-input" not in opts:
        opts = ["--small-input", *opts]
    if args.suite == "small" and "--num-classes" not in opts:  # 10-way heads, as the Fashion-MNIST/CIFAR nets
        opts = ["--num-classes", "10", *opts]
    if "--batch" not in opts:
        opts = ["--batch", "64" if args.suite == "small" else "8", *opts]
    tag = args.suite + ("_" + opts[opts.index("--precision") + 1] if "--precision" in opts else "")
    out = Path(args.out or Path(__file__).parent / "results" / f"models_{tag}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = ["bench", *models, *opts, "--format", "json", "--out", str(out.with_suffix(".json"))]
    rc = cli_main(argv)
    if rc != 0:
        return rc
    rows = json.loads(out.with_suffix(".json").read_text())
    command = "python benchmarks/bench_models.py " + shlex.join(sys.argv[1:])
    text = [f"Command: `{command.strip()}` (equivalently `paperzoo {shlex.join(argv[:-4])}`)", "",
            render(rows, [c for c in COLUMNS if any(r.get(c) is not None for r in rows)], "md"), ""]
    text += transformer_vs_cnn(rows)
    out.write_text("\n".join(text) + "\n")
    print("\n".join(transformer_vs_cnn(rows)))
    print(f"recorded in {out}", file=sys.stderr)
    return 0


def transformer_vs_cnn(rows: list[dict]) -> list[str]:
    """Issue 3's check: do the attention models reach the achieved GFLOP/s of their CNN neighbours?"""
    lines = []
    for key in ("train_gflop_s", "infer_gflop_s"):
        cnn = [r[key] for r in rows if r.get(key) and not r["name"].startswith(("vit", "swin"))]
        if not cnn:
            continue
        median = statistics.median(cnn)
        for r in rows:
            if r["name"].startswith(("vit", "swin")) and r.get(key):
                verdict = "reaches" if r[key] >= median else "does NOT reach"
                lines.append(f"- {r['name']}: {key} {r[key]:.1f} vs CNN median {median:.1f} "
                             f"({r[key] / median:.2f}x): {verdict} its CNN neighbours")
    return lines


if __name__ == "__main__":
    sys.exit(main())

"""Time inference and a training step of registered image models and record the table with its command.

    python benchmarks/bench_models.py                          # small-input suite, 32x32, batch 64
    python benchmarks/bench_models.py resnet18 'mobilenet*' --dtype bf16 --channels-last
    python benchmarks/bench_models.py --suite default --batch 8  # reference configs at their default size

Writes benchmarks/results/<name>.md (header with machine, threads and measured matmul GFLOP/s, the exact
command, and the table) and prints the same table. Every option of `paperzoo bench` passes through.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from paperzoo.cli import main as cli_main

SUITES = {
    # one small-input config per family, the neighbours the transformers are compared with (issue 3)
    "small": ["resnet18", "seresnet50", "densenet121", "mobilenetv2_100", "mobilenetv3_large_100",
              "shufflenet_v2_x1_0", "efficientnet_b0", "vit_tiny_patch4_32", "swin_tiny_patch2_32"],
    "default": ["resnet50", "mobilenetv3_large_100", "efficientnet_b0", "vit_base_patch16_224",
                "swin_tiny_patch4_window7_224"],
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=sorted(SUITES), default="small")
    p.add_argument("--out", help="result file (default benchmarks/results/models_<suite>[_<dtype>].md)")
    args, rest = p.parse_known_args()
    models = [a for a in rest if not a.startswith("-")] if rest and not rest[0].startswith("-") else []
    opts = rest[len(models):]
    if not models:
        from paperzoo import list_models

        models = [m for m in SUITES[args.suite] if m in list_models()]
    if args.suite == "small" and "--small-input" not in opts:
        opts = ["--small-input", *opts]
    if "--batch" not in opts:
        opts = ["--batch", "64" if args.suite == "small" else "8", *opts]
    tag = args.suite + ("_" + opts[opts.index("--dtype") + 1] if "--dtype" in opts else "")
    out = Path(args.out or Path(__file__).parent / "results" / f"models_{tag}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = ["bench", *models, *opts, "--format", "md", "--output", str(out)]
    rc = cli_main(argv)
    if rc == 0:
        command = "python benchmarks/bench_models.py " + shlex.join(sys.argv[1:])
        text = out.read_text()
        out.write_text(f"Command: `{command.strip()}` (equivalently `paperzoo {shlex.join(argv[:-4])}`)\n\n{text}")
        print(f"recorded in {out}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())

"""``paperzoo translate train|eval|translate``: sequence-to-sequence translation on the shared trainer.

* ``train CONFIG [--set k=v ...] [--resume [RUN_DIR]]``: same run directories, checkpoints, resume, logging and
  progress as ``paperzoo train`` (exit status 0 done, 1 failed, 130 interrupted).
* ``eval RUN [--split test]``: decode a split (or ``--tsv`` / ``--src --ref`` files) and report exact match,
  sacreBLEU and chrF; writes the hypotheses and a JSON report.
* ``translate RUN [TEXT ...]``: translate the given sentences, or stdin / ``--input`` one per line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

EXIT_CODES = {"done": 0, "failed": 1, "interrupted": 130}


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML recipe path or name in configs/ (omit with --resume RUN_DIR)")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config values, e.g. --set optim.lr=3e-4 data.n_train=5000")
    p.add_argument("--resume", nargs="?", const="auto", metavar="RUN_DIR",
                   help="continue RUN_DIR from its newest checkpoint; without a value, the run directory that "
                        "CONFIG names (run.out_dir/run.name) if it exists, else start it")
    p.add_argument("--epochs", type=int, help="shortcut for --set train.epochs=...")
    p.add_argument("--out-dir", help="shortcut for --set run.out_dir=...")
    p.add_argument("--name", help="shortcut for --set run.name=...")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def add_decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--which", default="best", choices=("best", "final", "last"), help="checkpoint of a run dir")
    p.add_argument("--method", choices=("greedy", "beam", "sample"), help="decoding (default: the run's)")
    p.add_argument("--beam-size", type=int)
    p.add_argument("--length-penalty", type=float)
    p.add_argument("--max-len", type=int, help="new tokens at most")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=256)


def run_train(args: argparse.Namespace, kind: str) -> int:
    import yaml

    from paperzoo.text.config import load_text_config, text_config_to_dict
    from paperzoo.text.tasks import train_lm, train_translation

    from ._run_args import resolve_config_and_resume

    overrides = list(args.overrides)
    for flag, key in (("epochs", "train.epochs"), ("out_dir", "run.out_dir"), ("name", "run.name")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    config, resume = resolve_config_and_resume(args.config, args.resume, overrides, load_text_config)
    if args.print_config:
        cfg = load_text_config(config if config is not None else Path(resume) / "config.yaml", overrides)
        print(yaml.safe_dump(text_config_to_dict(cfg), sort_keys=False, allow_unicode=True), end="")
        return 0
    train = train_translation if kind == "translation" else train_lm
    result = train(config, overrides=overrides, resume=resume)
    print(f"run: {result.run_dir}")
    print(f"status: {result.status} (step {result.step}, {result.train_time_s:.0f} s of training)")
    for k, v in result.metrics.items():
        print(f"{k}: {v:.4f}")
    if result.status == "interrupted":  # the task names its command: paperzoo translate|lm train --resume RUN
        print(f"resume with: {result.resume_hint}", file=sys.stderr)
    return EXIT_CODES[result.status]


def _decode_overrides(args: argparse.Namespace, meta: dict[str, Any]) -> dict[str, Any]:
    from paperzoo.text.config import DecodeConfig
    from paperzoo.text.tasks import decode_kwargs

    kw = decode_kwargs(DecodeConfig(**meta.get("decode", {})))
    for flag in ("method", "beam_size", "length_penalty", "max_len"):
        if getattr(args, flag) is not None:
            kw[flag] = getattr(args, flag)
    return kw


def _load(args: argparse.Namespace) -> Any:
    from paperzoo.text.tasks import load_text_checkpoint

    ck = load_text_checkpoint(args.run, args.which, device=args.device)
    if ck.task != "translation":
        raise ValueError(f"{ck.path} is a {ck.task} checkpoint; use `paperzoo lm`")
    return ck


def run_eval(args: argparse.Namespace) -> int:
    from paperzoo.text.config import text_config_from_dict
    from paperzoo.text.data import read_parallel
    from paperzoo.text.metrics import translation_metrics
    from paperzoo.text.tasks import load_translation_pairs, translate

    ck = _load(args)
    if args.tsv:
        pairs, name = read_parallel(args.tsv), Path(args.tsv).stem
    elif args.src or args.ref:
        if not (args.src and args.ref):
            raise ValueError("give both --src and --ref")
        pairs, name = read_parallel(src=args.src, tgt=args.ref), Path(args.src).stem
    else:
        cfg = text_config_from_dict({"data": ck.meta["data"]})
        splits = load_translation_pairs(cfg)
        if args.split not in splits:
            raise ValueError(f"the run's data has no {args.split!r} split (has {', '.join(splits)}); "
                             "pass --tsv or --src/--ref")
        pairs, name = splits[args.split], args.split
    if args.limit:
        pairs = pairs[: args.limit]
    kw = _decode_overrides(args, ck.meta)
    t0 = time.perf_counter()
    hyps = translate(ck.model, [s for s, _ in pairs], ck.tokenizers["src"], ck.tokenizers["tgt"],
                     batch_size=args.batch_size, device=args.device, **kw)
    elapsed = time.perf_counter() - t0
    m = translation_metrics(hyps, [t for _, t in pairs])
    report = {"checkpoint": str(ck.path), "split": name, "sentences": len(pairs), "decode": kw,
              "exact_match": m["exact_match"], "bleu": m["bleu"], "chrf": m["chrf"], "decode_s": elapsed}
    out = Path(args.out) if args.out else ck.path.parent / f"eval_{name}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    with open(out / "hypotheses.tsv", "w", encoding="utf-8") as f:
        for (s, t), h in zip(pairs, hyps):
            f.write(f"{s}\t{t}\t{h}\n")
    print(f"{name}: {len(pairs)} sentences, exact match {100 * m['exact_match']:.2f} %, "
          f"BLEU {m['bleu']:.2f}, chrF {m['chrf']:.2f} ({elapsed:.1f} s decoding, {kw['method']})")
    wrong = [(s, t, h) for (s, t), h in zip(pairs, hyps) if h.strip() != t.strip()]
    for s, t, h in wrong[: args.show_errors]:
        print(f"  {s}\n    ref: {t}\n    hyp: {h}")
    print(f"wrote {out / 'report.json'} and {out / 'hypotheses.tsv'}")
    return 0


def run_translate(args: argparse.Namespace) -> int:
    from paperzoo.text.tasks import translate

    ck = _load(args)
    if args.text:
        lines = list(args.text)
    else:
        src = open(args.input, encoding="utf-8") if args.input else sys.stdin
        lines = [line.rstrip("\n") for line in src]
    kw = _decode_overrides(args, ck.meta)
    hyps = translate(ck.model, lines, ck.tokenizers["src"], ck.tokenizers["tgt"], batch_size=args.batch_size,
                     device=args.device, **kw)
    for s, h in zip(lines, hyps):
        print(f"{s}\t{h}" if args.show_source else h)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("translate", help="train / evaluate / use a translation model (e.g. the built-in en->ko task)",
                       description="Sequence-to-sequence translation on the shared trainer (docs/text.md).")
    s = p.add_subparsers(dest="translate_cmd", required=True, metavar="{train,eval,translate}")
    t = s.add_parser("train", help="train from a YAML recipe (e.g. translate_en_ko); resumable")
    add_train_args(t)
    t.set_defaults(func=lambda a: run_train(a, "translation"))
    e = s.add_parser("eval", help="exact match, sacreBLEU and chrF on a split or on files")
    e.add_argument("run", help="run directory, checkpoint directory or .safetensors file")
    e.add_argument("--split", default="test", help="split of the run's own data (builtin: train/val/test)")
    e.add_argument("--tsv", help="evaluate on a TSV file of source<TAB>reference lines instead")
    e.add_argument("--src", help="source file (with --ref) instead of a split")
    e.add_argument("--ref", help="reference file aligned with --src")
    e.add_argument("--limit", type=int, help="only the first N sentences")
    e.add_argument("--out", help="output directory (default: eval_<split> next to the checkpoint)")
    e.add_argument("--show-errors", type=int, default=5, help="print this many wrong translations")
    add_decode_args(e)
    e.set_defaults(func=run_eval)
    r = s.add_parser("translate", help="translate TEXT arguments, --input FILE or stdin (one sentence a line)")
    r.add_argument("run", help="run directory, checkpoint directory or .safetensors file")
    r.add_argument("text", nargs="*", help="sentences to translate")
    r.add_argument("--input", help="file with one sentence per line")
    r.add_argument("--show-source", action="store_true", help="print source<TAB>translation")
    add_decode_args(r)
    r.set_defaults(func=run_translate)

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

from ._shared import COMMON_SHORTCUTS, add_training_args, load_text_run, run_training


def add_decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--which", default="best", choices=("best", "final", "last"), help="checkpoint of a run dir")
    p.add_argument("--method", choices=("greedy", "beam", "sample"), help="decoding (default: the run's)")
    p.add_argument("--beam-size", type=int, help="beams of beam search (default: the run's)")
    p.add_argument("--length-penalty", type=float, help="beam search length penalty α (default: the run's)")
    p.add_argument("--max-len", type=int, help="new tokens at most")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch-size", type=int, default=256, help="sentences decoded together")


def run_train(args: argparse.Namespace) -> int:
    return run_training(args, task="translation")


def _decode_overrides(args: argparse.Namespace, meta: dict[str, Any]) -> dict[str, Any]:
    """The run's decoding settings with the flags given on top, validated as a ``decode`` config section."""
    from paperzoo.text.config import DecodeConfig
    from paperzoo.text.tasks import decode_kwargs

    given = {k: getattr(args, k) for k in ("method", "beam_size", "length_penalty", "max_len")}
    given = {k: v for k, v in given.items() if v is not None}
    return decode_kwargs(DecodeConfig(**{**meta.get("decode", {}), **given}))


def _load(args: argparse.Namespace) -> Any:
    return load_text_run(args, "translation", other_command="lm")


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


def _read_sentences(args: argparse.Namespace) -> list[str]:
    """TEXT arguments, else the lines of --input or stdin; refuses empty input rather than translate nothing."""
    if args.text:
        if not all(t.strip() for t in args.text):
            raise ValueError("empty TEXT argument: give a sentence to translate")
        return list(args.text)
    where = args.input or "stdin"
    try:
        if args.input:
            with open(args.input, encoding="utf-8") as f:
                lines = f.read().splitlines()
        else:
            lines = sys.stdin.read().splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{where} is not UTF-8 text: {e}") from None
    if not any(line.strip() for line in lines):
        raise ValueError(f"nothing to translate: {where} is empty (give TEXT, --input FILE or lines on stdin)")
    return lines


def run_translate(args: argparse.Namespace) -> int:
    from paperzoo.text.tasks import translate

    lines = _read_sentences(args)
    ck = _load(args)
    kw = _decode_overrides(args, ck.meta)
    todo = [i for i, line in enumerate(lines) if line.strip()]  # blank lines stay blank, keeping the alignment
    hyps = [""] * len(lines)
    for i, h in zip(todo, translate(ck.model, [lines[i] for i in todo], ck.tokenizers["src"], ck.tokenizers["tgt"],
                                    batch_size=args.batch_size, device=args.device, **kw)):
        hyps[i] = h
    for s, h in zip(lines, hyps):
        print(f"{s}\t{h}" if args.show_source else h)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("translate", help="train / evaluate / use a translation model (e.g. the built-in en->ko task)",
                       description="Sequence-to-sequence translation on the shared trainer (docs/text.md).")
    s = p.add_subparsers(dest="translate_cmd", required=True, metavar="{train,eval,translate}")
    t = s.add_parser("train", help="train from a YAML recipe (e.g. translate_en_ko); resumable")
    add_training_args(t, shortcuts=COMMON_SHORTCUTS, example="optim.lr=3e-4 data.n_train=5000")
    t.set_defaults(func=run_train)
    e = s.add_parser("eval", help="exact match, sacreBLEU and chrF on a split or on files")
    e.add_argument("run", help="run directory, checkpoint directory or .safetensors file")
    e.add_argument("--split", default="test", help="split of the run's own data (builtin: train/val/test)")
    e.add_argument("--tsv", help="evaluate on a TSV file of source<TAB>reference lines instead")
    e.add_argument("--src", help="source file (with --ref) instead of a split")
    e.add_argument("--ref", help="reference file aligned with --src")
    e.add_argument("--limit", type=int, help="only the first N sentences")
    e.add_argument("-o", "--out", help="output directory (default: eval_<split> next to the checkpoint)")
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

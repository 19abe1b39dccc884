"""``paperzoo lm train|sample|eval``: language modelling on any text file, on the shared trainer.

* ``train CONFIG [--set k=v ...] [--resume [RUN_DIR]]``: e.g. ``paperzoo lm train lm_fortunes`` (a character
  GPT on Debian's fortunes); run directories, checkpoints, resume, logging and progress as ``paperzoo train``.
* ``sample RUN [--prompt TEXT] [--num N] [--max-new N] [--temperature T] [--top-k K] [--top-p P] [--seed S]``.
* ``eval RUN``: validation loss and perplexity of a checkpoint on its run's held-out text.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from ._shared import COMMON_SHORTCUTS, add_training_args, load_text_run, run_training


def run_train(args: argparse.Namespace) -> int:
    return run_training(args, task="language_model")


def _load(args: argparse.Namespace) -> Any:
    return load_text_run(args, "language_model", other_command="translate")


def run_sample(args: argparse.Namespace) -> int:
    import torch

    from paperzoo.text.config import DecodeConfig

    for flag, value in (("--num", args.num), ("--max-new", args.max_new)):
        if value < 1:
            raise ValueError(f"{flag}: must be >= 1, got {value}")
    # checked as a decode section is: temperature >= 0 (0 = greedy), top-k >= 0, 0 < top-p <= 1
    DecodeConfig(method="sample", temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    ck = _load(args)
    tok = ck.tokenizers["lm"]
    prompt = args.prompt if args.prompt is not None else "\n"
    ids = tok.encode(prompt)
    if not ids:
        raise ValueError("the prompt encodes to no tokens; give at least one character")
    block = ck.meta["model"]["args"].get("block_size")
    if block and len(ids) > block:
        ids = ids[-block:]
    g = torch.Generator(device=args.device).manual_seed(args.seed)
    x = torch.tensor([ids] * args.num, dtype=torch.long, device=args.device)  # (N, T0)
    out = ck.model.generate(x, args.max_new, method="sample", temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, generator=g)
    val = ck.meta.get("metrics", {})
    if "val_ppl" in val:
        print(f"# {ck.path}: validation perplexity {val['val_ppl']:.3f} per {tok.kind} token "
              f"(loss {val['val_loss']:.4f} nats)")
    for i, row in enumerate(out.tolist()):
        # decode everything: an LM's output has no end-of-sentence to stop at
        text = prompt + tok.decode(row[len(ids):], stop_at_eos=False)
        print(f"--- sample {i + 1} ---\n{text}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from paperzoo.text.config import text_config_from_dict
    from paperzoo.text.tasks import LanguageModelTask

    ck = _load(args)
    data = dict(ck.meta["data"])
    if args.text:
        data["train"] = args.text
    cfg = text_config_from_dict({"data": data, "model": {"name": ck.meta["model"]["name"]}})
    task = LanguageModelTask(cfg, tokenizer=ck.tokenizers["lm"])
    m = task.evaluate(ck.model)
    print(f"{ck.path}: validation loss {m['val_loss']:.4f} nats/token, perplexity {m['val_ppl']:.3f}, "
          f"{m['val_tokens']:.0f} tokens ({m['val_loss'] / math.log(2):.3f} bits/token)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lm", help="train / sample / evaluate a language model on a text file (e.g. fortunes)",
                       description="Decoder-only language modelling on the shared trainer (docs/text.md).")
    s = p.add_subparsers(dest="lm_cmd", required=True, metavar="{train,sample,eval}")
    t = s.add_parser("train", help="train from a YAML recipe (e.g. lm_fortunes); resumable")
    add_training_args(t, shortcuts=COMMON_SHORTCUTS, example="optim.lr=3e-4 train.epochs=5")
    t.set_defaults(func=run_train)
    for name, helptext, func in (("sample", "sample text from a trained model", run_sample),
                                 ("eval", "validation loss and perplexity", run_eval)):
        q = s.add_parser(name, help=helptext)
        q.add_argument("run", help="run directory, checkpoint directory or .safetensors file")
        q.add_argument("--which", default="best", choices=("best", "final", "last"),
                       help="for a run directory: best validation, final weights or newest checkpoint")
        q.add_argument("--device", default="cpu", help="cpu or cuda")
        q.set_defaults(func=func)
        if name == "sample":
            q.add_argument("--prompt", help="text to continue (default: a newline)")
            q.add_argument("--num", type=int, default=3, help="number of samples")
            q.add_argument("--max-new", type=int, default=300, help="new tokens per sample")
            q.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (0 = greedy)")
            q.add_argument("--top-k", type=int, help="sample among the k most likely tokens (default: all)")
            q.add_argument("--top-p", type=float, help="nucleus sampling: the smallest set of tokens with this "
                                                       "probability mass (default: all)")
            q.add_argument("--seed", type=int, default=0, help="seed of the sampling")
        else:
            q.add_argument("--text", help="evaluate the tail of this file instead of the run's own corpus")

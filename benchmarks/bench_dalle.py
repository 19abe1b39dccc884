"""DALL-E on captioned Fashion-MNIST against issue 16's bars, from three trained runs and the default classifier.

    python benchmarks/bench_dalle.py --dalle runs/dalle --clip runs/dalle_clip [--vae runs/dalle_vae]

Measured (every number on Fashion-MNIST's test split unless said otherwise; the judge of "which class is this
image" is the default classifier, a ResNet-18 of 93.06 % test accuracy, run directory ``--classifier``):

1. **dVAE**: the mean squared error of the reconstructions decode(tokens(x)) on [0, 1], and the classifier's
   accuracy on the reconstructions beside its accuracy on the originals (bar: within 3 points).
2. **text -> image**: for every class prompt (``class_prompts``, e.g. "a sneaker"), ``--samples`` x ``--best-of``
   samples are drawn, in groups of ``--best-of``. *plain*: the share of all of them the classifier labels as the
   prompted class (bar: >= 85 %; also given for the first sample of each group alone, exactly ``--samples``
   images); *reranked*: the share among the ``--samples`` images CLIP scores highest in their group, i.e. best of
   ``--best-of`` (Sec. 2.5; bar: >= 92 %).
3. **Fréchet distance** between the classifier's penultimate features (the pooled 128-d vector before its last
   linear layer) of real test images and of the generated ones (plain samples of all prompts pooled): the
   formula of FID (Heusel et al. 2017, arXiv:1706.08500), **but not Inception-FID** — the features are those of
   our Fashion-MNIST classifier, so the numbers compare only with each other. For scale, the same distance from
   the test images to as many training images (the floor: two samples of the real distribution) and to the
   dVAE's reconstructions.
4. **attributes**: prompts naming a size and a brightness, the held-out combinations of ``HELD_OUT`` (never
   captioned together in training) beside the same classes with the other brightness; per prompt, the shares of
   ``--attr-samples`` samples whose class (classifier), size and brightness (measured from the pixels, as the
   captions were made) are the asked ones. Not a bar of the issue: a look at generalisation.
5. **image -> text**: the Transformer captions each test image (image first, greedy); ``caption_class`` reads the
   class the caption names; the share that names the image's true class (bar: >= 85 %).

Writes ``--json`` (default benchmarks/results/dalle.json), the same numbers as a Markdown table beside it
(dalle.md), and pictures into ``--img-dir`` (default docs/img/dalle):
``samples.png`` (one row of plain samples per prompt), ``samples_reranked.png`` (the CLIP picks),
``<class>.png`` (a 10 x 10 grid of a prompt's reranked samples), ``reconstructions.png``, ``tokens.png``
(``paperzoo viz tokens`` of a test sneaker).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, os.path.dirname(__file__))
from bench_nms import cpu_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CLASSIFIER = str(ROOT / "runs/resnet18-fashion_mnist-20261203-131751")  # the default recipe's run (93.06 %)
BARS = {"recon_acc_gap": 0.03, "text_to_image_acc": 0.85, "text_to_image_reranked_acc": 0.92,
        "caption_class_acc": 0.85}


def batched(fn: Callable[[Tensor], Tensor | tuple[Tensor, ...]], x: Tensor, batch: int) -> Tensor | tuple:
    """``fn`` over ``x`` in chunks of ``batch`` rows, the outputs concatenated (tuples element-wise)."""
    outs = [fn(x[i:i + batch]) for i in range(0, len(x), batch)]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts) for parts in zip(*outs))
    return torch.cat(outs)


class Judge:
    """The default classifier: labels and penultimate features of [0, 1] images (N, 1, 28, 28), float32."""

    def __init__(self, run: str | Path) -> None:
        from paperzoo.train.evaluate import load_checkpoint

        ck = load_checkpoint(run, which="final")
        self.model, self.classes = ck.model, ck.meta["classes"]
        norm = ck.meta["normalization"]
        self.mean = torch.tensor(norm["mean"]).view(1, -1, 1, 1)  # (1, C, 1, 1)
        self.std = torch.tensor(norm["std"]).view(1, -1, 1, 1)

    @torch.inference_mode()
    def __call__(self, x: Tensor, batch: int = 1000) -> tuple[Tensor, Tensor]:
        """(predicted labels (N,), features (N, D))."""
        def run(b: Tensor) -> tuple[Tensor, Tensor]:
            f = self.model.forward_features((b - self.mean) / self.std)
            return self.model.forward_head(f).argmax(1), self.model.forward_head(f, pre_logits=True)

        return batched(run, x.float(), batch)


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two feature sets (N, D), the Fréchet distance
    between the Gaussians fitted to them (Dowson & Landau 1982; the formula of FID, arXiv:1706.08500 Eq. 6)."""
    from scipy import linalg

    a64, b64 = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a64.mean(0), b64.mean(0)
    s_a, s_b = np.cov(a64, rowvar=False), np.cov(b64, rowvar=False)  # (D, D)
    root = linalg.sqrtm(s_a @ s_b)
    if not np.isfinite(root).all():  # near-singular product: offset both covariances, as the FID reference does
        eye = np.eye(len(s_a)) * 1e-6
        root = linalg.sqrtm((s_a + eye) @ (s_b + eye))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(root.real))


def bench_dvae(vae, judge: Judge, x: Tensor, y: Tensor, batch: int) -> tuple[dict, Tensor, Tensor]:
    """dVAE test MSE and the classifier on originals vs reconstructions; also returns the reconstructions and
    the originals' features."""
    with torch.inference_mode():
        recon = batched(lambda b: vae.decode(vae.tokens(b)), x, batch)  # (N, 1, 28, 28)
    pred_x, feat_x = judge(x)
    pred_r, feat_r = judge(recon)
    acc_x, acc_r = float((pred_x == y).float().mean()), float((pred_r == y).float().mean())
    out = {"test_mse": float((recon - x).pow(2).mean()), "classifier_acc_originals": acc_x,
           "classifier_acc_reconstructions": acc_r, "acc_gap": acc_x - acc_r,
           "frechet_test_vs_reconstructions": frechet_distance(feat_x, feat_r)}
    return out, recon, feat_x


def bench_text_to_image(args: argparse.Namespace, judge: Judge, prompts: list[str]) -> tuple[dict, dict]:
    """Per prompt: plain and best-of-K accuracy by the classifier; returns (results, pictures' tensors)."""
    from paperzoo.dalle import load_clip

    clip, clip_tok = load_clip(args.clip, which=args.which)
    n, k = args.samples, args.best_of
    rows, plain_all, picks_all, feats = {}, [], [], []
    for label, prompt in enumerate(prompts):
        t0 = time.perf_counter()
        images = sample_images(prompt, n * k, args, seed=args.seed + label)  # (n k, 1, 28, 28), groups of k
        scores = prompt_scores(clip, clip_tok, images, prompt)  # (n k,)
        best = scores.view(n, k).argmax(1) + torch.arange(n) * k  # (n,) the index of each group's best
        pred, feat = judge(images)
        hit = (pred == label).float()
        rows[prompt] = {"class": judge.classes[label], "plain_acc": float(hit.mean()),
                        "plain_acc_first_of_group": float(hit.view(n, k)[:, 0].mean()),
                        "reranked_acc": float(hit[best].mean()), "seconds": time.perf_counter() - t0}
        print(f"  {prompt!r:32} plain {rows[prompt]['plain_acc']:.3f}  best of {k} {rows[prompt]['reranked_acc']:.3f}"
              f"  ({rows[prompt]['seconds']:.0f} s)", flush=True)
        plain_all.append(images.view(n, k, *images.shape[1:])[:, 0])  # (n, 1, 28, 28)
        picks_all.append(images[best])
        feats.append(feat)
    summary = {"best_of": k, "per_prompt": rows,
               "plain_acc": float(np.mean([r["plain_acc"] for r in rows.values()])),
               "plain_acc_min": min(r["plain_acc"] for r in rows.values()),
               "reranked_acc": float(np.mean([r["reranked_acc"] for r in rows.values()])),
               "reranked_acc_min": min(r["reranked_acc"] for r in rows.values())}
    return summary, {"plain": plain_all, "picks": picks_all, "features": torch.cat(feats)}


def sample_images(prompt: str, n: int, args: argparse.Namespace, seed: int) -> Tensor:
    """``n`` images (n, 1, 28, 28) for ``prompt`` from the dalle run (decoded by the dVAE it was trained with);
    each prompt gets its own ``seed``, so that no two prompts share their random draws."""
    from paperzoo.dalle import generate

    return generate(args.dalle, prompt, n, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                    seed=seed, which=args.which, batch=args.batch)


def bench_attributes(args: argparse.Namespace, judge: Judge) -> dict:
    """Prompts with a size and a brightness: the held-out combinations (never captioned together in training)
    beside the same classes with the other brightness (seen). Per prompt, the share of ``--attr-samples`` plain
    samples the classifier labels as the class, and the shares whose measured size / brightness (``measure`` +
    ``quantise``, at the prompted class's thresholds) are the asked ones (chance: 1/3 and 1/2)."""
    from paperzoo.dalle import BRIGHTNESS, HELD_OUT, SIZES, make_caption, measure, quantise

    rows = []
    for i, (size, bright, label) in enumerate(HELD_OUT):
        other = BRIGHTNESS[1 - BRIGHTNESS.index(bright)]
        for held_out, b in ((True, bright), (False, other)):
            prompt = make_caption(label, {"size": size, "brightness": b}, args.lang, 0)
            images = sample_images(prompt, args.attr_samples, args, seed=args.seed + 100 + 2 * i + held_out)
            q = quantise(measure(images), torch.full((len(images),), label))
            rows.append({"prompt": prompt, "held_out": held_out, "class": judge.classes[label],
                         "class_acc": float((judge(images)[0] == label).float().mean()),
                         "size_acc": float((q["size"] == SIZES.index(size)).float().mean()),
                         "brightness_acc": float((q["brightness"] == BRIGHTNESS.index(b)).float().mean())})
            print(f"  {prompt!r:36} {'held out' if held_out else 'seen    '} class {rows[-1]['class_acc']:.2f} "
                  f"size {rows[-1]['size_acc']:.2f} brightness {rows[-1]['brightness_acc']:.2f}", flush=True)
    mean = {f"{k}_{kind}": float(np.mean([r[k] for r in rows if r["held_out"] == (kind == "held_out")]))
            for k in ("class_acc", "size_acc", "brightness_acc") for kind in ("held_out", "seen")}
    return {"per_prompt": rows, **mean}


def prompt_scores(clip, tokenizer, images: Tensor, prompt: str) -> Tensor:
    """CLIP's cosine similarity (N,) of each image (N, 1, 28, 28) with the prompt (what ``rerank`` sorts)."""
    from paperzoo.dalle import clip_scores, tokenize_captions

    return clip_scores(clip, images, tokenize_captions(tokenizer, [prompt], clip.cfg.context_length))


def bench_captions(args: argparse.Namespace, x: Tensor, y: Tensor) -> dict:
    """Image -> text: the share of captions that name the image's class."""
    from paperzoo.dalle import caption_class, caption_images

    n = min(args.n_caption, len(x))
    t0 = time.perf_counter()
    captions = caption_images(args.dalle, x[:n], which=args.which)
    named = torch.tensor([-1 if (c := caption_class(t)) is None else c for t in captions])
    return {"caption_class_acc": float((named == y[:n]).float().mean()), "n_images": n,
            "no_class_named": int((named < 0).sum()), "examples": captions[:10],
            "seconds": time.perf_counter() - t0}


def write_pictures(img_dir: Path, prompts: list[str], classes: list[str], t2i: dict, ti: dict, vae, x: Tensor,
                   recon: Tensor, y: Tensor) -> list[str]:
    from paperzoo.viz.tokens import plot_prompt_grid, plot_tokens, save_image_grid

    paths = []
    rows = t2i["per_prompt"]
    label = [f"{rows[p]['plain_acc']:.0%} {rows[p]['class']}" for p in prompts]
    paths.append(plot_prompt_grid(prompts, [s[:12] for s in ti["plain"]], img_dir / "samples.png",
                                  title="DALL-E samples per prompt (plain; share the classifier agrees with)",
                                  labels=label))
    label = [f"{rows[p]['reranked_acc']:.0%} {rows[p]['class']}" for p in prompts]
    paths.append(plot_prompt_grid(prompts, [s[:12] for s in ti["picks"]], img_dir / "samples_reranked.png",
                                  title=f"best of {t2i['best_of']} by CLIP", labels=label))
    for cls, picks in zip(classes, ti["picks"]):
        paths.append(save_image_grid(picks[:100], img_dir / f"{cls.split('/')[0].lower().replace(' ', '_')}.png",
                                     nrow=10, scale=2))
    first = torch.tensor([int((y == c).nonzero()[0]) for c in range(10)])  # one test image per class
    paths.append(plot_prompt_grid(["originals", "reconstructions"], [x[first], recon[first]],
                                  img_dir / "reconstructions.png", title="dVAE: test images and decode(tokens(x))"))
    h, w = vae.grid
    paths.append(plot_tokens(vae, x[first[7]], img_dir / "tokens.png", title=f"a test sneaker -> {h}x{w} tokens"))
    return [str(p) for p in paths]


def training_seconds(vae_file: str, args: argparse.Namespace) -> dict[str, float | None]:
    """Each stage's training time (the trainer's ``train_time_s``, evaluations excluded) from its metrics.jsonl;
    the dVAE's run directory is the one holding the weights file (RUN/best/model.safetensors)."""
    from paperzoo.train.logger import read_metrics

    def seconds(run: Path) -> float | None:
        path = run / "metrics.jsonl"
        times = [r["train_time_s"] for r in read_metrics(path) if "train_time_s" in r] if path.is_file() else []
        return max(times) if times else None

    out = {"vae": seconds(Path(vae_file).parent.parent), "clip": seconds(Path(args.clip)),
           "dalle": seconds(Path(args.dalle))}
    out["vae_plus_dalle"] = out["vae"] + out["dalle"] if out["vae"] is not None and out["dalle"] is not None else None
    return out


def load_judged_dvae(args: argparse.Namespace):
    """The dVAE whose reconstructions are scored: by default the one the dalle run was trained on and decodes its
    samples with (its metadata names the weights file); ``--vae RUN`` scores another, with a warning if it is."""
    from paperzoo.dalle import load_dalle, load_dvae
    from paperzoo.train import checkpoint as ckpt

    own = Path(load_dalle(args.dalle, which=args.which)[2]["vae"]["weights"])
    if args.vae is None:
        return load_dvae(own), str(own)
    other = ckpt.find_weights(args.vae, args.which)
    if not own.is_file() or other.read_bytes() != own.read_bytes():
        print(f"warning: {args.dalle} was trained on the dVAE {own}, not on {other}: the dVAE numbers are "
              "--vae's, the samples are decoded by the dalle run's own dVAE", flush=True)
    return load_dvae(other), str(other)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vae", help="dalle_vae run directory to score (default: the dVAE the dalle run was trained on)")
    p.add_argument("--clip", required=True, help="dalle_clip run directory")
    p.add_argument("--dalle", required=True, help="dalle run directory")
    p.add_argument("--classifier", default=DEFAULT_CLASSIFIER, help="Fashion-MNIST classifier run (the judge)")
    p.add_argument("--which", default="final", choices=["best", "final", "last"],
                   help="checkpoint of the three runs (final: 'best' was chosen on the test set)")
    p.add_argument("--lang", default="en", choices=["en", "ko"], help="language of the class prompts")
    p.add_argument("--samples", type=int, default=100, help="samples per prompt")
    p.add_argument("--best-of", type=int, default=8, help="candidates per reranked sample")
    p.add_argument("--attr-samples", type=int, default=100, help="samples per attribute prompt (0: skip them)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-test", type=int, default=10000, help="test images for the dVAE and Fréchet numbers")
    p.add_argument("--n-caption", type=int, default=5000, help="test images captioned (the first ones)")
    p.add_argument("--batch", type=int, default=800, help="images per batch of sampling")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=str(ROOT / "benchmarks/results/dalle.json"))
    p.add_argument("--img-dir", default=str(ROOT / "docs/img/dalle"))
    return p.parse_args()


def main() -> None:
    from paperzoo.dalle import class_prompts
    from paperzoo.data.datasets import load_image_dataset

    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    header = f"{cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    print(f"`python {shlex.join(sys.argv)}`\n{header}", flush=True)
    start = time.perf_counter()
    test = load_image_dataset("fashion_mnist", "test")
    x, y = test.images[: args.n_test].float() / 255.0, test.labels[: args.n_test]  # (N, 1, 28, 28) in [0, 1]
    judge, (vae, vae_file) = Judge(args.classifier), load_judged_dvae(args)
    prompts = class_prompts(args.lang)

    dvae, recon, feat_x = bench_dvae(vae, judge, x, y, args.batch)
    print(f"dVAE: test MSE {dvae['test_mse']:.5f}; classifier {dvae['classifier_acc_originals']:.4f} on originals, "
          f"{dvae['classifier_acc_reconstructions']:.4f} on reconstructions", flush=True)
    t2i, tensors = bench_text_to_image(args, judge, prompts)
    train = load_image_dataset("fashion_mnist", "train").images[: len(tensors["features"])].float() / 255.0
    frechet = {"test_vs_generated": frechet_distance(feat_x, tensors["features"]),
               "test_vs_train_images": frechet_distance(feat_x, judge(train)[1]),
               "test_vs_reconstructions": dvae.pop("frechet_test_vs_reconstructions"),
               "n_generated": len(tensors["features"]), "n_test": len(feat_x),
               "features": "penultimate layer of the default Fashion-MNIST classifier (NOT Inception-FID)"}
    print(f"text -> image: plain {t2i['plain_acc']:.3f}, best of {args.best_of} {t2i['reranked_acc']:.3f}; "
          f"Fréchet distance (classifier features, not Inception-FID) {frechet['test_vs_generated']:.3f} "
          f"(train images {frechet['test_vs_train_images']:.3f})", flush=True)
    attributes = bench_attributes(args, judge) if args.attr_samples else {}
    captions = bench_captions(args, x, y)
    print(f"image -> text: caption class accuracy {captions['caption_class_acc']:.4f} on {captions['n_images']} "
          f"test images", flush=True)

    pictures = write_pictures(Path(args.img_dir), prompts, judge.classes, t2i, tensors, vae, x, recon, y)
    results = {"command": f"python {shlex.join(sys.argv)}", "machine": header,
               "runs": {"vae": vae_file, "clip": args.clip, "dalle": args.dalle, "classifier": args.classifier,
                        "which": args.which},
               "settings": {k: getattr(args, k) for k in ("lang", "samples", "best_of", "attr_samples", "temperature",
                                                           "top_k", "top_p", "seed", "n_test", "n_caption")},
               "dvae": dvae, "text_to_image": t2i, "frechet": frechet, "attributes": attributes,
               "image_to_text": captions,
               "training_seconds": training_seconds(vae_file, args),
               "bars": check_bars(dvae, t2i, captions), "pictures": pictures,
               "seconds": time.perf_counter() - start}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    table = markdown(results)
    Path(args.json).with_suffix(".md").write_text(table)
    print(table + json.dumps(results["bars"], indent=2))
    print(f"wrote {args.json}, {Path(args.json).with_suffix('.md')} and {len(pictures)} pictures in "
          f"{results['seconds']:.0f} s")


def markdown(r: dict) -> str:
    """The results as the table of docs/models/dalle.md, plus one row per prompt."""
    d, t, f, c = r["dvae"], r["text_to_image"], r["frechet"], r["image_to_text"]
    k, pct = r["settings"]["best_of"], lambda v: f"{100 * v:.1f} %"
    lines = [f"`{r['command']}`  ", f"{r['machine']}, {r['seconds']:.0f} s", "",
             "| what | bar (issue 16) | measured |", "|---|---|---|",
             f"| dVAE test MSE | reported | {d['test_mse']:.5f} |",
             f"| classifier accuracy: originals / reconstructions | within 3 points | "
             f"{pct(d['classifier_acc_originals'])} / {pct(d['classifier_acc_reconstructions'])} |",
             f"| text -> image, plain (mean, worst prompt) | >= 85 % | {pct(t['plain_acc'])}, "
             f"{pct(t['plain_acc_min'])} |",
             f"| text -> image, CLIP best of {k} (mean, worst prompt) | >= 92 % | {pct(t['reranked_acc'])}, "
             f"{pct(t['reranked_acc_min'])} |",
             f"| Fréchet distance in the classifier's features (not Inception-FID) | reported | "
             f"{f['test_vs_generated']:.2f} (test vs train images {f['test_vs_train_images']:.2f}, "
             f"vs reconstructions {f['test_vs_reconstructions']:.2f}) |",
             f"| image -> text: caption names the class ({c['n_images']} test images) | >= 85 % | "
             f"{pct(c['caption_class_acc'])} |"]
    a = r.get("attributes")
    if a:
        lines.append("| attribute prompts, held out (seen): class / size / brightness | - | "
                     + " / ".join(f"{pct(a[f'{m}_held_out'])} ({pct(a[f'{m}_seen'])})"
                                  for m in ("class_acc", "size_acc", "brightness_acc")) + " |")
    sec = r["training_seconds"]
    if sec["vae_plus_dalle"] is not None:
        lines.append(f"| training time dVAE + Transformer (CLIP) | <= 45 min | {sec['vae_plus_dalle'] / 60:.1f} min "
                     f"({(sec['clip'] or 0) / 60:.1f} min) |")
    lines += ["", f"| prompt | class | plain | best of {k} |", "|---|---|---:|---:|"]
    lines += [f"| {p} | {row['class']} | {pct(row['plain_acc'])} | {pct(row['reranked_acc'])} |"
              for p, row in t["per_prompt"].items()]
    return "\n".join(lines) + "\n"


def check_bars(dvae: dict, t2i: dict, captions: dict) -> dict[str, bool]:
    """Issue 16's bars, each passed or not; text -> image both over all prompts pooled and for every prompt."""
    plain, reranked, caption = BARS["text_to_image_acc"], BARS["text_to_image_reranked_acc"], BARS["caption_class_acc"]
    return {"dvae_recon_acc_within_3_points": dvae["acc_gap"] <= BARS["recon_acc_gap"],
            f"text_to_image_mean_>=_{plain}": t2i["plain_acc"] >= plain,
            f"text_to_image_every_prompt_>=_{plain}": t2i["plain_acc_min"] >= plain,
            f"text_to_image_reranked_mean_>=_{reranked}": t2i["reranked_acc"] >= reranked,
            f"text_to_image_reranked_every_prompt_>=_{reranked}": t2i["reranked_acc_min"] >= reranked,
            f"caption_class_acc_>=_{caption}": captions["caption_class_acc"] >= caption}


if __name__ == "__main__":
    main()

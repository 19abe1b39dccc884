"""Translation and language-model metrics: sacreBLEU, chrF, exact match, perplexity.

BLEU (Papineni et al., 2002) and chrF (Popović, 2015) are computed by sacreBLEU (Post, arXiv:1804.08771) on
detokenized text, i.e. the decoded strings exactly as a user would read them, so the numbers are comparable with
published sacreBLEU scores and do not depend on our tokenizer. sacreBLEU's default "13a" tokenization splits
punctuation and spaces; it does not segment Korean words, which makes Korean BLEU a word(-eojeol)-level score
(stricter than a morpheme-level one). Pass ``tokenize="char"`` for a character-level BLEU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["bleu", "chrf", "exact_match", "perplexity", "translation_metrics"]


def _check(hyps: Sequence[str], refs: Sequence[str]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if not refs:
        raise ValueError("no sentences to score")


def bleu(hyps: Sequence[str], refs: Sequence[str], *, tokenize: str = "13a") -> float:
    """Corpus BLEU (0-100) of detokenized hypotheses against one reference each."""
    import sacrebleu

    _check(hyps, refs)
    return float(sacrebleu.corpus_bleu(list(hyps), [list(refs)], tokenize=tokenize).score)


def chrf(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus chrF (0-100, character n-gram F-score with β = 2)."""
    import sacrebleu

    _check(hyps, refs)
    return float(sacrebleu.corpus_chrf(list(hyps), [list(refs)]).score)


def exact_match(hyps: Sequence[str], refs: Sequence[str], *, strip: bool = True) -> float:
    """Fraction (0-1) of hypotheses equal to their reference (after stripping outer whitespace)."""
    _check(hyps, refs)
    norm = (lambda s: s.strip()) if strip else (lambda s: s)
    return sum(norm(h) == norm(r) for h, r in zip(hyps, refs)) / len(refs)


def perplexity(nll_sum: float, n_tokens: int) -> float:
    """exp(mean negative log-likelihood per token, in nats); inf when it overflows."""
    if n_tokens <= 0:
        raise ValueError("perplexity needs at least one token")
    mean = nll_sum / n_tokens
    return math.exp(mean) if mean < 700 else math.inf


def translation_metrics(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """{"exact_match" (0-1), "bleu" (0-100), "chrf" (0-100)}."""
    return {"exact_match": exact_match(hyps, refs), "bleu": bleu(hyps, refs), "chrf": chrf(hyps, refs)}

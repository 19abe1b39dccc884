"""Metrics against sacreBLEU called directly, exact match, perplexity."""

import math

import pytest
import sacrebleu

from paperzoo.text.metrics import bleu, chrf, exact_match, perplexity, translation_metrics

HYPS = ["2021년 8월 12일 목요일", "the cat sat on a mat", "quatre mille quatre-vingt-seize", "x"]
REFS = ["2021년 8월 12일 목요일", "the cat sat on the mat", "quatre mille quatre-vingt-seize", "y z"]


def test_bleu_chrf_equal_sacrebleu():
    assert bleu(HYPS, REFS) == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert chrf(HYPS, REFS) == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    assert bleu(REFS, REFS) == pytest.approx(100.0)
    assert 0 < bleu(HYPS, REFS) < 100
    assert bleu(HYPS, REFS, tokenize="char") == pytest.approx(
        sacrebleu.corpus_bleu(HYPS, [REFS], tokenize="char").score)


def test_exact_match_and_summary():
    assert exact_match(HYPS, REFS) == 0.5
    assert exact_match([" a "], ["a"]) == 1.0 and exact_match([" a "], ["a"], strip=False) == 0.0
    m = translation_metrics(HYPS, REFS)
    assert set(m) == {"exact_match", "bleu", "chrf"} and m["exact_match"] == 0.5


def test_perplexity():
    assert perplexity(0.0, 10) == 1.0
    assert perplexity(10 * math.log(4), 10) == pytest.approx(4.0)
    assert perplexity(1e6, 1) == math.inf
    with pytest.raises(ValueError):
        perplexity(1.0, 0)


def test_length_mismatch():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        bleu(["a", "b"], ["a"])

"""Parallel and LM corpora: file errors, empty lines, over-long sequences, unk, batching, resume."""

import pytest
import torch

from paperzoo.text.data import LengthBatchLoader, LMCorpus, LMLoader, ParallelDataset, read_parallel
from paperzoo.text.tokenizers import CharTokenizer

PAIRS = [("one", "un"), ("two", "deux"), ("three", "trois"), ("four", "quatre"), ("five", "cinq"),
         ("twenty-one", "vingt et un"), ("six", "six"), ("seven", "sept")]


@pytest.fixture
def toks():
    return CharTokenizer.train(s for s, _ in PAIRS), CharTokenizer.train(t for _, t in PAIRS)


def test_tsv_and_two_files(tmp_path):
    (tmp_path / "a.tsv").write_text("one\tun\r\ntwo\tdeux\n\t\nthree\t \n")
    assert read_parallel(tmp_path / "a.tsv") == [("one", "un"), ("two", "deux")]  # empty pairs skipped
    with pytest.raises(ValueError, match=r"a.tsv:3: empty source"):
        read_parallel(tmp_path / "a.tsv", on_empty="error")
    (tmp_path / "b.tsv").write_text("one\tun\ntwo deux\n")
    with pytest.raises(ValueError, match=r"b.tsv:2: expected 'source<TAB>target', found 0 tab"):
        read_parallel(tmp_path / "b.tsv")
    (tmp_path / "en.txt").write_text("one\ntwo\nthree\n")
    (tmp_path / "fr.txt").write_text("un\ndeux\n")
    with pytest.raises(ValueError, match=r"en.txt has 3 lines but .*fr.txt has 2"):
        read_parallel(src=tmp_path / "en.txt", tgt=tmp_path / "fr.txt")
    (tmp_path / "fr.txt").write_text("un\n\ntrois\n")
    assert read_parallel(src=tmp_path / "en.txt", tgt=tmp_path / "fr.txt") == [("one", "un"), ("three", "trois")]
    with pytest.raises(ValueError, match=r"fr.txt:2: empty target"):
        read_parallel(src=tmp_path / "en.txt", tgt=tmp_path / "fr.txt", on_empty="error")
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        read_parallel(tmp_path / "nope.tsv")


def test_encoding_overlong_and_unk(toks):
    src_tok, tgt_tok = toks
    ds = ParallelDataset(PAIRS, src_tok, tgt_tok, max_len=16)
    assert ds.src[0] == src_tok.encode("one") + [2] and ds.tgt[0][0] == 1 and ds.tgt[0][-1] == 2
    with pytest.raises(ValueError, match=r"pair 5 source 'twenty-one' has 11 tokens, more than max_len=8"):
        ParallelDataset(PAIRS, src_tok, tgt_tok, max_len=8)
    skipped = ParallelDataset(PAIRS, src_tok, tgt_tok, max_len=8, overlong="skip")
    assert len(skipped) == 7 and skipped.skipped == 1
    cut = ParallelDataset(PAIRS, src_tok, tgt_tok, max_len=8, overlong="truncate")
    assert len(cut.src[5]) == 8 and cut.src[5][-1] == 2
    unk = ParallelDataset([("onΩ", "un")], src_tok, tgt_tok)
    assert unk.src[0][2] == src_tok.unk_id


def test_length_batches_pad_shift_and_resume(toks):
    ds = ParallelDataset(PAIRS * 4, *toks)  # 32 pairs
    loader = LengthBatchLoader(ds, 4, seed=3, pool=2)
    assert len(loader) == 8
    batches = list(loader)
    b = batches[0]
    assert b.src.shape[0] == 4 and torch.equal(b.tgt_in[:, 1:], b.tgt_out[:, :-1])
    assert (b.src_lengths == (b.src != 0).sum(1)).all()
    assert torch.equal(b.src_padding_mask, b.src == 0)
    seen = torch.cat([x.index for x in batches]).sort().values
    assert torch.equal(seen, torch.arange(32))  # 32 = 8 full batches: every pair once
    # same (seed, epoch) -> same batches; a new epoch differs
    assert all(torch.equal(x.index, y.index) for x, y in zip(batches, LengthBatchLoader(ds, 4, seed=3, pool=2)))
    loader.set_epoch(1)
    assert not all(torch.equal(x.index, y.index) for x, y in zip(batches, loader))
    # resume mid-epoch: the remaining batches are exactly those not consumed
    loader.set_epoch(2)
    full = [x.index for x in loader]
    it = iter(loader)
    next(it), next(it), next(it)
    state = loader.state_dict()
    fresh = LengthBatchLoader(ds, 4, seed=3, pool=2)
    fresh.load_state_dict(state)
    rest = [x.index for x in fresh]
    assert len(rest) == 5 and all(torch.equal(a, b) for a, b in zip(rest, full[3:]))


def test_eval_loader_covers_everything_once(toks):
    ds = ParallelDataset(PAIRS[:7], *toks)
    idx = torch.cat([b.index for b in LengthBatchLoader(ds, 3, shuffle=False)])
    assert sorted(idx.tolist()) == list(range(7))


def test_lm_corpus_and_windows():
    text = "".join(f"line {i} of some text\n" for i in range(60))
    tok = CharTokenizer.train([text])
    corpus = LMCorpus(text, tok, val_fraction=0.1)
    assert tok.decode(corpus.train.tolist()) + tok.decode(corpus.val.tolist()) == text
    assert tok.decode(corpus.val.tolist()).startswith("line")  # cut at a line start
    loader = LMLoader(corpus.train, 16, 4, seed=0)
    x, y = next(iter(loader))
    assert x.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])
    ev = LMLoader(corpus.val, 16, 4, shuffle=False)
    n = sum(int((y != -100).sum()) for _, y in ev)
    assert n == len(corpus.val) - 1  # every validation token (but the first) predicted exactly once
    with pytest.raises(ValueError, match="too short"):
        LMLoader(corpus.val[:5], 16, 4)
    with pytest.raises(ValueError, match="empty"):
        LMCorpus("  \n", tok)

"""Tokenizers: special ids, exact round trips, unk, save/load, mismatch errors."""

import json

import pytest

from paperzoo.text.tokenizers import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    CharTokenizer,
    SentencePieceTokenizer,
    TokenizerMismatchError,
    build_tokenizer,
    check_same_tokenizer,
    load_tokenizer,
    tokenizer_from_dict,
)

CORPUS = ["Thursday, August 12, 2021", "2021년 8월 12일 목요일", "four thousand and ninety-six",
          "quatre mille quatre-vingt-seize", "Donnerstag, 12. August 2021", "hello  world  "] * 20


@pytest.fixture(scope="module")
def spm_bpe():
    return SentencePieceTokenizer.train(CORPUS, vocab_size=340, model_type="bpe")


def test_char_round_trip_and_specials():
    tok = CharTokenizer.train(CORPUS)
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (PAD_ID, BOS_ID, EOS_ID, UNK_ID) == (0, 1, 2, 3)
    for s in CORPUS[:6] + ["", "  12. 목요일  "]:
        assert tok.decode(tok.encode(s)) == s
    ids = tok.encode("Thu", add_bos=True, add_eos=True)
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID and len(ids) == 5
    assert tok.decode(ids + [tok.encode("x")[0]]) == "Thu"  # stops at EOS
    assert tok.decode(ids + ids, stop_at_eos=False) == "ThuThu"  # an LM sample runs on past EOS, specials dropped
    assert tok.decode([PAD_ID] + ids + [PAD_ID]) == "Thu"


def test_char_unknown_characters_become_unk():
    tok = CharTokenizer.train(["abc"])
    assert tok.encode("aΩb") == [tok.encode("a")[0], UNK_ID, tok.encode("b")[0]]
    assert tok.decode(tok.encode("aΩb")) == "a⁇b"


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_exact_round_trip(model_type):
    tok = SentencePieceTokenizer.train(CORPUS, vocab_size=340, model_type=model_type)
    assert tok.sp.pad_id() == PAD_ID and tok.sp.unk_id() == UNK_ID
    # seen text, odd whitespace and characters never seen in training (byte fallback) all round-trip exactly
    for s in CORPUS[:6] + [" leading", "trailing  ", "a\tb", "Ωmega 😀", "日本語"]:
        assert tok.decode(tok.encode(s)) == s, s
    assert UNK_ID not in tok.encode("Ωmega 😀")


def test_sentencepiece_is_subword(spm_bpe):
    assert len(spm_bpe.encode("four thousand and ninety-six")) < len("four thousand and ninety-six")


def test_sentencepiece_without_byte_fallback_uses_unk():
    tok = SentencePieceTokenizer.train(CORPUS, vocab_size=80, byte_fallback=False)
    assert UNK_ID in tok.encode("Ω")


def test_sentencepiece_vocab_too_small_is_a_clear_error():
    with pytest.raises(ValueError, match="vocab_size=50.*byte"):
        SentencePieceTokenizer.train(CORPUS, vocab_size=50)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_save_load_same_encoding(tmp_path, kind):
    tok = build_tokenizer(kind, CORPUS, vocab_size=340)
    tok.save(tmp_path / "tok.json")
    back = load_tokenizer(tmp_path / "tok.json")
    assert back.fingerprint() == tok.fingerprint()
    assert back.encode(CORPUS[1]) == tok.encode(CORPUS[1])
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))  # as stored in a checkpoint's meta
    assert again.encode(CORPUS[0]) == tok.encode(CORPUS[0])
    check_same_tokenizer(tok.to_dict(), back, "test")  # no error


def test_spm_model_file_loads(tmp_path, spm_bpe):
    (tmp_path / "x.model").write_bytes(spm_bpe.model_proto)
    assert load_tokenizer(tmp_path / "x.model").fingerprint() == spm_bpe.fingerprint()


def test_mismatch_is_a_clear_error(spm_bpe):
    a, b = CharTokenizer.train(["abc"]), CharTokenizer.train(["abd"])
    with pytest.raises(TokenizerMismatchError, match="missing 'c', extra 'd'"):
        check_same_tokenizer(a.to_dict(), b, "ckpt")
    with pytest.raises(TokenizerMismatchError, match="char with 7 tokens vs sentencepiece"):
        check_same_tokenizer(a, spm_bpe, "ckpt")


def test_bad_files_and_kinds(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text('{"kind": "wordpiece"}')
    with pytest.raises(ValueError, match="not a paperzoo tokenizer"):
        load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        build_tokenizer("word", CORPUS)

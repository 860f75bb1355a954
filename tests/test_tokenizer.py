"""The runtime's C SentencePiece tokenizer (csrc/tokenizer.c, what the page tokenizes with)
against the sentencepiece package: the same ids for every line of every Multi30k split, in both
languages, the same text back, and the same on the edge cases of normalization."""

import gzip
from pathlib import Path

import pytest
import sentencepiece as spm

from shrinkformer.errors import CheckpointError
from shrinkformer.runtime import native, sfz
from shrinkformer.runtime.tokenizer import NativeTokenizer

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "multi30k"
pytestmark = pytest.mark.skipif(native.library() is None, reason="no native library here")


@pytest.fixture(scope="module")
def proto() -> bytes:
    return sfz.read(ROOT / "results" / "multi30k" / "models" / "mixed-20x.sfz").tensors["__tokenizer__"].tobytes()


def test_every_multi30k_line_tokenizes_as_sentencepiece_does(proto):
    files = sorted(DATA.glob("*.gz"))
    if not files:
        pytest.skip(f"no Multi30k under {DATA}")
    ours, theirs = NativeTokenizer(proto), spm.SentencePieceProcessor(model_proto=proto)
    lines = [line.rstrip("\n") for f in files for line in gzip.open(f, "rt", encoding="utf-8")]
    assert len(lines) > 60000
    different = [line for line in lines if ours.encode(line) != theirs.encode(line)]
    assert different == []
    ids = theirs.encode(lines[::7])
    assert [ours.decode(i) for i in ids] == theirs.decode(ids)


@pytest.mark.parametrize("text", ["", "   ", "  a  b  ", "\t x\u3000y  ", "ｈｅｌｌｏ Ⅻ ﬁ", "日本語 🙂 ǅ", "a\u0301",
                                  "x\x00y", "é ç ß ẞ", "\u200b z", "Ein Mann fährt Fahrrad.", "\u2581 \u2581a"])
def test_normalization_edge_cases_match(proto, text):
    ours, theirs = NativeTokenizer(proto), spm.SentencePieceProcessor(model_proto=proto)
    assert ours.encode(text) == theirs.encode(text)
    assert ours.decode(theirs.encode(text)) == theirs.decode(theirs.encode(text))


def test_malformed_utf8_and_unknown_ids(proto):
    ours, theirs = NativeTokenizer(proto), spm.SentencePieceProcessor(model_proto=proto)
    for data in (b"a\xffb", b"\xe2\x82", b"x\xc3", b"\xed\xa0\x80z"):  # the last: a UTF-16 surrogate
        assert ours.encode(data) == theirs.encode(data), data
    assert ours.decode([5, 1, 1, 218, 0, 2, 3]) == theirs.decode([5, 1, 1, 218, 0, 2, 3])
    assert ours.decode([5, 10 ** 9]) == theirs.decode([5, 1])  # outside the vocabulary: unknown


def test_models_it_cannot_follow_are_refused_in_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="not a SentencePiece model"):
        NativeTokenizer(b"\x0a\xff\xff\xff")
    text = tmp_path / "text.txt"
    text.write_text("\n".join(f"word{i} other{i % 7} thing" for i in range(300)))
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "bpe"), vocab_size=60,
                                   model_type="bpe", minloglevel=2)
    with pytest.raises(CheckpointError, match="only unigram"):
        NativeTokenizer((tmp_path / "bpe.model").read_bytes())

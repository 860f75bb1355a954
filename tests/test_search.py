import dataclasses

import pytest
import torch

from shrinkformer.errors import UsageError
from shrinkformer.model import MODEL_PRESETS, SearchConfig, Transformer, beam_search
from shrinkformer.model.transformer import BOS, EOS, PAD


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    m = Transformer(dataclasses.replace(MODEL_PRESETS["tiny"], vocab_size=30)).eval()
    with torch.no_grad():  # make EOS likely enough that hypotheses end at different lengths
        m.embed_tokens.weight[EOS] *= 3
    return m


def sources(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 30, (n, 9), generator=g)
    for i in range(n):
        src[i, 2 + i % 7:] = PAD
        src[i, 1 + i % 7] = EOS
    return src


@pytest.mark.parametrize("beam", [1, 2, 5])
def test_cached_search_equals_recomputing_the_prefix(model, beam):
    cfg = SearchConfig(beam_size=beam)
    assert beam_search(model, sources(), cfg) == beam_search(model, sources(), cfg, use_cache=False)


def test_greedy_is_beam_one(model):
    src = sources(4)
    out = beam_search(model, src, SearchConfig(beam_size=1, max_len_a=0, max_len_b=6))
    memory, mask = model.encode(src)
    for i, hyp in enumerate(out):
        tokens = [BOS]
        while len(tokens) <= 6:
            logits = model.decode(torch.tensor([tokens]), memory[i:i + 1], mask[i:i + 1])[0, -1]
            logits[[PAD, BOS]] = float("-inf")
            if len(tokens) == 6:
                break
            nxt = int(logits.argmax())
            if nxt == EOS:
                break
            tokens.append(nxt)
        assert hyp == tokens[1:]


def test_batching_does_not_change_results(model):
    src = sources()
    together = beam_search(model, src, SearchConfig(beam_size=4))
    alone = [beam_search(model, src[i:i + 1, : int(src[i].ne(PAD).sum())], SearchConfig(beam_size=4))[0]
             for i in range(len(src))]
    assert together == alone


def test_max_length_is_respected(model):
    out = beam_search(model, sources(), SearchConfig(beam_size=3, max_len_a=0.0, max_len_b=3))
    assert all(len(h) <= 2 for h in out)  # 3 steps: at most 2 tokens, then EOS


def test_beam_size_must_be_positive():
    with pytest.raises(UsageError, match="beam size must be >= 1"):
        SearchConfig(beam_size=0)

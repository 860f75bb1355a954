"""The runtime's engine, built over a torch model's own tensors (``inference/engine.py``), computes
what the PyTorch modules compute, for every kind of layer it serves, and steps aside for everything
it does not; its search translates as the PyTorch search does."""

import copy
import dataclasses

import numpy as np
import pytest
import torch

from shrinkformer.compress import BinaryConfig, KMeansConfig, PruneConfig, compress
from shrinkformer.inference import native
from shrinkformer.inference.layers import to_inference
from shrinkformer.inference import engine as torch_engine
from shrinkformer.inference.engine import native_engine
from shrinkformer.model import MODEL_PRESETS, SearchConfig, Transformer, beam_search
from shrinkformer.model.search import _native_engine
from shrinkformer.model.transformer import BOS, EOS, PAD

KINDS = {
    "fp32": [],
    "4-bit + embeddings": [(KMeansConfig(4), "all"), (KMeansConfig(4), "embeddings")],
    "1-bit": [(BinaryConfig("fixed"), "all")],
    "pruned fp32": [(PruneConfig(0.6, 0.6), "all")],
    "pruned 4-bit": [(PruneConfig(0.8, 0.8), "all"), (KMeansConfig(4), "all")],
    "pruned 2-bit, 50%": [(PruneConfig(0.5, 0.5), "all"), (KMeansConfig(2), "all")],  # decodes as dense 4-bit
    "pruned 1-bit, 95%": [(PruneConfig(0.95, 0.95), "all"), (KMeansConfig(1), "all")],  # stays pruned
}


def model(kind: str, pre_norm: bool = True, seed: int = 0) -> Transformer:
    cfg = dataclasses.replace(MODEL_PRESETS["tiny"], vocab_size=40, pre_norm=pre_norm)
    torch.manual_seed(seed)
    m = Transformer(cfg)
    with torch.no_grad():  # hypotheses of different lengths
        m.embed_tokens.weight[EOS] *= 3
    for config, scope in KINDS[kind]:
        compress(m, config, scope)
    return to_inference(m).eval()


def sources(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, 40, (n, 7), generator=g)
    for i in range(n):
        src[i, 3 + i % 4:] = PAD
        src[i, 2 + i % 4] = EOS
    return src


@pytest.fixture(autouse=True)
def kernels():
    if native.library() is None:
        pytest.skip("no native kernels on this machine (the PyTorch path is tested everywhere else)")


@pytest.mark.parametrize("n", [3, 17])  # 17 sentences x 4 beams: every kind's products go through BLAS
@pytest.mark.parametrize("pre_norm", [True, False])
@pytest.mark.parametrize("kind", KINDS)
@torch.no_grad()
def test_native_steps_give_the_logits_of_the_pytorch_steps(kind, pre_norm, n):
    m = model(kind, pre_norm)
    engine = native_engine(m)
    assert engine is not None
    beams, steps = 4, 7
    src = sources(n)
    memory, mask = m.encode(src)
    session = engine.start(memory.detach().numpy(), mask.numpy(), beams, capacity=steps)
    cache = [{} for _ in m.decoder.layers]
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(4, 40, (n * beams, steps), generator=g)
    alive, parent = torch.arange(n), None
    for t in range(steps):
        native_logits = torch.from_numpy(session.step(tokens[:, t].contiguous().numpy(), t,
                                                      None if parent is None else parent.numpy(), alive.numpy()))
        logits = m.decode(tokens[:, t:t + 1], memory, mask, cache, start=t)[:, -1]
        torch.testing.assert_close(native_logits, logits, rtol=1e-4, atol=1e-5)
        # beams reorder at random; after step 3 the middle sentence leaves the batch
        parent = torch.randint(0, len(tokens), (len(tokens),), generator=g)
        keep = torch.tensor([i for i in range(len(alive)) if i != 1 or t != 3])
        keep_rows = (keep[:, None] * beams + torch.arange(beams)).view(-1)
        parent = parent[keep_rows]
        for layer in cache:
            layer["self_k"], layer["self_v"] = layer["self_k"][parent], layer["self_v"][parent]
            layer["cross_k"], layer["cross_v"] = layer["cross_k"][keep], layer["cross_v"][keep]
        tokens, alive, memory, mask = tokens[keep_rows], alive[keep], memory[keep], mask[keep]


@pytest.mark.parametrize("kind", KINDS)
def test_native_search_translates_as_the_pytorch_search(kind):
    m = model(kind, seed=2)
    cfg = SearchConfig(beam_size=5)
    for batch in (sources(1, seed=3), sources(3, seed=4), sources(2, seed=5), sources(12, seed=6)):
        assert _native_engine(m, batch) is not None  # the runtime's engine is what runs
        assert beam_search(m, batch, cfg) == beam_search(m, batch, cfg, native=False)


def test_without_blas_every_product_runs_in_the_kernels(monkeypatch):
    m = model("4-bit + embeddings")
    many = sources(7)  # 35 rows of beams: past every kernel's rows, BLAS's where there is one
    from shrinkformer.runtime import native as runtime_native
    monkeypatch.setattr(runtime_native, "blas_sgemm", lambda: (None, 0))
    native.reset()
    try:
        assert not native.has_blas()
        assert _native_engine(m, many) is not None
        assert beam_search(m, many, SearchConfig(beam_size=5)) == beam_search(m, many, SearchConfig(beam_size=5),
                                                                               native=False)
    finally:
        monkeypatch.undo()
        native.reset()


def test_models_it_cannot_serve_use_the_pytorch_path():
    m = model("4-bit + embeddings")
    m.decoder.layers[0].self_attn.prob_transform = lambda p: p  # the attention analysis's hook
    assert native_engine(m) is None
    m.decoder.layers[0].self_attn.prob_transform = None
    assert native_engine(m) is not None

    training_form = Transformer(dataclasses.replace(MODEL_PRESETS["tiny"], vocab_size=40))
    compress(training_form, KMeansConfig(4), "all")  # compressed layers compute their weight per call
    assert native_engine(training_form.eval()) is None
    assert native_engine(training_form.train()) is None


def test_a_model_that_decoded_natively_can_still_be_copied():
    m = model("4-bit + embeddings")
    beam_search(m, sources(1), SearchConfig(beam_size=2))
    assert native_engine(m) is not None
    twin = copy.deepcopy(m)  # what compressing a copy of a model does
    assert beam_search(twin, sources(2), SearchConfig(beam_size=2)) == beam_search(m, sources(2), SearchConfig(beam_size=2))


def test_a_changed_weight_is_seen_by_the_next_search():
    m = model("fp32")
    src = sources(1)
    before = native_engine(m)
    with torch.no_grad():
        m.decoder.layers[1].ffn.fc2.weight.mul_(-3)  # in place: the same tensor, a new version
    after = native_engine(m)
    assert after is not before
    memory, mask = m.encode(src)
    logits = after.start(memory.detach().numpy(), mask.numpy(), 1, 2).step(np.array([4]), 0, None, np.arange(1))
    torch.testing.assert_close(torch.from_numpy(logits), m.decode(torch.tensor([[4]]), memory, mask)[:, -1],
                               rtol=1e-4, atol=1e-5)


def test_a_translator_looks_its_decoder_up_once_per_call_and_sees_a_change_between_calls(monkeypatch):
    from shrinkformer.translate import Translator

    m = model("4-bit + embeddings")
    ids = [[5, 6, 7, EOS], [8, 9, EOS], [10, 11, 12, 13, EOS]]
    translator = Translator(m, tokenizer=None, search=SearchConfig(beam_size=3), batch_sentences=1)
    builds = []
    real = torch_engine._fingerprint
    monkeypatch.setattr(torch_engine, "_fingerprint", lambda model: builds.append(1) or real(model))
    first = translator.translate_ids(ids)
    assert len(builds) == 1  # read once for the call (where the decoder was built), not once per batch of one
    assert not torch_engine._pinned  # released after the call
    with torch.no_grad():
        m.decoder.final_norm.weight.mul_(-1)  # between calls (every logit flips): seen by the next one
    after = translator.translate_ids(ids)
    assert after == Translator(m, tokenizer=None, search=SearchConfig(beam_size=3), native=False).translate_ids(ids)
    assert first != after


@pytest.mark.parametrize("n", [1, 12])  # 7 rows through the kernels; 84 rows through BLAS
@pytest.mark.parametrize("pre_norm", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_the_native_encoder_gives_the_memory_of_the_pytorch_encoder(kind, pre_norm, n):
    m = model(kind, pre_norm)
    src = sources(n, seed=7)
    memory = torch.from_numpy(native_engine(m).encode(src.numpy()))
    with torch.no_grad():
        expected, mask = m.encode(src)
    real = ~mask  # padding positions are never read (cross-attention masks them)
    torch.testing.assert_close(memory[real], expected[real], rtol=1e-4, atol=1e-5)


def _tiny_vocab_model(vocab: int, seed: int) -> Transformer:
    torch.manual_seed(seed)
    m = Transformer(dataclasses.replace(MODEL_PRESETS["tiny"], vocab_size=vocab))
    with torch.no_grad():
        m.embed_tokens.weight[EOS] *= 3
    return to_inference(m).eval()


@pytest.mark.parametrize("vocab", [6, 9, 40])  # 6: fewer tokens than 2 x beams besides PAD and BOS
@pytest.mark.parametrize("beams", [1, 2, 4])
def test_native_selection_searches_as_pytorch_does_at_the_edges(vocab, beams):
    m = _tiny_vocab_model(vocab, seed=vocab + beams)
    g = torch.Generator().manual_seed(beams)
    src = torch.randint(4, vocab, (9, 5), generator=g)  # 9 sentences: the selection splits them across threads
    src[:, -1] = EOS
    for cfg in (SearchConfig(beam_size=beams), SearchConfig(beam_size=beams, max_len_a=0, max_len_b=1),
                SearchConfig(beam_size=beams, max_len_a=0.5, max_len_b=2, length_penalty=0.6)):
        assert beam_search(m, src, cfg) == beam_search(m, src, cfg, native=False), cfg


def _select(logits, scores, k, at_limit=None):
    """beam_select on tensors: continuing (parent, token, score) per slot and finished (slot, beam, score)."""
    n, V = logits.shape[0] // k, logits.shape[1]
    scores = scores.clone()
    parent, token, beam = (torch.empty(n * k, dtype=torch.int64) for _ in range(3))
    fin_score = torch.empty(n * k)
    limit = None if at_limit is None else at_limit.to(torch.uint8).contiguous()
    done = native.library().beam_select(logits.data_ptr(), n, k, V, scores.data_ptr(),
                                        None if limit is None else limit.data_ptr(), PAD, BOS, EOS, parent.data_ptr(),
                                        token.data_ptr(), beam.data_ptr(), fin_score.data_ptr())
    finished = [(r, int(beam[r]), float(fin_score[r])) for r in range(n * k) if beam[r] >= 0]
    assert done == len(finished)
    return parent.tolist(), token.tolist(), scores, finished


def test_native_selection_scores_are_log_softmax_plus_the_beam_score():
    k, V = 3, 50
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2 * k, V, generator=g) * 4
    logits[0, EOS] = 30  # sentence 0's first beam: EOS is its best continuation by far
    scores = torch.tensor([-0.5, -1.0, float("-inf"), -0.2, -0.3, -0.9])
    parent, token, new_scores, finished = _select(logits, scores, k)

    logp = logits.log_softmax(-1)
    logp[:, [PAD, BOS]] = float("-inf")
    cand = (logp + scores[:, None]).view(2, k * V)
    for b in range(2):
        best, where = cand[b].topk(2 * k)
        best_eos = [(r, int(where[r]) // V) for r in range(k) if int(where[r]) % V == EOS]
        assert [(r, beam) for r, beam, _ in finished if r // k == b] == [(b * k + r, beam) for r, beam in best_eos]
        going = [r for r in range(2 * k) if int(where[r]) % V != EOS][:k]
        assert parent[b * k: b * k + k] == [b * k + int(where[r]) // V for r in going]
        assert token[b * k: b * k + k] == [int(where[r]) % V for r in going]
        torch.testing.assert_close(new_scores[b * k: b * k + k], best[going], rtol=1e-6, atol=1e-6)
    assert finished[0][:2] == (0, 0)  # EOS after beam 0 of sentence 0 is its best candidate

    # at the length limit only EOS may follow: every finite beam finishes, none with a finite score goes on
    _, _, limited, finished = _select(logits, scores, k, at_limit=torch.tensor([1, 0]))
    assert [(r, beam) for r, beam, _ in finished if r < k] == [(0, 0), (1, 1)]  # beam 2 is dead (-inf)
    assert not torch.isfinite(limited[:k]).any()
    torch.testing.assert_close(torch.tensor([s for r, _, s in finished if r < k]),
                               (logp[:2, EOS] + scores[:2]), rtol=1e-6, atol=1e-6)

import dataclasses

import pytest
import torch

from shrinkformer.model import MODEL_PRESETS, Transformer
from shrinkformer.model.transformer import BOS, PAD

TINY = dataclasses.replace(MODEL_PRESETS["tiny"], vocab_size=50, dropout=0.0)


def batch(seed=0, b=3, s=7, t=5, vocab=50):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, vocab, (b, s), generator=g)
    src[0, 5:] = PAD  # one padded sentence
    tgt = torch.randint(4, vocab, (b, t), generator=g)
    tgt[:, 0] = BOS
    return src, tgt


def test_module_names_spell_out_roles():
    names = dict(Transformer(TINY).named_modules())
    for name in ["encoder.layers.0.self_attn.q_proj", "encoder.layers.1.ffn.fc1",
                 "decoder.layers.1.self_attn.v_proj", "decoder.layers.0.cross_attn.out_proj",
                 "decoder.layers.1.ffn.fc2", "embed_tokens"]:
        assert name in names
    linears = [n for n, m in names.items() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 * (4 + 2) + 2 * (4 + 4 + 2)  # no output projection: it is tied


@pytest.mark.parametrize("pre_norm", [True, False], ids=["pre-norm", "post-norm"])
def test_padding_does_not_leak_into_real_positions(pre_norm):
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(TINY, pre_norm=pre_norm)).eval()
    src, tgt = batch()
    logits, _ = model(src, tgt)
    alone, _ = model(src[:1, :5], tgt[:1])  # the same sentence without its padding
    torch.testing.assert_close(logits[:1], alone, rtol=1e-5, atol=1e-5)


def test_decoder_is_causal():
    torch.manual_seed(0)
    model = Transformer(TINY).eval()
    src, tgt = batch()
    changed = tgt.clone()
    changed[:, -1] = 4
    a, _ = model(src, tgt)
    b, _ = model(src, changed)
    torch.testing.assert_close(a[:, :-1], b[:, :-1])


def test_attention_probabilities_behind_a_flag_match_the_fused_path():
    torch.manual_seed(0)
    model = Transformer(TINY).eval()
    src, tgt = batch()
    fused, none = model(src, tgt)
    explicit, attn = model(src, tgt, need_weights=True)
    assert none is None
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)
    assert len(attn.encoder_self) == len(attn.decoder_self) == len(attn.cross) == 2
    assert attn.encoder_self[0].shape == (3, 2, 7, 7) and attn.cross[1].shape == (3, 2, 5, 7)
    torch.testing.assert_close(attn.cross[0].sum(-1), torch.ones(3, 2, 5))
    assert attn.encoder_self[0][0, :, :, 5:].abs().max() == 0  # padding gets no attention
    assert attn.decoder_self[0][0, 0].triu(1).abs().max() == 0  # nor the future


def test_prob_transform_replaces_attention_during_decoding():
    torch.manual_seed(0)
    model = Transformer(TINY).eval()
    src, tgt = batch()
    before, _ = model(src, tgt)
    seen = []

    def uniform(p):
        seen.append(p.shape)
        return torch.where(p > 0, 1.0, 0.0) / (p > 0).sum(-1, keepdim=True)

    for m in model.attention_modules().values():
        m.prob_transform = uniform
    after, attn = model(src, tgt, need_weights=True)
    assert len(seen) == 6 and not torch.allclose(before, after)
    assert torch.allclose(attn.encoder_self[0][1, 0, 0], torch.full((7,), 1 / 7))


def test_incremental_decoding_with_cache_matches_full_decoding():
    torch.manual_seed(0)
    model = Transformer(TINY).eval()
    src, tgt = batch()
    full, _ = model(src, tgt)
    memory, mask = model.encode(src)
    cache = [{} for _ in model.decoder.layers]
    steps = [model.decode(tgt[:, i:i + 1], memory, mask, cache, start=i) for i in range(tgt.shape[1])]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)


def test_untied_output_projection_and_position_limit():
    model = Transformer(dataclasses.replace(TINY, tie_embeddings=False, max_positions=6))
    assert model.output_proj is not None and model.output_proj.weight is not model.embed_tokens.weight
    src, tgt = batch()
    with pytest.raises(ValueError, match="sequence of 7 tokens exceeds max_positions=6"):
        model(src, tgt)


def test_fused_projection_weights_follow_every_change_of_the_weights():
    """Decoding keeps the concatenated q/k/v weights between calls; any change to a weight, in place
    (an optimizer step, load_state_dict) or by a new tensor, must show in the next forward."""
    torch.manual_seed(0)
    model, (src, tgt) = Transformer(TINY).eval(), batch()

    def logits() -> torch.Tensor:
        with torch.no_grad():
            return model(src, tgt)[0]

    def fresh() -> torch.Tensor:  # no cache: autograd on concatenates anew
        return model(src, tgt)[0].detach()

    first = logits()
    assert torch.equal(first, fresh()) and torch.equal(logits(), first)
    attn = model.decoder.layers[0].self_attn
    with torch.no_grad():
        attn.k_proj.weight.mul_(1.5)  # in place
    assert torch.equal(logits(), fresh()) and not torch.equal(logits(), first)
    attn.v_proj.bias = torch.nn.Parameter(torch.randn_like(attn.v_proj.bias))  # a new tensor
    assert torch.equal(logits(), fresh())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["decoder.layers.0.cross_attn.k_proj.weight"].add_(0.1)
    model.load_state_dict(state)
    assert torch.equal(logits(), fresh())

import dataclasses

import pytest
import torch
from torch import nn

from shrinkformer.compress import (BinaryConfig, FlexKMeansConfig, KMeansConfig, PruneConfig, codecs, compress, select,
                                  set_sparsity)
from shrinkformer.compress.kmeans_flex import flex_step
from shrinkformer.compress.primitives import magnitude_mask
from shrinkformer.compress.base import CompressedLinear
from shrinkformer.errors import UsageError
from shrinkformer.model import MODEL_PRESETS, Transformer

CFG = dataclasses.replace(MODEL_PRESETS["tiny"], vocab_size=60, dropout=0.0)


def model(seed=0):
    torch.manual_seed(seed)
    return Transformer(CFG)


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(4, 60, (3, 6), generator=g), torch.randint(4, 60, (3, 5), generator=g)


@pytest.mark.parametrize("scope, expected", [
    ("self-attention", 16), ("encoder-self-attention", 8), ("decoder-self-attention", 8),
    ("cross-attention", 8), ("attention", 24), ("ffn", 8), ("all", 32), ("embeddings", 1),
])
def test_scopes_select_by_role(scope, expected):
    chosen = select(model(), [scope])
    assert len(chosen) == expected
    if scope == "cross-attention":
        assert all(".cross_attn." in n for n in chosen)


def test_include_exclude_and_several_scopes():
    chosen = select(model(), ["ffn", "cross-attention"], exclude=["decoder.layers.1.*"])
    assert len(chosen) == 8 + 8 - 2 - 4
    assert list(select(model(), [], include=["encoder.layers.0.ffn.fc?"])) == [
        "encoder.layers.0.ffn.fc1", "encoder.layers.0.ffn.fc2"]


def test_empty_scope_lists_the_modules():
    with pytest.raises(UsageError, match=r"matches no module; modules: embed_tokens, encoder\.layers\.0\.self_attn\.q_proj"):
        select(model(), [], include=["nothing.*"])
    with pytest.raises(UsageError, match="unknown scope 'mlp'"):
        select(model(), ["mlp"])


@pytest.mark.parametrize("bits", [1, 2, 4, 8], ids=lambda b: f"w-kmeans{b}")
def test_kmeans_layer_equals_dense_layer_with_dequantized_weights(bits):
    m = model()
    compress(m, KMeansConfig(bits=bits), "ffn")
    layer = m.encoder.layers[0].ffn.fc1
    assert isinstance(layer, CompressedLinear)
    w = layer.weight
    assert w.unique().numel() <= 2 ** bits
    dense = nn.Linear(layer.in_features, layer.out_features)
    dense.weight.data, dense.bias.data = w.detach().clone(), layer.bias.detach().clone()
    x = torch.randn(4, layer.in_features)
    assert torch.equal(layer(x), dense(x))


def test_kmeans_retraining_moves_centroids_by_summed_member_gradients():
    m = model()
    compress(m, KMeansConfig(bits=2), include=["decoder.layers.0.ffn.fc1"], scope=[])
    codec = m.decoder.layers[0].ffn.fc1.codec
    index_before = codec.index.clone()
    w = codec()
    grad = torch.randn_like(w)
    w.backward(grad)
    expected = torch.zeros(4).index_add_(0, codec.index.long(), grad.flatten())
    torch.testing.assert_close(codec.centroids.grad, expected)
    assert torch.equal(codec.index, index_before)


def test_bsflex_reassigns_weights_during_training_and_fixed_does_not_move_centroids():
    flex, fixed = model(), model()
    compress(flex, BinaryConfig("flex"), "self-attention")
    compress(fixed, BinaryConfig("fixed"), "self-attention")
    src, tgt = batch()
    for m in (flex, fixed):
        codec = m.encoder.layers[0].self_attn.q_proj.codec
        before_upper, before_c = codec.quantize()[0].clone(), codec.centroids.clone()
        opt = torch.optim.Adam(m.parameters(), lr=0.05)  # moves every weight, so some cross the threshold
        for _ in range(3):
            m.train()
            logits, _ = m(src, tgt)
            logits.logsumexp(-1).mean().backward()
            opt.step()
            opt.zero_grad()
        upper, centroids = codec.quantize()
        assert not torch.equal(upper, before_upper)  # weights changed clusters
        moved = not torch.equal(centroids, before_c)
        assert moved == (m is flex)
        m.eval()
        assert codec().unique().numel() == 2


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("pruned", [False, True])
def test_flex_step_compiled_pass_equals_tensor_ops(bits, pruned):
    w = torch.randn(96, 130, generator=torch.Generator().manual_seed(bits))
    mask = magnitude_mask(w, 0.5) if pruned else None
    members = w[mask] if pruned else w.flatten()
    centroids = torch.linspace(float(members.min()), float(members.max()), 2 ** bits) * 0.7
    got = flex_step(w, centroids, mask)  # the compiled pass (CPU, contiguous float32)
    want = flex_step(w.t().contiguous().t(), centroids, mask)  # not contiguous: tensor operations
    assert torch.equal(got[0], want[0]) and got[0].dtype == torch.uint8 and got[0].numel() == members.numel()
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-7)
    # one Lloyd step: nearest centroid, then each centroid its members' mean
    nearest = (members[:, None] - centroids[None]).abs().argmin(1)
    assert torch.equal(got[0].long(), nearest)
    for k in nearest.unique():
        torch.testing.assert_close(got[1][k], members[nearest == k].mean(), rtol=1e-5, atol=1e-6)


def test_flex_step_keeps_an_empty_clusters_centroid():
    values = torch.tensor([0.0, 0.25, 0.5, 5.0, 5.5, 1.125])  # 1.125: on a midpoint, the lower cluster's
    index, centroids = flex_step(values, torch.tensor([0.25, 2.0, 2.5, 5.0]))  # 2.0 and 2.5 get nothing
    assert torch.equal(centroids, torch.tensor([0.46875, 2.0, 2.5, 5.25]))
    assert index.tolist() == [0, 0, 0, 3, 3, 0]


@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "pruned"])
def test_flex_kmeans_reassigns_weights_and_keeps_pruned_ones_at_zero(pruned):
    m = model()
    if pruned:
        compress(m, PruneConfig(0.5, 0.5), "ffn")
    compress(m, FlexKMeansConfig(2), "ffn")
    codec = m.encoder.layers[0].ffn.fc1.codec
    before_index, before_c = codec.quantize()[0].clone(), codec.centroids.clone()
    src, tgt = batch()
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    for _ in range(3):
        m.train()
        logits, _ = m(src, tgt)
        logits.logsumexp(-1).mean().backward()
        if pruned:
            assert (codec.latent.grad[~codec.mask] == 0).all()
        opt.step()
        opt.zero_grad()
    index, centroids = codec.quantize()
    assert not torch.equal(index, before_index) and not torch.equal(centroids, before_c)
    m.eval()
    w = codec()
    assert w[codec.mask].unique().numel() <= 4 if pruned else w.unique().numel() <= 4
    if pruned:
        assert (w[~codec.mask] == 0).all()
    frozen = codec.frozen()  # what packs: an ordinary codebook with the same weights
    assert torch.equal(frozen(), w) and frozen.pack()[1]["encoding"] == "codebook"


def test_pruning_keeps_pruned_weights_exactly_zero_through_training():
    m = model()
    compress(m, PruneConfig(0.5, 0.5), "all")
    src, tgt = batch()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(3):
        logits, _ = m(src, tgt)
        logits.logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad()
    for codec in codecs(m).values():
        w = codec()
        assert (w[~codec.mask] == 0).all() and abs(codec.mask.float().mean().item() - 0.5) < 0.01
    set_sparsity(list(codecs(m).values()), 0.8, "layer")
    for codec in codecs(m).values():
        assert abs((codec() == 0).float().mean().item() - 0.8) < 0.01


def test_global_pruning_reaches_the_share_over_the_scope():
    m = model()
    report = compress(m, PruneConfig(0.6, 0.6, scope="global"), "all")
    zeros = sum(int((c() == 0).sum()) for c in codecs(m).values())
    assert zeros == round(0.6 * report.compressed_params)


def test_prune_then_quantize_survivors():
    m = model()
    compress(m, PruneConfig(0.7, 0.7), "ffn")
    compress(m, KMeansConfig(bits=3), "ffn")
    codec = m.encoder.layers[0].ffn.fc1.codec
    w = codec()
    assert abs((w == 0).float().mean().item() - 0.7) < 0.01
    assert w[codec.mask].unique().numel() <= 8


@pytest.mark.parametrize("make", [lambda: KMeansConfig(bits=0), lambda: KMeansConfig(bits=9),
                                  lambda: FlexKMeansConfig(bits=0), lambda: FlexKMeansConfig(bits=9),
                                  lambda: PruneConfig(1.0, 1.0), lambda: PruneConfig(-0.1, 0.5),
                                  lambda: PruneConfig(0.3, 0.5, steps=0), lambda: BinaryConfig("wobbly")],
                         ids=["bits0", "bits9", "flex-bits0", "flex-bits9", "sparsity1", "negative", "steps0", "binary-kind"])
def test_impossible_parameters(make):
    with pytest.raises(UsageError):
        make()


def test_report_counts_parameters():
    m = model()
    r = compress(m, KMeansConfig(4), "ffn")
    assert r.total_params == sum(p.numel() for p in model().parameters())
    assert r.compressed_params == sum(l.weight.numel() for n, l in select(model(), ["ffn"]).items())


def test_compressed_modules_keep_the_models_mode():
    m = model().eval()
    compress(m, BinaryConfig("flex"), "self-attention")
    assert not any(x.training for x in m.modules())
    codec = m.encoder.layers[0].self_attn.q_proj.codec
    before = codec.centroids.clone()
    m(*batch())
    assert torch.equal(codec.centroids, before)  # evaluation does not move BS-Flex centroids

"""compress() on a Hugging Face MarianMTModel built from a tiny random config (no download)."""

import pytest
import torch

from shrinkformer.compress import BinaryConfig, KMeansConfig, PruneConfig, compress, select
from shrinkformer.pack.format import dense_state

transformers = pytest.importorskip("transformers")


def marian(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.MarianConfig(vocab_size=80, d_model=16, encoder_layers=2, decoder_layers=2,
                                    encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                    decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=0,
                                    decoder_start_token_id=0, dropout=0.0)
    return transformers.MarianMTModel(cfg).eval()


def test_roles_are_found_in_marian_names():
    m = marian()
    assert len(select(m, ["self-attention"])) == 16
    assert len(select(m, ["cross-attention"])) == 8 and all("encoder_attn" in n for n in select(m, ["cross-attention"]))
    assert len(select(m, ["ffn"])) == 8
    assert len(select(m, ["encoder-self-attention"])) == 8
    assert "lm_head" not in select(m, ["all"])


@pytest.mark.parametrize("config, scope", [(KMeansConfig(3), "all"), (BinaryConfig("flex"), "self-attention"),
                                           (PruneConfig(0.6, 0.6), "ffn")],
                         ids=["kmeans3-all", "bsflex-self-attention", "prune60-ffn"])
def test_compressed_marian_equals_dense_marian_with_decompressed_weights(config, scope):
    m = marian()
    report = compress(m, config, scope)
    assert report.modules and all(n.startswith("model.") for n in report.modules)
    dense = marian(seed=1)
    dense.load_state_dict(dense_state(m))  # strict: every weight, compressed or not, is carried over
    ids, dec = torch.randint(1, 80, (2, 6)), torch.randint(1, 80, (2, 5))
    with torch.no_grad():
        a = m(input_ids=ids, decoder_input_ids=dec).logits
        b = dense(input_ids=ids, decoder_input_ids=dec).logits
    assert torch.equal(a, b)
    m.train()
    m(input_ids=ids, decoder_input_ids=dec).logits.sum().backward()  # retrainable as it stands
    assert any(p.grad is not None for n, p in m.named_parameters() if ".codec." in n)

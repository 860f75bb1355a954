import copy
import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shrinkformer.compress import BinaryConfig, FlexKMeansConfig, KMeansConfig, PruneConfig, compress
from shrinkformer.config import load_config
from shrinkformer.data.tokenizer import Tokenizer
from shrinkformer.errors import CheckpointError
from shrinkformer.model import Transformer
from shrinkformer.compress.base import CompressedEmbedding, CompressedLinear
from shrinkformer.inference.layers import PackedEmbedding, PackedLinear, resident_weight_bytes, to_inference
from shrinkformer.pack.format import fp32_size, load_packed, write_packed


@pytest.fixture(scope="module")
def tokenizer(multi30k):
    from shrinkformer.data.corpus import read_parallel
    raw = read_parallel(multi30k, "val", "en", "de")
    return Tokenizer.train(raw.source + raw.target, 200)


def tiny(tok, seed=0):
    cfg = load_config("tiny")
    cfg.model = dataclasses.replace(cfg.model, vocab_size=len(tok))
    torch.manual_seed(seed)
    return cfg, Transformer(cfg.model)


METHODS = {
    "kmeans4-all": [(KMeansConfig(4), "all")],
    "kmeans1-all": [(KMeansConfig(1), "all")],
    "bsflex-self-attention": [(BinaryConfig("flex"), "self-attention")],
    "binary-fixed-all": [(BinaryConfig("fixed"), "all")],
    "prune80-all": [(PruneConfig(0.8, 0.8), "all")],
    "prune-then-kmeans": [(PruneConfig(0.8, 0.8), "all"), (KMeansConfig(4), "all")],
    "prune-then-kmeans-flex": [(PruneConfig(0.5, 0.5), "all"), (FlexKMeansConfig(1), "all")],
    "kmeans-embeddings": [(KMeansConfig(6), "embeddings")],
    "bsflex-all-rowscale": [(BinaryConfig("flex", row_scale=True), "all")],  # the training step moves the scales
    "prune-then-kmeans2-rowscale": [(PruneConfig(0.5, 0.5), "all"), (KMeansConfig(2, row_scale=True), "all"),
                                    (KMeansConfig(4, row_scale=True), "embeddings")],
}


@pytest.mark.parametrize("name", METHODS)
def test_packed_model_reproduces_in_memory_outputs_exactly(name, tokenizer, tmp_path):
    cfg, m = tiny(tokenizer)
    for config, scope in METHODS[name]:
        compress(m, config, scope)
    if "flex" in name:  # a training step moves latent weights and centroids
        m.train()
        m(torch.randint(4, 50, (2, 5)), torch.randint(4, 50, (2, 4)))[0].sum().backward()
        with torch.no_grad():
            for p in m.parameters():
                if p.grad is not None:
                    p -= 0.1 * p.grad
    m.eval()
    size = write_packed(m, cfg, tokenizer, tmp_path / "m.sfz").file_bytes
    assert size == (tmp_path / "m.sfz").stat().st_size and size < fp32_size(m, tokenizer)
    _, tok2, loaded, _ = load_packed(tmp_path / "m.sfz")  # the inference form: weights stay packed
    training = load_packed(tmp_path / "m.sfz", training=True)[2]
    assert not any(isinstance(x, (CompressedLinear, CompressedEmbedding)) for x in loaded.modules())
    assert any(isinstance(x, (PackedLinear, PackedEmbedding)) for x in loaded.modules())
    src, tgt = torch.randint(4, 50, (3, 7)), torch.randint(4, 50, (3, 6))
    with torch.no_grad():
        expected = m(src, tgt)[0]
        assert torch.equal(expected, training(src, tgt)[0])
        torch.testing.assert_close(loaded(src, tgt)[0], expected, rtol=1e-4, atol=1e-5)
    assert tok2.model_proto == tokenizer.model_proto


@pytest.mark.parametrize("name", METHODS)
def test_to_inference_is_one_call_from_the_training_form(name, tokenizer):
    cfg, m = tiny(tokenizer)
    for config, scope in METHODS[name]:
        compress(m, config, scope)
    m.eval()
    packed = to_inference(copy.deepcopy(m))
    assert not any(isinstance(x, (CompressedLinear, CompressedEmbedding)) for x in packed.modules())
    src, tgt = torch.randint(4, 50, (3, 7)), torch.randint(4, 50, (3, 6))
    with torch.no_grad():
        torch.testing.assert_close(packed(src, tgt)[0], m(src, tgt)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["kmeans4-all", "kmeans1-all", "prune80-all", "prune-then-kmeans"])
def test_inference_form_holds_no_more_than_the_file(name, tokenizer, tmp_path, monkeypatch):
    """Resident weight bytes of the packed inference form within 1.15x of the packed file (without
    its tokenizer), also when the tiles are smaller than a layer."""
    import shrinkformer.inference.layers as inference

    cfg, m = tiny(tokenizer)
    for config, scope in METHODS[name]:
        compress(m, config, scope)
    packed = write_packed(m.eval(), cfg, tokenizer, tmp_path / "m.sfz")
    loaded = load_packed(tmp_path / "m.sfz")[2]
    assert resident_weight_bytes(loaded) <= 1.15 * (packed.file_bytes - packed.tokenizer_bytes)
    monkeypatch.setattr(inference, "TILE_FLOATS", 100)  # many tiles per layer, odd boundaries
    src, tgt = torch.randint(4, 50, (2, 5)), torch.randint(4, 50, (2, 4))
    with torch.no_grad():
        torch.testing.assert_close(loaded(src, tgt)[0], m(src, tgt)[0], rtol=1e-4, atol=1e-5)


def test_loading_never_builds_the_dense_weights(tokenizer, tmp_path, monkeypatch):
    """The model is built without storage and filled from the file: nothing is initialised while
    loading, nothing is left unfilled, and torch's compiler stack (imported by initialising meta
    tensors, 70 MB resident) stays out of the process."""
    import subprocess
    import sys
    cfg, m = tiny(tokenizer)
    compress(m, KMeansConfig(4), ["all", "embeddings"])
    write_packed(m.eval(), cfg, tokenizer, tmp_path / "m.sfz")
    calls = []
    monkeypatch.setattr(torch.nn.init, "xavier_uniform_", lambda t, *a, **k: calls.append(t.shape))
    for training in (False, True):
        loaded = load_packed(tmp_path / "m.sfz", training=training)[2]
        assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
        assert torch.equal(loaded.positions, m.positions)
    assert calls == []
    assert torch.nn.init.xavier_uniform_ is not torch.nn.init.normal_  # the initialisers are back
    probe = ("import sys; from shrinkformer.pack.format import load_packed; load_packed(sys.argv[1]); "
             "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "m.sfz")], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr[-500:]


def layer_bytes(path, name):
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        return sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys()
                   if k.startswith(name + ".") and k.rsplit(".", 1)[1] in ("centroids", "index", "mask", "values", "row_scale"))


def test_row_scales_cost_two_bytes_a_row_and_leave_old_keys_alone(tokenizer, tmp_path):
    """A scale per row is one float16 per output row beside the same indices and codebook; a
    config without them says nothing about them (the cache keys and file records written before
    the option stay the same)."""
    sizes = {}
    for row_scale in (False, True):
        cfg, m = tiny(tokenizer)
        compress(m, BinaryConfig("flex", row_scale=row_scale), "ffn")
        write_packed(m.eval(), cfg, tokenizer, tmp_path / f"{row_scale}.sfz")
        sizes[row_scale] = layer_bytes(tmp_path / f"{row_scale}.sfz", "encoder.layers.0.ffn.fc1")
    rows = m.encoder.layers[0].ffn.fc1.out_features
    assert sizes[True] - sizes[False] == 2 * rows
    assert BinaryConfig("flex").to_dict() == {"method": "binary", "centroids": "flex"}
    assert KMeansConfig(2, row_scale=True).to_dict()["row_scale"] is True


@pytest.mark.parametrize("bits", [1, 4])
def test_packed_codebook_layer_size(bits, tokenizer, tmp_path):
    cfg, m = tiny(tokenizer)
    compress(m, KMeansConfig(bits), "ffn")
    write_packed(m, cfg, tokenizer, tmp_path / "m.sfz")
    n = m.encoder.layers[0].ffn.fc1.codec.shape.numel()
    expected = n * bits / 8 + 4 * 2 ** bits
    assert abs(layer_bytes(tmp_path / "m.sfz", "encoder.layers.0.ffn.fc1") - expected) <= 0.01 * expected


def test_sparse_layer_is_smaller_than_dense_fp16(tokenizer, tmp_path):
    cfg, m = tiny(tokenizer)
    compress(m, PruneConfig(0.8, 0.8), "ffn")
    write_packed(m, cfg, tokenizer, tmp_path / "m.sfz")
    n = m.encoder.layers[0].ffn.fc1.codec.shape.numel()
    assert layer_bytes(tmp_path / "m.sfz", "encoder.layers.0.ffn.fc1") < 2 * n


@pytest.fixture(scope="module")
def packed_bytes(tokenizer, tmp_path_factory):
    cfg, m = tiny(tokenizer)
    compress(m, KMeansConfig(3), "all")
    path = tmp_path_factory.mktemp("p") / "m.sfz"
    write_packed(m.eval(), cfg, tokenizer, path)
    return path.read_bytes()


@given(st.data())
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_damaged_packed_files_give_clean_errors(packed_bytes, tmp_path, data):
    action = data.draw(st.sampled_from(["truncate", "flip", "garbage"]))
    blob = bytearray(packed_bytes)
    if action == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif action == "flip":
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob[pos] ^= data.draw(st.integers(1, 255))
    else:
        blob = bytearray(data.draw(st.binary(max_size=300)))
    path = tmp_path / "bad.sfz"
    path.write_bytes(bytes(blob))
    try:
        load_packed(path)
    except CheckpointError as err:
        assert "bad.sfz" in str(err) and "\n" not in str(err)
    # A flipped byte can land in JSON whitespace and change nothing; then the load must succeed.


def test_version_mismatch(packed_bytes, tmp_path):
    path = tmp_path / "v.sfz"
    path.write_bytes(packed_bytes.replace(b'"version":"1"', b'"version":"9"'))
    with pytest.raises(CheckpointError, match="packed format version 9 is not supported"):
        load_packed(path)


@given(st.lists(st.integers(0, 15), min_size=0, max_size=400), st.integers(0, 3))
@settings(max_examples=80, deadline=None)
def test_huffman_round_trip(symbols, skew):
    import numpy as np
    from shrinkformer.pack import entropy
    data = np.array(symbols + [0] * (skew * 50), dtype=np.int64)
    packed, lengths = entropy.encode(data, 16)
    assert np.array_equal(entropy.decode(packed, lengths, len(data)), data)


def test_huffman_handles_codes_longer_than_the_table():
    import numpy as np
    from shrinkformer.pack import entropy
    data = np.concatenate([np.repeat(np.arange(30), 2 ** np.arange(30)[::-1] // 2 ** 10 + 1)])  # Fibonacci-like skew
    packed, lengths = entropy.encode(data, 256)
    assert lengths.max() > entropy.TABLE_BITS
    assert np.array_equal(entropy.decode(packed, lengths, len(data)), data)


@pytest.mark.parametrize("name", ["kmeans4-all", "prune80-all", "prune-then-kmeans"])
def test_huffman_packed_files_are_smaller_and_load_exactly(name, tokenizer, tmp_path):
    cfg = load_config("tiny", None, ["model.d_model=128", "model.d_ff=512", f"model.vocab_size={len(tokenizer)}"])
    torch.manual_seed(0)
    m = Transformer(cfg.model)
    with torch.no_grad():  # bell-shaped weights, as trained ones are: clusters fill unevenly
        for p in m.parameters():
            p.normal_(0, 0.05)
    for config, scope in METHODS[name]:
        compress(m, config, scope)
    m.eval()
    plain = write_packed(m, cfg, tokenizer, tmp_path / "p.sfz").file_bytes
    huff = write_packed(m, cfg, tokenizer, tmp_path / "h.sfz", huffman=True).file_bytes
    assert huff < plain
    loaded = load_packed(tmp_path / "h.sfz", training=True)[2]
    packed = load_packed(tmp_path / "h.sfz")[2]
    src, tgt = torch.randint(4, 50, (3, 7)), torch.randint(4, 50, (3, 6))
    with torch.no_grad():
        assert torch.equal(m(src, tgt)[0], loaded(src, tgt)[0])
        torch.testing.assert_close(packed(src, tgt)[0], loaded(src, tgt)[0], rtol=1e-4, atol=1e-5)


def test_written_files_are_ordinary_readable_files(tokenizer, tmp_path):
    cfg, m = tiny(tokenizer)
    write_packed(m, cfg, tokenizer, tmp_path / "m.sfz")
    assert (tmp_path / "m.sfz").stat().st_mode & 0o044  # group/other may read, as with any file


def test_fp16_dense_storage_holds_exactly_the_rounded_model(tiny_run, tmp_path):
    from shrinkformer.checkpoint import load_model
    from shrinkformer.compress import KMeansConfig, compress
    from shrinkformer.pack.format import load_packed, round_dense_to_half, write_packed
    from shrinkformer.translate import Translator

    cfg, tok, model = load_model(tiny_run / "model.pt")
    compress(model, KMeansConfig(3), "ffn")  # the attention layers stay dense
    model.eval()
    full = write_packed(model, cfg, tok, tmp_path / "fp32.sfz")
    round_dense_to_half(model)
    half = write_packed(model, cfg, tok, tmp_path / "fp16.sfz", half_dense=True)
    dense = sum(v.numel() for k, v in model.state_dict().items() if ".codec." not in k and v.is_floating_point())
    # two bytes fewer per stored value; the header names either dtype in as many bytes but writes
    # smaller offsets in fewer digits
    assert 0 <= full.file_bytes - half.file_bytes - 2 * dense < 8 * len(model.state_dict())
    assert full.layer_bytes == half.layer_bytes  # the compressed layers are untouched
    _, _, loaded, _ = load_packed(tmp_path / "fp16.sfz", training=True)
    want = model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())
    lines = ["A man in a red shirt.", "Two children play football on the beach."]
    _, _, inference, _ = load_packed(tmp_path / "fp16.sfz")
    assert Translator(inference, tok).translate(lines) == Translator(model, tok).translate(lines)

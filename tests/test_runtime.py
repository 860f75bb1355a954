"""The torch-free runtime (``shrinkformer.runtime``): it reads every kind of packed file, translates
exactly as the torch side does (which runs the same engine), runs without torch at all, without
its native library (numpy) and with the portable kernels, and refuses bad input in one line."""

import ctypes
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shrinkformer.compress import BinaryConfig, KMeansConfig, PruneConfig, compress
from shrinkformer.inference import native
from shrinkformer.config import RunConfig
from shrinkformer.data.tokenizer import Tokenizer
from shrinkformer.errors import CheckpointError, ShrinkformerError
from shrinkformer.model import MODEL_PRESETS, SearchConfig, Transformer
from shrinkformer.model.transformer import EOS
from shrinkformer.pack.format import load_packed, write_packed
from shrinkformer.runtime import contract, sfz
from shrinkformer.runtime import native as runtime_native
from shrinkformer.runtime.translator import Translator as RuntimeTranslator
from shrinkformer.translate import Translator

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "results" / "multi30k" / "models"
KINDS = {
    "fp32": [],
    "4-bit + embeddings": [(KMeansConfig(4), "all"), (KMeansConfig(4), "embeddings")],
    "2-bit": [(KMeansConfig(2), "all")],
    "8-bit": [(KMeansConfig(8), "all")],  # no kernel: the runtime widens it to fp32 at load
    "1-bit": [(BinaryConfig("fixed"), "all")],
    "pruned fp32": [(PruneConfig(0.6, 0.6), "all")],
    "pruned 4-bit": [(PruneConfig(0.8, 0.8), "all"), (KMeansConfig(4), "all")],
    "pruned 2-bit, 50%": [(PruneConfig(0.5, 0.5), "all"), (KMeansConfig(2), "all")],  # decodes as dense 4-bit
    "pruned 1-bit, 95%": [(PruneConfig(0.95, 0.95), "all"), (KMeansConfig(1), "all")],  # stays pruned
    # a scale per row: the kernels apply it after their products; a pruned layer with row scales is widened to fp32
    "row-scaled BS-Flex + 4-bit embeddings": [(BinaryConfig("flex", row_scale=True), "all"),
                                              (KMeansConfig(4, row_scale=True), "embeddings")],
    "row-scaled pruned 2-bit": [(PruneConfig(0.5, 0.5), "all"), (KMeansConfig(2, row_scale=True), "all")],
}
LINES = ["a man rides a bike", "two dogs play in the snow .", "", "a woman with a red hat", "people walk", "the end"]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    words = "a man rides bike two dogs play in the snow woman with red hat people walk end . girl boy runs".split()
    rng = np.random.default_rng(0)
    sentences = [" ".join(rng.choice(words, size=8)) for _ in range(400)]
    return Tokenizer.train(sentences, vocab_size=48)


def packed_model(tmp_path: Path, tokenizer: Tokenizer, kind: str, pre_norm: bool = True, huffman: bool = False) -> Path:
    cfg = RunConfig()
    cfg.model = dataclasses.replace(MODEL_PRESETS["tiny"], vocab_size=len(tokenizer), pre_norm=pre_norm)
    torch.manual_seed(len(kind) + pre_norm)
    model = Transformer(cfg.model)
    with torch.no_grad():  # hypotheses of different lengths
        model.embed_tokens.weight[EOS] *= 3
    for config, scope in KINDS[kind]:
        compress(model, config, scope)
    path = tmp_path / f"{kind.replace(' ', '_')}-{pre_norm}-{huffman}.sfz"
    write_packed(model.eval(), cfg, tokenizer, path, huffman=huffman)
    return path


def torch_translations(path: Path, lines: list[str], batch: int) -> list[str]:
    cfg, tok, model, _ = load_packed(path)
    return Translator(model, tok, SearchConfig(beam_size=cfg.decode.beam_size), batch_sentences=batch,
                      native=False).translate(lines)


@pytest.mark.parametrize("variant", ["best", "portable", "numpy"])
@pytest.mark.parametrize("pre_norm", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_runtime_translates_as_the_pytorch_reference_search(tmp_path, tokenizer, fresh, kind, pre_norm, variant):
    path = packed_model(tmp_path, tokenizer, kind, pre_norm, huffman=kind == "pruned 4-bit")
    lines = LINES * 3  # 18 lines in batches of 8: 40 rows of beams, past every kernel's rows
    expected = torch_translations(path, lines, batch=8)
    if variant != "best":
        fresh.setenv("SHRINKFORMER_NATIVE", "0" if variant == "numpy" else "portable")
        native.reset()
    if variant == "numpy":
        with pytest.warns(RuntimeWarning, match="without its native library"):
            runtime = RuntimeTranslator.load(path, batch_sentences=8)
    else:
        runtime = RuntimeTranslator.load(path, batch_sentences=8)
        assert runtime_native.loaded_variant() == ("portable" if variant == "portable" else runtime_native.variant())
    assert runtime.translate(lines) == expected
    assert RuntimeTranslator.load(path, batch_sentences=1).translate(lines[:6]) == expected[:6]


@pytest.mark.parametrize("kind", ["fp32", "4-bit + embeddings", "pruned 1-bit, 95%"])
def test_the_search_in_c_finds_what_the_python_loop_finds(tmp_path, tokenizer, kind):
    """csrc/search.c is search.py's loop step for step: over the same engine the two return the
    same hypotheses, for batches where sentences finish at different steps, beams of 1 to 6, a
    length penalty and length limits that cut hypotheses off."""
    from shrinkformer.runtime.engine import Engine
    from shrinkformer.runtime.model import load
    from shrinkformer.runtime.search import SearchConfig as RuntimeSearch, search_loop

    model, _, _ = load(packed_model(tmp_path, tokenizer, kind))
    engine = Engine(model)
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 12, size=21)
    src = np.zeros((21, 12), dtype=np.int64)
    for i, n in enumerate(lengths):
        src[i, :n] = rng.integers(4, len(tokenizer), size=n)
        src[i, n - 1] = EOS
    P = model.spec.max_positions
    for cfg in (RuntimeSearch(beam_size=1), RuntimeSearch(beam_size=4), RuntimeSearch(beam_size=6, length_penalty=0.6),
                RuntimeSearch(beam_size=3, max_len_a=0.0, max_len_b=3), RuntimeSearch(beam_size=5, max_len_a=0.5)):
        assert engine.search(src, cfg, P) == search_loop(engine, src, cfg, P), cfg
        assert engine.search(src[:1], cfg, P) == search_loop(engine, src[:1], cfg, P), cfg
    assert engine.search(src[:0], RuntimeSearch(), P) == []


def test_the_c_layout_of_a_file_is_the_numpy_layout_byte_for_byte(tmp_path, tokenizer):
    """direct.py (csrc/prepare.c) and model.py (layers.py) lay every kind of layer out alike:
    the same kind, shape, bits and bytes of indices, codebook, mask, row offsets and values, for
    each test model (Huffman-coded too) and the committed ones."""
    from shrinkformer.runtime.direct import DirectModel
    from shrinkformer.runtime.model import load

    paths = [packed_model(tmp_path, tokenizer, kind, huffman=huffman) for kind in KINDS for huffman in (False, True)]
    paths += [COMMITTED / f"{name}.sfz" for name in ("mixed-20x", "kmeans-4bit-all+embeddings", "baseline")]
    for path in paths:
        direct, (arrays, _, _) = DirectModel(path), load(path)
        named = {"embed_tokens": arrays.embed}
        for stack, blocks in (("encoder", arrays.encoder), ("decoder", arrays.decoder)):
            for i, block in enumerate(blocks):
                named.update({f"{stack}.layers.{i}.{n}": p for n, p in zip(contract.PROJECTION_NAMES, block.proj) if p})
        for i, (k, _, v, _) in enumerate(arrays.cross):
            named[f"decoder.layers.{i}.cross_attn.k_proj"], named[f"decoder.layers.{i}.cross_attn.v_proj"] = k, v
        assert set(direct.prepared) == set(named), path
        for name, want in named.items():
            got = direct.prepared[name]
            assert (got.kind, got.rows, got.cols, got.bits) == (want.kind(), want.rows, want.cols, want.bits), (path, name)
            for field in ("index", "codebook", "values", "mask", "row_start", "row_scale"):
                a = getattr(want, field)
                address = getattr(got, field)
                assert (a is None) == (not address) or (a is not None and a.size == 0), (path, name, field)
                if a is not None and a.size:
                    assert ctypes.string_at(address, a.nbytes) == a.tobytes(), (path, name, field)


def test_the_runtime_translates_without_importing_numpy_or_sentencepiece(tmp_path):
    """Nor what makes a process large and only a build or a big batch needs: OpenSSL (hashlib),
    subprocess, logging, and OpenBLAS, which a sentence at a time never reaches."""
    heavy = ('numpy', 'sentencepiece', 'torch', 'hashlib', 'subprocess', 'logging')
    code = BLOCK_TORCH + ("import sys\nfrom shrinkformer.runtime import Translator\n"
                          "t = Translator.load(sys.argv[1], batch_sentences=1)\n"
                          "print(t.translate(['A man in an orange hat starring at something.'])[0])\n"
                          f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
                          "print('openblas' in open('/proc/self/maps').read())\n"
                          "t = Translator.load(sys.argv[1], batch_sentences=8)\n"
                          "t.translate(['A man in an orange hat starring at something.'] * 8)\n"
                          "print('openblas' in open('/proc/self/maps').read())\n")
    out = subprocess.run([sys.executable, "-c", code, str(COMMITTED / "mixed-20x.sfz")], capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}).stdout.splitlines()
    assert out == [torch_translations(COMMITTED / "mixed-20x.sfz", ["A man in an orange hat starring at something."],
                                      batch=1)[0], "[]", "False", "True"]  # 40 rows of beams: BLAS's products


def test_portable_and_simd_kernels_give_the_same_logits_to_rounding(tmp_path, tokenizer, fresh):
    from shrinkformer.runtime.engine import Engine
    from shrinkformer.runtime.model import load

    if runtime_native.variant() != "x86":
        pytest.skip("the SIMD variant does not run on this CPU")
    path = packed_model(tmp_path, tokenizer, "4-bit + embeddings")
    src = np.array([[5, 6, 7, 8, EOS], [9, 10, EOS, 0, 0]], dtype=np.int64)
    results = []
    for variant in ("1", "portable"):
        fresh.setenv("SHRINKFORMER_NATIVE", variant)
        native.reset()
        model, _, _ = load(path)
        engine = Engine(model)
        memory = engine.encode(src)
        session = engine.start(memory, src == 0, 2, 4)
        results.append((memory, session.step(np.array([1, 1, 1, 1]), 0, None, np.arange(2)).copy()))
    assert runtime_native.loaded_variant() == "portable"
    np.testing.assert_allclose(results[0][0][src != 0], results[1][0][src != 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5, atol=1e-5)


BLOCK_TORCH = "import sys\nclass _NoTorch:\n    def find_spec(self, name, path=None, target=None):\n" \
              "        if name == 'torch' or name.startswith('torch.'):\n" \
              "            raise ImportError('torch is not installed (blocked by the test)')\n" \
              "sys.meta_path.insert(0, _NoTorch())\n"


def test_the_runtime_translates_without_torch(tmp_path, tokenizer):
    """In a process where ``import torch`` fails: the Python API, ``shrinkformer-translate`` and
    ``shrinkformer translate`` all translate, exactly as the torch side does."""
    path = packed_model(tmp_path, tokenizer, "4-bit + embeddings")
    expected = torch_translations(path, LINES, batch=64)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_TORCH)
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    probe = "import torch"
    assert subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True).returncode != 0
    api = ("import sys, shrinkformer.runtime as r\nout = r.Translator.load(sys.argv[1]).translate(sys.argv[2:])\n"
           "assert 'torch' not in sys.modules\nprint('\\n'.join(out))")
    runs = [[sys.executable, "-c", api, str(path), *LINES],
            [sys.executable, "-m", "shrinkformer.runtime.cli", str(path)],
            [sys.executable, "-m", "shrinkformer", "translate", str(path), "--beam", "5", "--threads", "1"]]
    for command in runs:
        result = subprocess.run(command, env=env, input="\n".join(LINES) + "\n", capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split("\n")[: len(LINES)] == expected, command
    other = subprocess.run([sys.executable, "-m", "shrinkformer", "compress", str(path)], env=env, capture_output=True,
                           text=True, timeout=60)
    assert other.returncode == 2 and "needs the training install" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1


def test_the_runtime_reads_the_committed_models_as_the_torch_side_does():
    """The committed files (written before the runtime existed) load in the runtime and decode
    identically at batch 1."""
    lines = ["A man in an orange hat starring at something.", "A little girl climbing into a wooden playhouse."]
    for name in ("baseline", "kmeans-4bit-all+embeddings", "mixed-20x"):
        path = COMMITTED / f"{name}.sfz"
        assert RuntimeTranslator.load(path, batch_sentences=1).translate(lines) == \
            torch_translations(path, lines, batch=1), name


def test_a_struct_changed_on_one_side_is_an_error_at_load():
    lib = runtime_native.library()
    if lib is None:
        pytest.skip("no native library here")
    contract.check_layout(lib)  # as built

    class Narrower(ctypes.Structure):  # rows and cols 32-bit where C has 64: the offsets after them move
        _fields_ = [(n, ctypes.c_int32 if n in ("rows", "cols") else t) for n, t in contract.Layer._fields_]
    with pytest.raises(ShrinkformerError, match="struct layout differs"):
        contract.check_layout(lib, (Narrower, contract.DecoderLayer, contract.Decoder))

    class Shorter(ctypes.Structure):
        _fields_ = contract.Decoder._fields_[:-1]
    with pytest.raises(ShrinkformerError, match="struct layout differs"):
        contract.check_layout(lib, (contract.Layer, contract.DecoderLayer, Shorter))


def test_damaged_files_fail_in_one_line(tmp_path, tokenizer):
    path = packed_model(tmp_path, tokenizer, "4-bit + embeddings")
    data = path.read_bytes()
    cases = {"truncated": data[:5], "short": data[: len(data) // 2], "flipped": data[:-10] + bytes([data[-10] ^ 1])
             + data[-9:], "not ours": (len(b"{}").to_bytes(8, "little") + b"{}")}
    messages = {"truncated": "truncated", "short": "corrupt", "flipped": "checksum mismatch", "not ours": "not a shrinkformer"}
    for name, content in cases.items():
        bad = tmp_path / f"{name}.sfz"
        bad.write_bytes(content)
        with pytest.raises(CheckpointError, match=messages[name]) as err:
            sfz.read(bad)
        assert str(bad) in str(err.value) and "\n" not in str(err.value)
    result = subprocess.run([sys.executable, "-m", "shrinkformer.runtime.cli", str(tmp_path / "flipped.sfz")],
                            input="a man\n", capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().count("\n") == 0 and "checksum mismatch" in result.stderr
    usage = subprocess.run([sys.executable, "-m", "shrinkformer.runtime.cli", str(path), "--batch-size", "0"],
                           input="", capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "--batch-size must be >= 1" in usage.stderr


def test_a_named_output_appears_only_when_complete(tmp_path, tokenizer):
    path = packed_model(tmp_path, tokenizer, "1-bit")
    src = tmp_path / "in.txt"
    src.write_bytes("a man\n".encode() + b"\xff\xfe bad\n")
    out = tmp_path / "out.txt"
    result = subprocess.run([sys.executable, "-m", "shrinkformer.runtime.cli", str(path), "-i", str(src), "-o", str(out)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "invalid UTF-8 at byte" in result.stderr and not out.exists()
    src.write_text("a man\ntwo dogs\n")
    assert subprocess.run([sys.executable, "-m", "shrinkformer.runtime.cli", str(path), "-i", str(src), "-o", str(out)],
                          capture_output=True, timeout=60).returncode == 0
    assert out.read_text().splitlines() == torch_translations(path, ["a man", "two dogs"], batch=64)


def test_lightly_pruned_narrow_codebooks_decode_as_dense_4bit_with_the_same_weights(tmp_path, tokenizer):
    from shrinkformer.runtime.model import load

    path = packed_model(tmp_path, tokenizer, "pruned 2-bit, 50%")
    model, _, _ = load(path)
    fc1 = model.decoder[0].proj[6]
    assert fc1.mask is None and fc1.bits == 4  # decoding layout
    cfg, tok, torch_model, _ = load_packed(path)
    torch.testing.assert_close(torch.from_numpy(fc1.dequantize(0, fc1.rows)),
                               torch_model.decoder.layers[0].ffn.fc1.packed.dense(), rtol=0, atol=0)
    sparse, _, _ = load(packed_model(tmp_path, tokenizer, "pruned 1-bit, 95%"))
    assert sparse.decoder[0].proj[6].mask is not None  # few survivors: the pruned kernels pay


def test_row_scaled_layers_run_in_the_kernels_at_their_packed_width(tmp_path, tokenizer):
    """A layer with a scale per row stays a 4-bit-code layer (BS-Flex's two centroids as 4-bit
    codes) with its scales beside it, not an fp32 copy; its product is the scaled weight's."""
    from shrinkformer.runtime.model import load

    model, _, _ = load(packed_model(tmp_path, tokenizer, "row-scaled BS-Flex + 4-bit embeddings"))
    layers = [p for block in model.decoder for p in block.proj if p is not None] + [model.embed]
    assert all(p.kind() == contract.LAYER_KINDS[("codebook", 4, False)] and p.row_scale is not None for p in layers)
    assert all(p.resident_bytes < p.rows * p.cols for p in layers)  # under a byte a weight; fp32 would be 4
    lib = runtime_native.library()
    layer = model.decoder[0].proj[0]
    desc = layer.descriptor(wide=runtime_native.wide())
    x = np.random.default_rng(0).standard_normal((5, layer.cols)).astype(np.float32)
    bias = np.random.default_rng(1).standard_normal(layer.rows).astype(np.float32)
    y = np.empty((5, layer.rows), np.float32)
    lib.packed_layer_matmul_t(ctypes.byref(desc), x.ctypes.data, 5, bias.ctypes.data, y.ctypes.data)
    unscaled = np.empty_like(y)
    plain = layer.descriptor(wide=runtime_native.wide())
    plain.row_scale = None
    lib.packed_layer_matmul_t(ctypes.byref(plain), x.ctypes.data, 5, None, unscaled.ctypes.data)
    assert np.array_equal(y, unscaled * layer.row_scale + bias)  # the scale after the product, then the bias
    np.testing.assert_allclose(y, x @ layer.dequantize(0, layer.rows).T + bias, rtol=1e-5, atol=1e-5)

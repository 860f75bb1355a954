"""The C contract's Python side: ctypes mirrors of ``csrc/runtime.h``'s structs and every exported
function's signature, in one place. ``check_layout`` compares the mirrors' sizes and offsets with
the ones the library was compiled with (``shrinkformer_layout``), so a field changed on one side
only fails when the library loads instead of handing C a wrong pointer."""

from __future__ import annotations

import ctypes

from ..errors import ShrinkformerError

P, I64, F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
PROJECTIONS, NORMS = 8, 3  # runtime.h's enums
LAYER_KINDS = {("codebook", 4, False): 0, ("codebook", 1, False): 1, ("sparse", 32, True): 2,
               **{("codebook", b, True): 3 for b in (1, 2, 3, 4)}}  # (encoding, bits, pruned) -> LAYER_*
LAYER_DENSE, LAYER_LUT4_INT8, LAYER_KIND_COUNT = 4, 5, 6


class Layer(ctypes.Structure):
    """``packed_layer``."""
    _fields_ = [("kind", I64), ("wide", I64), ("rows", I64), ("cols", I64), ("bits", I64), ("index", P),
                ("values", P), ("codebook", P), ("mask", P), ("row_start", P), ("qcodebook", P), ("qsum", P),
                ("qscale", F32), ("row_scale", P), ("gindex", P), ("gbasis", P), ("gcols", I64)]


class DecoderLayer(ctypes.Structure):
    """``decoder_layer``: projections in runtime.h's SELF_Q..FC2 order, norms SELF..FFN."""
    _fields_ = [("proj", P * PROJECTIONS), ("bias", P * PROJECTIONS), ("norm_weight", P * NORMS),
                ("norm_bias", P * NORMS), ("self_k", P), ("self_v", P), ("cross_k", P), ("cross_v", P)]


class Decoder(ctypes.Structure):
    """``decoder_desc`` (the encoder uses it too)."""
    _fields_ = [("layers", I64), ("C", I64), ("heads", I64), ("ffn", I64), ("vocab", I64), ("capacity", I64),
                ("S", I64), ("pre_norm", I64), ("eps", F32), ("layer", P), ("final_weight", P), ("final_bias", P),
                ("out", P), ("embed", P), ("positions", P), ("embed_scale", F32), ("key_padding", P),
                ("ancestry", P), ("half_kv", I64)]


class Search(ctypes.Structure):
    """``search_desc``."""
    _fields_ = [("encoder", P), ("decoder", P), ("cross", P), ("cross_bias", P), ("max_positions", I64),
                ("beam", I64), ("max_len_b", I64), ("pad", I64), ("bos", I64), ("eos", I64), ("max_len_a", F32),
                ("length_penalty", ctypes.c_double), ("half_kv", I64)]


class LayerParts(ctypes.Structure):
    """``layer_parts``: a compressed layer's parts as the file stores them (prepare.c)."""
    _fields_ = [*((name, I64) for name in ("rows", "cols", "encoding", "bits", "count", "index_huffman", "mask_kind",
                                           "mask_symbols")),
                ("centroids", P), ("n_centroids", I64), ("values", P), ("n_values", I64), ("index", P),
                ("index_lengths", P), ("mask", P), ("mask_lengths", P), ("index_bytes", I64), ("n_index_lengths", I64),
                ("mask_bytes", I64), ("n_mask_lengths", I64), ("row_scale", P), ("n_row_scale", I64)]


ENCODINGS = {"codebook": 0, "sparse": 1, "dense": 2}  # runtime.h's ENCODING_*
MASKS = {None: 0, "bitmask": 1, "positions": 2, "huffman-positions": 3}  # MASK_*
# runtime.h's orders, by module and state-dict name
PROJECTION_NAMES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                    "cross_attn.q_proj", "cross_attn.out_proj", "ffn.fc1", "ffn.fc2")
NORM_NAMES = ("self_attn_norm", "cross_attn_norm", "ffn_norm")
CROSS_NAMES = ("cross_attn.k_proj", "cross_attn.v_proj")  # projected once per batch from the encoder's output

STRUCTS = (Layer, DecoderLayer, Decoder, Search, LayerParts)  # in SHRINKFORMER_LAYOUT's order

# name -> (restype, argtypes)
FUNCTIONS = {
    "packed_layer_matmul_t": (None, [P, P, I64, P, P]),
    "lut_dequant": (None, [P, ctypes.c_int, I64, I64, P, P]),
    "masked_dequant": (None, [P, I64, I64, P]),
    "packed_kernels_init": (None, []),
    "packed_kernels_threaded": (ctypes.c_int, []),
    "decoder_step": (None, [P, P, P, I64, I64, I64, P, P, P, P]),
    "decoder_step_scratch": (I64, [P, I64]),
    "decoder_step_configure": (None, [P, I64, I64, I64, I64, I64]),
    "decoder_project": (None, [P, P, I64, P, P, P]),
    "decoder_tile_floats": (I64, []),
    "encoder_forward": (None, [P, P, I64, P, P, P]),
    "encoder_scratch": (I64, [P, I64]),
    "beam_select": (I64, [P, I64, I64, I64, P, P, I64, I64, I64, P, P, P, P]),
    "beam_search": (I64, [P, P, I64, I64, P, P]),
    "sinusoid_table": (None, [P, I64, I64]),
    "layer_prepare": (I64, [P, P]),
    "layer_release": (None, [P]),
    "layer_to_int8": (I64, [P]),
    "layer_to_grouped": (I64, [P]),
    "layer_release_grouped": (None, [P]),
    "int8_row": (None, [P, I64, P]),
    "half_to_float": (None, [P, I64, P]),
    "float_to_half": (None, [P, I64, P]),
    "kv_narrow": (None, [P, I64, P]),
    "spm_load": (P, [P, I64]),
    "spm_error": (ctypes.c_char_p, [P]),
    "spm_free": (None, [P]),
    "spm_size": (I64, [P]),
    "spm_encode": (I64, [P, P, I64, P, I64]),
    "spm_decode": (I64, [P, P, I64, P, I64]),
    "shrinkformer_layout": (I64, [P, I64]),
    "shrinkformer_set_threads": (None, [I64]),
    "shrinkformer_threads": (I64, []),
    "shrinkformer_source_hash": (ctypes.c_char_p, []),
    "shrinkformer_variant": (ctypes.c_char_p, []),
}


def declare(lib: ctypes.CDLL) -> None:
    for name, (restype, argtypes) in FUNCTIONS.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes


def expected_layout(structs: tuple[type[ctypes.Structure], ...] = STRUCTS) -> list[int]:
    """What ``shrinkformer_layout`` must report for these mirrors."""
    values = []
    for struct in structs:
        values.append(ctypes.sizeof(struct))
        values += [getattr(struct, name).offset for name, _ in struct._fields_]
    return values + [PROJECTIONS, NORMS, LAYER_KIND_COUNT]


def check_layout(lib: ctypes.CDLL, structs: tuple[type[ctypes.Structure], ...] = STRUCTS) -> None:
    """Raise where the library's structs are not laid out as the mirrors are."""
    buffer = (ctypes.c_int64 * 256)()
    got = list(buffer[: lib.shrinkformer_layout(buffer, 256)])
    want = expected_layout(structs)
    if got != want:
        first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        raise ShrinkformerError(f"the native library's struct layout differs from runtime/contract.py at value {first} "
                                f"(library {got[first:first + 1]}, Python {want[first:first + 1]}): rebuild it "
                                f"(pip install -e .)")

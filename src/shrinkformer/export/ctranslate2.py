"""Export to CTranslate2: our Transformer as a ``TransformerSpec``, the SentencePiece model beside it.

Compressed models are exported with their effective (decompressed) weights; CTranslate2 then stores
them in float32 or quantizes them itself (int8). Two traps the mapping handles: CTranslate2 does not
forbid generating BOS, so translation suppresses it as our beam search does; and ``spec.optimize()``
changes the arrays it is given in place, so every array handed over is a copy.

The layout follows CTranslate2's own converters: self-attention as one fused QKV projection,
cross-attention as a query projection and a fused key/value projection, pre-norm layer norms in
front of each block, and our interleaved sinusoidal position table given explicitly (CTranslate2's
built-in table concatenates the sines and cosines instead).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..data.tokenizer import Tokenizer
from ..errors import OutputError, UsageError
from ..io import ensure_parent
from ..model.transformer import Transformer
from ..special_tokens import BOS, EOS, PAD, UNK

QUANTIZATIONS = ("float32", "int8", "int8_float32")
TOKENIZER_FILE = "sentencepiece.model"


def _require():
    try:
        import ctranslate2
    except ImportError:
        raise UsageError("exporting to CTranslate2 needs the ctranslate2 package: "
                         "pip install 'shrinkformer[export]'") from None
    return ctranslate2


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy().copy()  # a copy: optimize() quantizes in place


def _linear(spec, *linears) -> None:
    """One CTranslate2 linear layer from one or several of ours (fused along the output rows)."""
    spec.weight = _array(torch.cat([m.weight for m in linears]))
    if all(m.bias is not None for m in linears):
        spec.bias = _array(torch.cat([m.bias for m in linears]))


def _norm(spec, norm: torch.nn.LayerNorm) -> None:
    spec.gamma, spec.beta = _array(norm.weight), _array(norm.bias)


def build_spec(model: Transformer, tokenizer: Tokenizer):
    """The ``TransformerSpec`` holding ``model``'s effective weights and vocabulary."""
    ct2 = _require()
    from ctranslate2.specs import common_spec, transformer_spec

    cfg = model.cfg
    if not cfg.tie_embeddings:
        raise UsageError("CTranslate2 export expects tied input/output embeddings (model.tie_embeddings)")
    spec = transformer_spec.TransformerSpec.from_config((cfg.encoder_layers, cfg.decoder_layers), cfg.n_heads,
                                                        pre_norm=cfg.pre_norm,
                                                        activation=common_spec.Activation.RELU)
    spec.config.layer_norm_epsilon = model.encoder.layers[0].self_attn_norm.eps
    with torch.no_grad():
        embed = model.embed_tokens.weight
        positions = _array(model.positions)
        for stack in (spec.encoder, spec.decoder):
            (stack.embeddings[0] if isinstance(stack.embeddings, list) else stack.embeddings).weight = _array(embed)
            stack.position_encodings.encodings = positions.copy()
            stack.scale_embeddings = True
        spec.decoder.projection.weight = _array(embed)
        if cfg.pre_norm:
            _norm(spec.encoder.layer_norm, model.encoder.final_norm)
            _norm(spec.decoder.layer_norm, model.decoder.final_norm)
        for ours, theirs in zip(model.encoder.layers, spec.encoder.layer):
            _attention_block(theirs.self_attention, ours.self_attn, ours.self_attn_norm, self_attention=True)
            _ffn_block(theirs.ffn, ours)
        for ours, theirs in zip(model.decoder.layers, spec.decoder.layer):
            _attention_block(theirs.self_attention, ours.self_attn, ours.self_attn_norm, self_attention=True)
            _attention_block(theirs.attention, ours.cross_attn, ours.cross_attn_norm, self_attention=False)
            _ffn_block(theirs.ffn, ours)
    pieces = vocabulary(tokenizer)
    spec.register_source_vocabulary(pieces)
    spec.register_target_vocabulary(pieces)
    spec.config.unk_token, spec.config.bos_token = pieces[UNK], pieces[BOS]
    spec.config.eos_token, spec.config.decoder_start_token = pieces[EOS], pieces[BOS]
    del ct2
    return spec


def _attention_block(spec, attn, norm, self_attention: bool) -> None:
    _norm(spec.layer_norm, norm)
    if self_attention:
        _linear(spec.linear[0], attn.q_proj, attn.k_proj, attn.v_proj)
        _linear(spec.linear[1], attn.out_proj)
    else:
        _linear(spec.linear[0], attn.q_proj)
        _linear(spec.linear[1], attn.k_proj, attn.v_proj)
        _linear(spec.linear[2], attn.out_proj)


def _ffn_block(spec, layer) -> None:
    _norm(spec.layer_norm, layer.ffn_norm)
    _linear(spec.linear_0, layer.ffn.fc1)
    _linear(spec.linear_1, layer.ffn.fc2)


def vocabulary(tokenizer: Tokenizer) -> list[str]:
    """Our token ids as CTranslate2 token strings, id for id."""
    pieces = [tokenizer.sp.id_to_piece(i) for i in range(len(tokenizer))]
    if len(set(pieces)) != len(pieces):
        raise UsageError("the SentencePiece vocabulary has repeated pieces; CTranslate2 needs them distinct")
    return pieces


def export(model: Transformer, tokenizer: Tokenizer, output: Path, quantization: str = "float32") -> Path:
    """Write a CTranslate2 model directory (model.bin, config, vocabularies) with the SentencePiece
    model beside it. ``output`` must not exist: it appears whole, or not at all."""
    if quantization not in QUANTIZATIONS:
        raise UsageError(f"--quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    output = Path(output)
    if output.exists():
        raise OutputError(f"{output} already exists; remove it or choose another output directory")
    spec = build_spec(model, tokenizer)
    spec.validate()
    spec.optimize(quantization=quantization)
    ensure_parent(output)
    tmp = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}."))
    try:
        spec.save(str(tmp))
        (tmp / TOKENIZER_FILE).write_bytes(tokenizer.model_proto)
        tmp.rename(output)
    except OSError as err:
        raise OutputError(f"cannot write {output}: {err.strerror or err}") from None
    except RuntimeError as err:  # CTranslate2's C++ writer says what failed, without an errno
        raise OutputError(f"cannot write {output}: {str(err).splitlines()[0] if str(err) else 'write failed'}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output


class CTranslate2Translator:
    """Translate text with an exported directory, as ``Translator`` does with our models: the same
    tokenization, EOS after the source, BOS and PAD never generated, the same length limit."""

    def __init__(self, directory: Path, beam_size: int = 5, length_penalty: float = 1.0, max_len_a: float = 1.2,
                 max_len_b: int = 10, threads: int = 0, batch_sentences: int = 64) -> None:
        ct2 = _require()
        self.translator = ct2.Translator(str(directory), device="cpu", inter_threads=1, intra_threads=threads)
        self.tokenizer = Tokenizer((Path(directory) / TOKENIZER_FILE).read_bytes())
        self.pieces = vocabulary(self.tokenizer)
        self.beam_size, self.length_penalty = beam_size, length_penalty
        self.max_len_a, self.max_len_b, self.batch_sentences = max_len_a, max_len_b, batch_sentences

    def translate(self, lines: Sequence[str]) -> list[str]:
        todo = [i for i, line in enumerate(lines) if line.strip()]
        ids = self.tokenizer.encode([lines[i] for i in todo])
        hyps: list[list[int]] = [[] for _ in ids]
        index = {p: i for i, p in enumerate(self.pieces)}
        # CTranslate2 takes one length limit per batch; ours is per sentence (a * source length + b,
        # counting the source's EOS), so a batch holds sources of one length.
        by_length: dict[int, list[int]] = {}
        for i in sorted(range(len(ids)), key=lambda i: len(ids[i])):
            by_length.setdefault(len(ids[i]), []).append(i)
        for length, members in by_length.items():
            limit = int((length + 1) * self.max_len_a + self.max_len_b) - 1  # ours counts the EOS
            for start in range(0, len(members), self.batch_sentences):
                chunk = members[start:start + self.batch_sentences]
                source = [[self.pieces[t] for t in ids[i]] + [self.pieces[EOS]] for i in chunk]
                results = self.translator.translate_batch(
                    source, beam_size=self.beam_size, length_penalty=self.length_penalty,
                    max_decoding_length=limit, suppress_sequences=[[self.pieces[BOS]], [self.pieces[PAD]]],
                    max_input_length=0)
                for i, r in zip(chunk, results):
                    hyps[i] = [index[p] for p in r.hypotheses[0]]
        out = [""] * len(lines)
        for i, text in zip(todo, self.tokenizer.decode(hyps)):
            out[i] = text
        return out

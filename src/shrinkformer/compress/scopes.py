"""Which modules a compression applies to: roles (``self-attention``, ``ffn`` ...) recognised from
module names, plus include/exclude glob patterns. Names follow shrinkformer's model and Hugging
Face's Marian/BART family alike (``self_attn``, ``encoder_attn``/``cross_attn``, ``fc1``/``fc2``)."""

from __future__ import annotations

import fnmatch
import re
from typing import Callable, Iterable

from torch import nn

from ..errors import UsageError


def _in(part: str) -> Callable[[str], bool]:
    return lambda name: re.search(rf"(^|\.){part}(\.|$)", name) is not None


_self, _cross = _in("self_attn"), lambda n: _in("cross_attn")(n) or _in("encoder_attn")(n)
_enc, _dec = _in("encoder"), _in("decoder")
_ffn = lambda n: _in("ffn")(n) or _in("fc1")(n) or _in("fc2")(n)  # noqa: E731

ROLES: dict[str, Callable[[str], bool]] = {
    "all": lambda n: _enc(n) or _dec(n),
    "self-attention": _self,
    "encoder-self-attention": lambda n: _self(n) and _enc(n),
    "decoder-self-attention": lambda n: _self(n) and _dec(n),
    "cross-attention": _cross,
    "attention": lambda n: _self(n) or _cross(n),
    "ffn": _ffn,
    "embeddings": lambda n: True,  # every nn.Embedding (only embeddings are eligible for this role)
}


def eligible(model: nn.Module) -> dict[str, nn.Module]:
    """Linear and Embedding modules, compressed ones included (pruned layers can be quantized)."""
    from .base import CompressedEmbedding, CompressedLinear
    kinds = (nn.Linear, nn.Embedding, CompressedLinear, CompressedEmbedding)
    return {n: m for n, m in model.named_modules() if isinstance(m, kinds)}


def select(model: nn.Module, scopes: Iterable[str] = ("all",), include: Iterable[str] = (),
           exclude: Iterable[str] = ()) -> dict[str, nn.Module]:
    """Modules matching any scope or include pattern and no exclude pattern, in model order.

    ``include`` adds to the scopes (with no scope, it is the whole selection); ``exclude`` removes
    from both. A pattern that matches no module at all is an error, whatever the scopes chose: a
    typo must not silently compress (or spare) the wrong layers."""
    scopes, include, exclude = list(scopes), list(include), list(exclude)
    unknown = [s for s in scopes if s not in ROLES]
    if unknown:
        raise UsageError(f"unknown scope {unknown[0]!r} (known: {', '.join(ROLES)}; or --include PATTERN)")
    candidates = eligible(model)
    for flag, patterns in (("--include", include), ("--exclude", exclude)):
        for p in patterns:
            if not any(fnmatch.fnmatchcase(name, p) for name in candidates):
                raise UsageError(f"{flag} {p!r} matches no module; modules: {_listing(candidates)}")
    chosen = {}
    for name, module in candidates.items():
        is_embedding = isinstance(module, nn.Embedding) or type(module).__name__ == "CompressedEmbedding"
        by_role = any(ROLES[s](name) and (is_embedding == (s == "embeddings")) for s in scopes)
        by_pattern = any(fnmatch.fnmatchcase(name, p) for p in include)
        if (by_role or by_pattern) and not any(fnmatch.fnmatchcase(name, p) for p in exclude):
            chosen[name] = module
    if not chosen:
        raise UsageError(f"scope {'+'.join(scopes + include) or 'none'} matches no module; modules: "
                         f"{_listing(candidates)}")
    return chosen


def _listing(modules: dict[str, nn.Module]) -> str:
    names = list(modules)
    return ", ".join(names[:40]) + (f", ... ({len(names)} in all)" if len(names) > 40 else "")

"""Canonical Huffman coding of byte-sized symbols (Deep Compression's third stage): cluster
indices, whose clusters are unevenly filled, and the gaps between surviving weights of a pruned
layer, which are short far more often than long.

A stream is stored as its code lengths (one byte per symbol of the alphabet) and the packed bits;
canonical codes are rebuilt from the lengths, so no tree is stored.
"""

from __future__ import annotations

import heapq

import numpy as np

TABLE_BITS = 16  # codes up to this long decode by one table lookup; longer ones bit by bit


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code length per symbol (0 for symbols that never occur)."""
    present = np.flatnonzero(counts)
    lengths = np.zeros(len(counts), dtype=np.int64)
    if len(present) == 1:
        lengths[present] = 1
        return lengths
    heap = [(int(counts[s]), i, [int(s)]) for i, s in enumerate(present)]
    heapq.heapify(heap)
    tie = len(heap)
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        lengths[s1 + s2] += 1
        heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
        tie += 1
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code values: symbols sorted by (length, symbol) take consecutive codes."""
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, prev = 0, 0
    for s in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - prev
        codes[s], prev = code, int(lengths[s])
        code += 1
    return codes


def encode(symbols: np.ndarray, alphabet: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(packed bits as uint8, code lengths as uint8 for symbols 0..the largest present)."""
    symbols = np.asarray(symbols, dtype=np.int64)
    if symbols.size == 0:
        return np.zeros(0, np.uint8), np.zeros(0, np.uint8)
    lengths = code_lengths(np.bincount(symbols, minlength=alphabet))[: int(symbols.max()) + 1]
    codes = canonical_codes(lengths)
    sym_len, sym_code = lengths[symbols], codes[symbols]
    starts = np.concatenate([[0], np.cumsum(sym_len)[:-1]])
    bits = np.zeros(int(sym_len.sum()), dtype=np.uint8)
    for j in range(int(sym_len.max())):  # the j-th bit of every code at once
        has = sym_len > j
        bits[starts[has] + j] = (sym_code[has] >> (sym_len[has] - 1 - j)) & 1
    return np.packbits(bits), lengths.astype(np.uint8)


def decode(packed: np.ndarray, lengths: np.ndarray, n: int) -> np.ndarray:
    """The first n symbols of a stream written by ``encode``."""
    lengths = lengths.astype(np.int64)
    if n == 0:
        return np.zeros(0, np.int64)
    codes = canonical_codes(lengths)
    width = min(int(lengths.max()), TABLE_BITS)
    bits = np.unpackbits(packed)
    padded = np.concatenate([bits, np.zeros(width, np.uint8)]).astype(np.int64)
    # The next `width` bits at every offset, as one integer.
    window = np.zeros(len(bits), dtype=np.int64)
    for j in range(width):
        window = (window << 1) | padded[j:j + len(bits)]
    table_sym = np.full(1 << width, -1, dtype=np.int64)
    table_len = np.zeros(1 << width, dtype=np.int64)
    for s in np.flatnonzero((lengths > 0) & (lengths <= width)):
        lo = int(codes[s]) << (width - int(lengths[s]))
        table_sym[lo:lo + (1 << (width - int(lengths[s])))] = s
        table_len[lo:lo + (1 << (width - int(lengths[s])))] = lengths[s]
    long_codes = {(int(lengths[s]), int(codes[s])): int(s) for s in np.flatnonzero(lengths > width)}
    sym_at, len_at = table_sym[window].tolist(), table_len[window].tolist()
    out = np.empty(n, dtype=np.int64)
    pos = 0
    bit_list = bits.tolist() if long_codes else None
    for k in range(n):
        s = sym_at[pos]
        if s >= 0:
            out[k] = s
            pos += len_at[pos]
            continue
        code, length = 0, 0  # a code longer than the table: read on bit by bit
        while (length, code) not in long_codes:
            code, length = (code << 1) | bit_list[pos + length], length + 1
            if length > 64:
                raise ValueError("corrupt Huffman stream")
        out[k] = long_codes[(length, code)]
        pos += length
    return out

"""The special token ids that the tokenizer assigns and batching, the model and beam search rely on.

They live below all three so that none of them imports another for four integers."""

PAD, UNK, BOS, EOS = 0, 1, 2, 3

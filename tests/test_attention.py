import json

import torch

from shrinkformer.cli import main
from shrinkformer.experiments.attention import js_divergence, quantizer


def test_quantizer_keeps_distributions_and_masks():
    p = torch.softmax(torch.randn(2, 3, 5, 7), -1)
    p[..., 5:] = 0  # masked keys
    p = p / p.sum(-1, keepdim=True)
    levels = torch.tensor([0.0, 0.1, 0.3, 0.6])
    q = quantizer(levels)(p)
    torch.testing.assert_close(q.sum(-1), torch.ones(2, 3, 5))
    assert (q[..., 5:] == 0).all()
    # Before renormalisation every value is one of the levels: each row is a rescaled level vector.
    ratios = q / q.amax(-1, keepdim=True)
    assert ratios.unique().numel() <= 4 * 2 * 3 * 5
    assert js_divergence(p, p).abs().max() < 1e-6 and (js_divergence(p, q) >= -1e-7).all()


def test_all_zero_rows_become_one_hot_on_their_maximum():
    p = torch.tensor([[0.3, 0.3, 0.4]])
    q = quantizer(torch.tensor([0.0, 1.0]))(p)
    assert q.tolist() == [[0.0, 0.0, 1.0]]


def test_attention_command_writes_report(tiny_run, multi30k, tmp_path):
    out = tmp_path / "att"
    assert main(["-q", "attention", str(tiny_run / "model.pt"), "--data-dir", str(multi30k), "-o", str(out),
                 "--sentences", "20", "--test-sentences", "30", "--beam", "1", "--k", "2,16,64", "--threads", "1"]) == 0
    r = json.loads((out / "attention.json").read_text())
    km = r["levels"]["kmeans"]
    assert set(km) == {"2", "16", "64"} and set(r["levels"]) == {"kmeans", "uniform"}
    assert km["64"]["js_mean"] < km["16"]["js_mean"] < km["2"]["js_mean"]  # more levels, closer distributions
    layers = km["16"]["layers"]
    assert set(layers) == {"encoder.layers.0", "encoder.layers.1", "decoder.layers.0", "decoder.layers.1"}
    assert all(len(v["js_mean"]) == 2 for v in layers.values())  # per head
    assert all(len(v) == 16 for v in km["16"]["level_values"].values())
    assert "smallest k within 0.3 BLEU" in (out / "attention.md").read_text()
    assert (out / "attention_hist.png").stat().st_size > 10_000

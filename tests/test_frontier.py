"""The frontier: numbered points by ratio, the best row per band by its weakest test set, a PNG and
a self-contained HTML page that name every row."""

from shrinkformer.experiments import frontier
from shrinkformer.experiments.comparisons import pairs

SPLITS = ["a", "b"]


def row(name, method, ratio, ret_a, ret_b):
    return {"name": name, "method": method, "status": "ok", "model_compression_ratio": ratio, "compression_ratio": ratio,
            "bleu": 30 * ret_a, "bleu_retention": ret_a,
            "tests": {"a": {"bleu_retention": ret_a}, "b": {"bleu_retention": ret_b}}}


ROWS = [{"name": "baseline", "method": "none", "status": "ok", "bleu_retention": 1.0, "model_compression_ratio": 1.0},
        row("kmeans-4bit-all", "kmeans", 2.7, 1.0, 0.99),
        row("mixed-20x", "mixed", 20.0, 0.96, 0.90),
        row("mixed-20x-teacher", "mixed", 20.0, 0.95, 0.94),
        row("mixed-32x", "mixed", 32.0, 0.76, 0.70),
        {"name": "mixed-32x-teacher", "method": "mixed", "status": "pending"}]


def test_points_are_numbered_by_ratio_and_bands_pick_the_row_that_holds_up_everywhere(tmp_path):
    pts = frontier.points(ROWS, SPLITS)
    assert [(p["number"], p["name"]) for p in pts] == [(1, "kmeans-4bit-all"), (2, "mixed-20x"),
                                                      (3, "mixed-20x-teacher"), (4, "mixed-32x")]
    assert pts[0]["study"] == 98.43  # the study's WMT figure for the same method
    best = {b["band"]: (b["rows"], b["best"]["name"]) for b in frontier.bands(pts)}
    assert best == {"1–4x": (1, "kmeans-4bit-all"), "16–25x": (2, "mixed-20x-teacher"), "32–50x": (1, "mixed-32x")}
    text = "\n".join(frontier.markdown(pts, SPLITS))
    assert "| 16–25x | 2 | mixed-20x-teacher | 20.00x | 95.0 | 94.0 |" in text
    assert "| 1 | kmeans-4bit-all | 2.70x | 100.0 | 99.0 | 98.4 |" in text
    frontier.plot(pts, tmp_path / "f.png", "t")
    frontier.write_html(pts, SPLITS, tmp_path / "f.html", "t")
    assert (tmp_path / "f.png").stat().st_size > 10_000
    page = (tmp_path / "f.html").read_text()
    assert "<script" not in page and page.count("<title>") == 1 + len(pts) + 1  # page, points, the study's point
    assert all(f"{p['name']} — {p['ratio']:.2f}x" in page for p in pts)


def test_a_distilled_row_is_tested_against_its_twin_and_the_data_control():
    rows = ROWS[:4] + [row("control", "none", 1.0, 1.0, 1.0), row("control-teacher", "none", 1.0, 0.99, 1.0)]
    stated = pairs(rows)
    assert ("mixed-20x", "mixed-20x-teacher") in stated
    assert ("control-teacher", "mixed-20x-teacher") in stated and ("control", "control-teacher") in stated

"""results.json, results.csv and report.md from the sweep's rows and its significance tests. Every
figure comes from the rows; every comparison the findings state carries its paired bootstrap test,
and a difference is called one only where the test says so (p < 0.05)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

from ..evaluate.significance import ALPHA, RESAMPLES
from ..io import write_text_atomic
from . import frontier
from .comparisons import QUANTIZERS, ROW_SCALED, find, one_shot_peers, respread, retrained_twin, uniform_below
from .grid import EXPERIMENTS, STUDY_WMT
from .sweep import ROW_FIELDS


def _fmt(x: Any, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if x is None else format(x, spec) + suffix


def write_results(result: dict[str, Any], output: Path) -> None:
    write_text_atomic(output / "results.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=ROW_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in result["rows"]:
        writer.writerow(row)
    write_text_atomic(output / "results.csv", buf.getvalue())
    write_text_atomic(output / "report.md", render(result))


def _row(rows: list[dict], name: str) -> dict | None:
    r = next((r for r in rows if r["name"] == name), None)
    return r if r and r.get("status") == "ok" else None


def _p(c: dict) -> str:
    return "p < 0.001" if c["p_value"] < 0.001 else f"p = {c['p_value']:.3f}"


def _cell(c: dict | None) -> str:
    """A table cell: the BLEU difference, starred when significant, with its p-value."""
    if c is None:
        return "–"
    return f"{c['delta']:+.2f}{'*' if c['significant'] else ''} ({c['p_value']:.3f})"


def summary(comps: list[dict], a: str, b: str, splits: Sequence[str], what: str | None = None) -> str:
    """How ``b`` compares with ``a`` across the test splits, in words that follow the tests."""
    found = [(s, c) for s in splits if (c := find(comps, a, b, s))]
    if not found:
        return "(no significance test: translations were not kept for this row)"
    what = what or f"{b} vs {a}"
    better = [s for s, c in found if c["significant"] and c["delta"] > 0]
    worse = [s for s, c in found if c["significant"] and c["delta"] < 0]
    figures = "; ".join(f"{c['delta']:+.2f} BLEU on {s} ({_p(c)})" for s, c in found)
    n = len(found)
    if not better and not worse:
        verdict = (f"no significant difference on {'any of the ' + str(n) + ' test sets' if n > 1 else 'the test set'}")
    else:
        parts = []
        if better:
            parts.append(f"significantly higher on {_count(better, n)}")
        if worse:
            parts.append(f"significantly lower on {_count(worse, n)}")
        verdict = " and ".join(parts)
    return f"{what}: {figures} — {verdict}"


def _count(splits: list[str], n: int) -> str:
    if len(splits) == n:
        return "all " + str(n) + " test sets" if n > 1 else "the test set"
    return f"{len(splits)} of {n} ({', '.join(splits)})"


def _verdict(hi: int, lo: int, n: int, subject: str, better: str, worse: str) -> str:
    """A finding worded by how many test sets the paired bootstrap separates: "significantly"
    only where every tested set agrees; one set of several is reported as such, not as a result."""
    if hi and lo:
        return f"{subject} trade places across the test sets"
    if not hi and not lo:
        return f"the tests do not separate {subject}"
    k, word = (hi, better) if hi else (lo, worse)
    if k == n:
        return f"{word} on every test set, significantly"
    return f"{word} on {k} of {n} test sets, significantly; the others do not separate {subject}"


def _sig(comps: list[dict], a: str, b: str, splits: Sequence[str]) -> tuple[int, int, int]:
    """(significantly higher, significantly lower, tested) counts of b against a."""
    found = [c for s in splits if (c := find(comps, a, b, s))]
    return (sum(c["significant"] and c["delta"] > 0 for c in found),
            sum(c["significant"] and c["delta"] < 0 for c in found), len(found))


def findings(rows: list[dict], comps: list[dict], splits: Sequence[str]) -> list[str]:
    out = []
    pct = lambda r: 100 * r["bleu_retention"]  # noqa: E731
    base, control = _row(rows, "baseline"), _row(rows, "control")
    if base and not base.get("bleu"):  # e.g. an untrained model: retention is undefined
        return [f"**No findings.** The baseline scores {base.get('bleu', 0):.2f} BLEU, so no row's share of it is "
                "defined."]
    if base and control:
        out.append("**Compression or more training?** The control (the baseline retrained as the compressed rows "
                   f"are, without compression) keeps {pct(control):.1f}% of the baseline. "
                   + summary(comps, "baseline", "control", splits, "Control vs baseline") + ". Retention against "
                   "the control is what compression itself costs.")
        above = [r for r in rows if r.get("status") == "ok" and r["name"] not in ("baseline", "control")
                 and r.get("bleu_retention", 0) > 1]
        if above:
            out.append("**Rows above 100% of the baseline.** " + " ".join(
                f"{r['name']} ({pct(r):.1f}% of the baseline, {100 * r['control_retention']:.1f}% of the control): "
                + summary(comps, "baseline", r["name"], splits, "vs baseline") + "; "
                + summary(comps, "control", r["name"], splits, "vs control") + "." for r in above))
    k4, k1 = _row(rows, "kmeans-4bit-all"), _row(rows, "kmeans-1bit-all")
    for r in (k4, k1):
        if r:
            bits = r.get("bits") or EXPERIMENTS[r["name"]].bits
            out.append(f"**k-means, {bits} bit{'s' if bits != 1 else ''}, every Linear layer.** {pct(r):.1f}% of the "
                       "baseline at "
                       f"{r['compression_ratio']:.2f}x (file), {_fmt(r.get('scope_compression_ratio'), '.1f')}x on the "
                       f"compressed layers. " + summary(comps, "baseline", r["name"], splits, "Against the baseline")
                       + ". " + summary(comps, "control", r["name"], splits, "Against the control") + "."
                       + (" The study saw 1-bit k-means collapse to 43%." if r is k1 else ""))
    for scope in ("self-attention", "all"):
        flex, fixed = _row(rows, f"bsflex-{scope}"), _row(rows, f"binary-fixed-{scope}")
        if flex and fixed:
            hi, lo, n = _sig(comps, fixed["name"], flex["name"], splits)
            verdict = _verdict(hi, lo, n, "BS-Flex and fixed binarization", "BS-Flex is better", "BS-Flex is worse")
            out.append(f"**BS-Flex vs fixed binarization ({scope}).** {flex['bleu']:.2f} vs {fixed['bleu']:.2f} BLEU "
                       f"on {splits[0] if splits else 'the test split'}. "
                       + summary(comps, fixed["name"], flex["name"], splits, "BS-Flex minus fixed") + f": {verdict}.")
    km1sa, flexsa = _row(rows, "kmeans-1bit-self-attention"), _row(rows, "bsflex-self-attention")
    if km1sa or flexsa:
        some = [r for r in (km1sa, flexsa) if r]
        out.append("**Binarizing self-attention only.** " + " ".join(
            f"{r['name']} keeps {pct(r):.1f}% with {100 * r['params_compressed_share']:.0f}% of the parameters at one "
            "bit each; " + summary(comps, "baseline", r["name"], splits, "against the baseline") + "." for r in some))
    for pr in (r for r in rows if r.get("status") == "ok" and r["method"] == "prune"):
        out.append(f"**Pruning vs quantization ({pr['name']}).** " + _prune_vs_quant(pr, rows, comps, splits, pct))
    for m in (r for r in rows if r.get("status") == "ok" and r["method"] == "mixed"):
        out.append(f"**Budgeted allocation ({m['name']}).** " + _budget_vs_uniform(m, rows, comps, splits, pct))
    front = pareto(rows)
    if front:
        out.append("**Best trade-offs (by the measured figures).** No other row is at least as compressed with at "
                   "least as much BLEU as: " + ", ".join(
                       f"{r['name']} ({pct(r):.1f}% at {r['compression_ratio']:.2f}x)" for r in front)
                   + ". Their differences from the baseline are tested in the tables above.")
    dc = _row(rows, "prune-50-80+kmeans-4bit-all")
    if dc:
        out.append(f"**Deep Compression order (prune 50→80%, then 4-bit k-means).** {pct(dc):.1f}% of the baseline "
                   f"at {dc['compression_ratio']:.2f}x for the file, {_fmt(dc.get('model_compression_ratio'))}x for the "
                   f"parameters and {_fmt(dc.get('scope_compression_ratio'), '.1f')}x on the compressed layers "
                   f"({_fmt(dc.get('huffman_scope_compression_ratio'), '.1f')}x with Huffman coding). "
                   + summary(comps, "baseline", dc["name"], splits, "Against the baseline") + ".")
    kd, control_kd = _row(rows, "control"), _row(rows, "control-teacher")
    if kd and control_kd:
        hi, lo, n = _sig(comps, "control", "control-teacher", splits)
        verdict = _verdict(hi, lo, n, "the two controls", "the translations help", "the translations hurt")
        students = [r for r in rows if r.get("status") == "ok" and r["name"].endswith("-teacher")
                    and r["name"] != "control-teacher"]
        out.append("**Sequence-level distillation: the data alone.** Retrained without compression on the "
                   f"baseline's own translations of the training sources, the model keeps {pct(control_kd):.1f}% "
                   f"(the control, on the references: {pct(kd):.1f}%). "
                   + summary(comps, "control", "control-teacher", splits, "Translations minus references")
                   + f": {verdict}."
                   + (" Compressed rows retrained on them: " + ", ".join(
                       f"{r['name']} ({pct(r):.1f}% at {_fmt(r.get('model_compression_ratio'))}x)" for r in students)
                      + "; each is tested against its twin retrained on the references and against this data "
                      "control under its budgeted allocation above." if students else ""))
    d, nd = _row(rows, "bsflex-all-distill"), _row(rows, "bsflex-all")
    if d and nd:
        hi, lo, n = _sig(comps, nd["name"], d["name"], splits)
        verdict = _verdict(hi, lo, n, "with and without distillation", "distillation helps", "distillation hurts")
        out.append(f"**Distillation.** BS-Flex on every layer keeps {pct(nd):.1f}% without and {pct(d):.1f}% with "
                   "distillation from the baseline. " + summary(comps, nd["name"], d["name"], splits,
                                                                "With minus without") + f": {verdict}.")
    for rs in (r for r in rows if r.get("status") == "ok" and r["name"].endswith(ROW_SCALED)):
        plain = _row(rows, rs["name"].removesuffix(ROW_SCALED))
        if plain:
            hi, lo, n = _sig(comps, plain["name"], rs["name"], splits)
            verdict = _verdict(hi, lo, n, "with and without row scales", "row scales help", "row scales hurt")
            out.append(f"**Per-row scales ({rs['name']}).** A float16 scale per output row over {plain['name']}'s "
                       f"codebooks keeps {pct(rs):.1f}% at {rs['compression_ratio']:.2f}x against {pct(plain):.1f}% "
                       f"at {plain['compression_ratio']:.2f}x without. "
                       + summary(comps, plain["name"], rs["name"], splits, "With minus without") + f": {verdict}.")
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:
        out.append("**Failed experiments:** " + "; ".join(f"{r['name']} ({r.get('error')})" for r in failed))
    pending = [r["name"] for r in rows if r.get("status") == "pending"]
    if pending:
        rows_word = "row" if len(pending) == 1 else "rows"
        out.append(f"**Not run yet** ({len(pending)} {rows_word}; the findings above cover the rows that have run): "
                   + ", ".join(pending) + ".")
    return out


def _prune_vs_quant(pr: dict, rows: list[dict], comps: list[dict], splits: Sequence[str], pct) -> str:
    """Quantization rows at least as compressed as pruning row ``pr``, each tested against it."""
    said = f"{pr['name']} keeps {pct(pr):.1f}% at {pr['compression_ratio']:.2f}x."
    quant = sorted((q for q in rows if q.get("status") == "ok" and q["method"] in QUANTIZERS
                    and q["compression_ratio"] >= pr["compression_ratio"]), key=lambda q: q["compression_ratio"])
    tested = [(q, _sig(comps, pr["name"], q["name"], splits)) for q in quant]
    tested = [(q, s) for q, s in tested if s[2]]
    if not tested:
        return said + " No quantization row at a ratio at least as high was tested against it."
    not_worse = [q for q, (hi, lo, n) in tested if not lo]
    better = [q for q, (hi, lo, n) in tested if hi and not lo]
    lines = [said]
    if better:
        q = max(better, key=lambda q: q["compression_ratio"])
        lines.append(f"{q['name']} ({q['compression_ratio']:.2f}x) is significantly better on at least one test set "
                     f"and worse on none ({summary(comps, pr['name'], q['name'], splits, 'minus pruning')}): "
                     "pruning is worse than quantization at equal compression here, as the study found.")
    elif not_worse:
        q = max(not_worse, key=lambda q: q["compression_ratio"])
        lines.append(f"{q['name']} reaches {q['compression_ratio']:.2f}x with no significantly lower BLEU on any test "
                     f"set ({summary(comps, pr['name'], q['name'], splits, 'minus pruning')}): quantization matches "
                     "pruning at a higher compression ratio; no significant difference in BLEU either way.")
    else:
        q = tested[0][0]
        lines.append(f"Every quantization row at a ratio at least as high is significantly worse on some test set "
                     f"(closest: {summary(comps, pr['name'], q['name'], splits, q['name'] + ' minus pruning')}): "
                     "here pruning keeps more BLEU, unlike the study.")
    return " ".join(lines)


def _budget_vs_uniform(m: dict, rows: list[dict], comps: list[dict], splits: Sequence[str], pct) -> str:
    """A budgeted row against the uniform rows it is at least as compressed as (whole model)."""
    said = (f"{pct(m):.1f}% of the baseline at {m['model_compression_ratio']:.2f}x for every parameter "
            f"({m['compression_ratio']:.2f}x for the file with its tokenizer).")
    alloc = m.get("allocation")
    if alloc:
        said += (" Layers: " + ", ".join(f"{n}× {c}" for c, n in alloc["choices"].items())
                 + f"; allocation search {alloc['search_seconds']:.0f} s against {m.get('retrain_seconds', 0):.0f} s "
                 "of retraining.")
    base = retrained_twin(m["name"])
    twin = _row(rows, base) if base else None
    if twin and splits and find(comps, twin["name"], m["name"], splits[0]):
        hi, lo, n = _sig(comps, twin["name"], m["name"], splits)
        variant = m["name"].rpartition("-")[2]
        if variant == "flex":
            how, names = "with flexible k-means codebooks instead of frozen assignments", ("flexible", "frozen")
        elif variant == "teacher":
            how, names = ("on the baseline's beam-search translations of the training sources instead of the "
                          "references (sequence-level distillation)", ("distilled", "reference"))
        elif variant == "staged":
            times = sum(1 for h in m.get("history", []) if h.get("when") == "retrained")
            how, names = (f"after each kind of compression ({times} retrainings) instead of once after all of it",
                          ("staged", "one-shot"))
        elif variant == "gradual":
            times = sum(1 for h in m.get("history", []) if h.get("when") == "retrained")
            how, names = (f"with its high sparsities reached from 50% in retrained steps ({times} retrainings) "
                          "instead of in one cut", ("gradual", "one-cut"))
        elif respread(m["name"]):
            each, last = respread(m["name"])
            times = sum(1 for h in m.get("history", []) if h.get("when") == "retrained")
            twin_epochs = EXPERIMENTS[base].retrain_epochs if base in EXPERIMENTS else None
            how, names = (f"with {each} epoch(s) per pruning step and {last} after the quantization "
                          f"({each * (times - 1) + last} in all) instead of "
                          + (f"{twin_epochs} per retraining ({twin_epochs * times} in all)" if twin_epochs
                             else "its own epochs"), ("re-spread", "even"))
        else:
            how, names = f"for {variant[:-2]} epochs instead of as the other rows are", ("longer", "shorter")
        verdict = _verdict(hi, lo, n, f"{names[0]} and {names[1]} retraining", f"{names[0]} retraining helps",
                           f"{names[0]} retraining hurts")
        same = "The same allocation" if variant != "gradual" else \
            "The allocation of the same budget (searched with 256 bytes in reserve, so a few layers may differ)"
        said += (f" {same} retrained {how} ({twin['name']}, {pct(twin):.1f}%): "
                 + summary(comps, twin["name"], m["name"], splits, f"{names[0]} minus {names[1]}") + f"; {verdict}.")
        # against the twin's other single retrainings listed before it (comparisons.pairs): a gradual
        # row against mixed-25x-8ep (as many epochs), a 16-epoch row against the 8-epoch one
        for peer in (p for p in rows if p is not m and retrained_twin(p["name"]) == base and p.get("status") == "ok"
                     and p["name"].endswith("ep") and find(comps, p["name"], m["name"], splits[0])):
            if variant == "gradual":
                said += (f" Against {peer['name']} ({pct(peer):.1f}%, one retraining at the end): "
                         + summary(comps, peer["name"], m["name"], splits, "gradual minus one-cut") + ".")
            elif respread(m["name"]):
                continue  # its peers are the one-shot rows, below
            elif variant.endswith("ep"):
                more, fewer = variant[:-2], peer["name"].rpartition("-")[2][:-2]
                hi, lo, n = _sig(comps, peer["name"], m["name"], splits)
                said += (f" Against {peer['name']} ({pct(peer):.1f}%, {fewer} epochs): "
                         + summary(comps, peer["name"], m["name"], splits, f"{more} minus {fewer} epochs") + "; "
                         + _verdict(hi, lo, n, f"{more} and {fewer} epochs", f"{more} epochs help over {fewer}",
                                    f"{more} epochs hurt against {fewer}") + ".")
        data_control = _row(rows, "control-teacher") if variant == "teacher" else None
        if data_control:
            said += (f" Against the data control (the uncompressed model retrained on the same translations, "
                     f"{pct(data_control):.1f}%): " + summary(comps, "control-teacher", m["name"], splits,
                                                              "vs data control") + ".")
    ok = [p["name"] for p in rows if p.get("status") == "ok"]
    for peer in (_row(rows, n) for n in one_shot_peers(m["name"], ok) if splits and find(comps, n, m["name"], splits[0])):
        said += (f" Against {peer['name']} ({pct(peer):.1f}%, one retraining at the end): "
                 + summary(comps, peer["name"], m["name"], splits, "re-spread minus one-shot") + ".")
    said += _against(m, rows, comps, splits, pct)
    below = [u for u in uniform_below(rows, m) if splits and find(comps, u["name"], m["name"], splits[0])]
    if not below:
        return said + " No uniform row between half its ratio and its ratio has been tested against it yet."
    best = max(below, key=lambda u: u["bleu"])
    hi, lo, n = _sig(comps, best["name"], m["name"], splits)
    verdict = _verdict(hi, lo, n, "the two", "the budgeted model is better", "the budgeted model is worse")
    multiple = m["model_compression_ratio"] / best["model_compression_ratio"]
    return (said + f" Against the best uniform row at a ratio no higher, {best['name']} ({pct(best):.1f}% at "
            f"{best['model_compression_ratio']:.2f}x; the budgeted model is at {multiple:.3f}x its ratio): "
            + summary(comps, best["name"], m["name"], splits, "budgeted minus uniform") + f"; {verdict}.")


def _against(m: dict, rows: list[dict], comps: list[dict], splits: Sequence[str], pct) -> str:
    """A row against the rows its grid entry names (``Experiment.against``), saying how it differs."""
    exp = EXPERIMENTS.get(m["name"])
    if exp is None or not exp.against:
        return ""
    steps = exp.binary_steps
    said = (f" Its BS-Flex layers were binarized in {steps} groups, the most sensitive first, each retrained, "
            "instead of all at once." if steps > 1 else "")
    this = "stepped" if steps > 1 else "this row"
    for peer in (_row(rows, n) for n in exp.against):
        if peer is None or not splits or not find(comps, peer["name"], m["name"], splits[0]):
            continue
        hi, lo, n = _sig(comps, peer["name"], m["name"], splits)
        said += (f" Against {peer['name']} ({pct(peer):.1f}%): "
                 + summary(comps, peer["name"], m["name"], splits, f"{this} minus {peer['name']}") + "; "
                 + _verdict(hi, lo, n, "the two", f"{this} is better", f"{this} is worse") + ".")
    return said


def pareto(rows: list[dict]) -> list[dict]:
    """Rows no other row beats on the measured figures: a ratio at least as high with at least as
    much BLEU, and strictly more of one of them."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("bleu") is not None and r.get("bleu_retention") is not None
          and r["name"] != "control"]

    def beats(s: dict, r: dict) -> bool:
        return (s is not r and s["compression_ratio"] >= r["compression_ratio"] and s["bleu"] >= r["bleu"]
                and (s["compression_ratio"] > r["compression_ratio"] or s["bleu"] > r["bleu"]))

    return sorted((r for r in ok if not any(beats(s, r) for s in ok)), key=lambda r: r["compression_ratio"])


def terminal_table(result: dict[str, Any]) -> str:
    """The results as ``reproduce`` prints them when it ends: per row BLEU on each test split, its
    difference from the baseline and the control (paired bootstrap, * for p < ALPHA), retention,
    the whole-model ratio and whether this run computed it."""
    rows, comps = result["rows"], result.get("comparisons", [])
    splits, computed = result.get("test_splits") or [], set(result.get("computed_this_run", []))
    header = ["experiment", *(f"BLEU {s}" for s in splits), "vs baseline", "vs control", "% of baseline",
              "ratio", "row"]
    table = [header]
    for r in rows:
        if r.get("status") != "ok":
            table.append([r["name"], *(["–"] * len(splits)), r.get("status", "?"), "", "", "", ""])
            continue
        primary = splits[0] if splits else r.get("test_split")
        table.append([r["name"], *(_fmt(r.get("tests", {}).get(s, {}).get("bleu")) for s in splits),
                      _cell(find(comps, "baseline", r["name"], primary)), _cell(find(comps, "control", r["name"], primary)),
                      _fmt(100 * r["bleu_retention"] if r.get("bleu_retention") is not None else None, ".1f"),
                      _fmt(r.get("model_compression_ratio"), ".2f", "x"),
                      f"{(r.get('wall_seconds') or 0) / 60:.1f} min" if r["name"] in computed else "cached"])
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header))]
    text = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
            for line in table]
    text.insert(1, "  ".join("-" * w for w in widths))
    first = splits[0] if splits else "the test split"
    text.append(f"vs baseline / vs control: BLEU difference on {first} (p-value of the paired bootstrap; * p < {ALPHA}); "
                "ratio: 4 bytes per parameter over the packed file")
    return "\n".join(text)


def render(result: dict[str, Any]) -> str:
    rows, comps = result["rows"], result.get("comparisons", [])
    base = _row(rows, "baseline")
    splits = result.get("test_splits") or ([base["test_split"]] if base and base.get("test_split") else [])
    primary = splits[0] if splits else "the test split"
    lines = [f"# Compressing a Transformer: preset `{result['preset']}`", "",
             f"Command: `{result.get('command', '')}`  ",
             f"Commit {result.get('git_commit', '?')}, torch {result.get('torch_version', '?')}, "
             f"{result.get('machine', {}).get('processor', '?')} with {result.get('machine', {}).get('cpus', '?')} CPUs"
             f"{', GPU ' + result['machine']['gpu'] if result.get('machine', {}).get('gpu') else ''}; "
             f"this run took {result.get('wall_seconds', 0) / 60:.1f} min, the experiments' own wall times add up "
             f"to {sum(r.get('wall_seconds') or 0 for r in rows) / 60:.1f} min.  ",
             "Experiments come from the cache when their configuration, preset and baseline model are unchanged; "
             "a cached row keeps the numbers (and the `git_commit`) of the run that computed it.", ""]
    if base:
        lines += [f"Baseline: {base['bleu']:.2f} BLEU, {base['chrf']:.2f} chrF on {primary} "
                  f"(`{base.get('bleu_signature', '')}`).", ""]
    st = result.get("settings")
    if st:
        lines += [f"Retraining after each compression step: {st['retrain_epochs']} epoch(s) on "
                  f"{'the first ' + format(st['train_limit'], ',d') + ' training pairs' if st.get('train_limit') else 'the whole training set'}"
                  f", peak learning rate {st['retrain_lr']:g}; the control is retrained the same way without "
                  "compression.", ""]
    lines += [f"Significance: sacreBLEU's paired bootstrap resampling, {RESAMPLES} resamples, seed 12345; a "
              f"difference marked * has p < {ALPHA}. Cells give the BLEU difference and its p-value.", "",
              f"## Results on {primary}", "",
              "| experiment | in study | BLEU | vs baseline | % of baseline | vs control | % of control | ratio (file) "
              "| ratio (parameters) | ratio (scope) | ratio (scope, Huffman) | compressed params | study WMT BLEU "
              "| study % |", "|---" * 14 + "|"]
    for r in rows:
        exp = EXPERIMENTS.get(r["name"])
        study = STUDY_WMT.get(r["name"], (None, None))
        in_study = "yes" if exp and exp.in_study else ""
        if r.get("status") != "ok":
            status = "not run yet" if r.get("status") == "pending" else "failed"
            lines.append(f"| {r['name']} | {in_study} | {status} |" + " |" * 11)
            continue
        lines.append(
            f"| {r['name']} | {in_study} | {r['bleu']:.2f} | {_cell(find(comps, 'baseline', r['name'], primary))} | "
            f"{_fmt(100 * r['bleu_retention'] if r.get('bleu_retention') is not None else None, '.1f')} | "
            f"{_cell(find(comps, 'control', r['name'], primary))} | "
            f"{_fmt(100 * r['control_retention'] if r.get('control_retention') is not None else None, '.1f')} | "
            f"{_fmt(r.get('compression_ratio'), '.2f', 'x')} | {_fmt(r.get('model_compression_ratio'), '.2f', 'x')} | "
            f"{_fmt(r.get('scope_compression_ratio'), '.1f', 'x')} | "
            f"{_fmt(r.get('huffman_scope_compression_ratio'), '.1f', 'x')} | "
            f"{100 * r['params_compressed_share']:.1f}% | {_fmt(study[0])} | {_fmt(study[1], '.1f')} |")
    lines += ["", "Ratios: *file* is the fp32 safetensors file over the packed file (`models/*.sfz`), both holding "
              "the tokenizer; *parameters* is 4 bytes per parameter over the packed file without its tokenizer "
              f"({_fmt(base.get('tokenizer_bytes') if base else None, ',d')} bytes); *scope* counts only the "
              "compressed layers, and the Huffman column adds Deep Compression's entropy stage "
              "(`models/*.huffman.sfz`). The study's figures are WMT En–De with Transformer base, shown for "
              "comparison, not reproduced by this run.", ""]
    if len(splits) > 1:
        lines += ["## Every test set", "",
                  "| experiment | " + " | ".join(f"{s} BLEU | vs baseline | vs control" for s in splits) + " |",
                  "|---" * (1 + 3 * len(splits)) + "|"]
        for r in rows:
            if r.get("status") != "ok":
                continue
            cells = []
            for s in splits:
                t = r.get("tests", {}).get(s)
                cells += [_fmt(t["bleu"] if t else None), _cell(find(comps, "baseline", r["name"], s)),
                          _cell(find(comps, "control", r["name"], s))]
            lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += frontier.markdown(frontier.points(rows, splits), splits)
    lines += ["![BLEU vs compression](bleu_vs_compression.png)", "", "## Findings", ""]
    lines += [f + "\n" for f in findings(rows, comps, splits)]
    return "\n".join(lines)

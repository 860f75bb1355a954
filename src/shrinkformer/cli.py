"""The ``shrinkformer`` command: the only place that parses arguments and prints."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from . import __version__
from .config import load_config
from .errors import ShrinkformerError, UsageError
from .io import STORAGE_ERRNOS, check_writable, write_text_atomic
from .runtime.cli import translate_stream

log = logging.getLogger("shrinkformer")


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def write_json_atomic(data: Any, path: Path) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="tiny, small (default), base or big")
    p.add_argument("--config", type=Path, help="YAML file with model/data/train/decode sections")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set train.lr=5e-4 (repeatable)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)


def cmd_train(args: argparse.Namespace) -> int:
    from .train.distributed import init_world, shutdown
    from .train.loop import train

    cfg = load_config(args.preset, args.config, args.overrides)
    if args.data_dir:  # a path, taken as given (an override would read it as YAML: "#" starts a comment)
        cfg.data.data_dir = args.data_dir
    check_writable(args.output, directory=True)
    world = init_world()
    if not world.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    started = time.perf_counter()
    try:
        with _held(world.is_main, args.output / ".lock", f"run directory {args.output}"):
            metrics = train(cfg, args.output, world)
    finally:
        shutdown(world)
    if world.is_main:
        metrics.update(command=args.command_line, torch_version=torch.__version__,
                       shrinkformer_version=__version__, machine=machine(), world_size=world.size,
                       wall_seconds=round(time.perf_counter() - started, 1))
        write_json_atomic(metrics, args.output / "metrics.json")
        print(f"{metrics['test_split']}: BLEU {metrics['bleu']:.2f}, chrF {metrics['chrf']:.2f} "
              f"({metrics['bleu_signature']})")
        print(f"model: {args.output / 'model.pt'}; metrics: {args.output / 'metrics.json'}")
    return 0


def _held(main: bool, lock: Path, what: str):
    """The lock on what this command writes, taken by the main process only (torchrun's other
    ranks write through it)."""
    from contextlib import nullcontext

    from .locks import hold

    return hold(lock, what) if main else nullcontext()


def _translator(args: argparse.Namespace):
    """The model's config and a translator with the asked search settings, for any family."""
    from .loading import load_adapter

    if args.threads:
        torch.set_num_threads(args.threads)
    adapter = load_adapter(args.checkpoint, training=args.dense)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return adapter.cfg, adapter.translator(args.beam, args.batch_size, device, args.length_penalty)


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    """The method options as given on the command line (None: not given)."""
    from .workflow.methods import DEFAULTS

    return {name: getattr(args, name) for name in DEFAULTS}


def budget_config(args: argparse.Namespace):
    """The budgeted allocation asked for, or None when a --method is given."""
    from .workflow.budget import BudgetConfig
    from .workflow.methods import refuse_for_budget

    if args.target_ratio is None and args.budget_bytes is None:
        if args.flex:
            raise UsageError("--flex applies to a budgeted allocation; with --method, use kmeans-flex or "
                             "prune+kmeans-flex")
        for flag in ("staged", "gradual", "final_epochs", "plan_only", "binary_steps"):
            if getattr(args, flag) and not (flag == "binary_steps" and args.binary_steps == 1):
                raise UsageError(f"--{flag.replace('_', '-')} applies to a budgeted allocation (--target-ratio or "
                                 "--budget-bytes)")
        if args.method is None:
            raise UsageError("give --method, or --target-ratio / --budget-bytes for a per-layer allocation")
        return None
    if args.method is not None:
        raise UsageError("--method and --target-ratio/--budget-bytes exclude each other: a budget chooses the "
                         "method of every layer")
    given = method_options(args)
    row_scale = bool(given.pop("row_scale"))  # with a budget: row-scaled choices are offered, not imposed
    refuse_for_budget(given)
    return BudgetConfig(args.budget_bytes, args.target_ratio, args.sensitivity, args.sensitivity_sentences,
                        half_dense=args.dense_dtype != "fp32", flex=args.flex, staged=args.staged,
                        gradual=args.gradual, row_scale=row_scale, final_epochs=args.final_epochs,
                        binary_steps=args.binary_steps)


def allocation_outputs(output: Path) -> tuple[Path, Path]:
    return output.with_name(f"{output.stem}.allocation.json"), output.with_name(f"{output.stem}.allocation.png")


def cmd_compress(args: argparse.Namespace) -> int:
    from .workflow import methods
    from .workflow.retrain import RetrainConfig

    if args.config is not None:
        return compress_from_config(args)
    if args.set:
        raise UsageError("--set overrides a --config file")

    # Parameters and outputs are checked before any work is done.
    budget = budget_config(args)
    stages = [] if budget is not None else methods.stages(args.method, method_options(args), args.scope,
                                                          args.include, args.exclude)
    half_dense = args.dense_dtype == "fp16" or (budget is not None and budget.half_dense)
    rc = RetrainConfig(epochs=args.retrain_epochs, lr=args.lr, distill=args.distill, temperature=args.temperature,
                       save_every_steps=args.save_every, data=args.retrain_data, batch_tokens=args.retrain_batch_tokens,
                       keep_best=args.keep_best)
    outputs = [*(() if args.plan_only else (args.output, args.report)), *(allocation_outputs(args.output) if budget else ())]
    for path in outputs:
        if path is not None:
            check_writable(path)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work_dir or args.output.with_name(args.output.name + ".work")
    main = os.environ.get("RANK", "0") == "0"  # torchrun's rank 0, or a plain run
    with _held(main, work.with_name(work.name + ".lock"), f"work directory {work}"):
        return _compress(args, stages, rc, half_dense, budget, work)


def _compress(args: argparse.Namespace, stages: list, rc: Any, half_dense: bool, budget: Any, work: Path) -> int:
    from .loading import load_adapter
    from .workflow.budget import load_or_plan
    from .train.distributed import init_world, shutdown
    from .workflow.pipeline import compress_model

    adapter = load_adapter(args.checkpoint, training=True)  # retraining updates the codecs
    if args.data_dir:
        adapter.cfg.data.data_dir = args.data_dir
    world = init_world()
    if not world.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    allocation = None
    try:
        if budget is not None:
            allocation = load_or_plan(adapter, budget, work, args.train_limit)
            if world.is_main:
                print(allocation.table(), flush=True)
            if args.plan_only:
                if world.is_main:
                    write_plan(args, allocation)
                return 0
            stages = budget.stages(allocation.choices(), allocation.sensitivities())
        adapter.model.to(world.device)
        result = compress_model(adapter, stages, rc, args.output, train_limit=args.train_limit, work_dir=work,
                                world=world, test_splits=[] if args.no_test else None, half_dense=half_dense)
    finally:
        shutdown(world)
    if result is None:  # not the main process
        return 0
    report = result.to_dict()
    if allocation is not None:
        report["allocation"] = write_allocation(args, allocation, result)
    report.update(world_size=world.size)
    return report_compression(args, result, report)


def compress_from_config(args: argparse.Namespace) -> int:
    """``compress --config``: exactly what the sweep runs for that row (its code, its cache key)."""
    from .experiments import compress_config
    from .experiments.sweep import cache_key, fingerprint, run_experiment

    given = [f"--{n.replace('_', '-')}" for n in ("method", "target_ratio", "budget_bytes", "distill", "retrain_data",
                                                  "train_limit", "retrain_batch_tokens", "keep_best", "plan_only")
             if getattr(args, n) not in (None, 0.0, "references")]
    if given:
        raise UsageError(f"{given[0]} does not go with --config: the file (or --set) says it")
    exp, sp = compress_config.load(args.config, args.set or [])
    for path in (args.output, args.report):
        if path is not None:
            check_writable(path)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work_dir or args.output.with_name(args.output.name + ".work")
    with _held(True, work.with_name(work.name + ".lock"), f"work directory {work}"):
        key = cache_key(exp, sp, fingerprint(args.checkpoint))
        row = run_experiment(exp, sp, args.checkpoint, args.data_dir, args.output.parent, work, args.output)
    report = {**row, "cache_key": key, "experiment": exp.spec(), "preset": sp.name, "command": args.command_line,
              "checkpoint": str(args.checkpoint), "output": str(args.output), "torch_version": torch.__version__}
    if args.report:
        write_json_atomic(report, args.report)
    print(f"{exp.name} (sweep cache key {key}): packed {row['packed_bytes']:,} bytes, "
          f"{row['model_compression_ratio']:.2f}x its parameters: {args.output}")
    for split, t in row.get("tests", {}).items():
        print(f"{split}: BLEU {t['bleu']:.2f}, chrF {t['chrf']:.2f}")
    return 0


def _allocation_files(args: argparse.Namespace, allocation: Any, used: int, ratio: float, planned: bool = False
                      ) -> tuple[dict[str, Any], str]:
    """The allocation table and heat map beside the output, for a model of ``used`` bytes; and the
    line that names them."""
    from .experiments.plots import allocation_heatmap

    summary = {**allocation.to_dict(), "packed_bytes": used, **({"planned_only": True} if planned else {})}
    table, picture = allocation_outputs(args.output)
    write_json_atomic(summary, table)
    allocation_heatmap(summary["layers"], picture, f"{args.output.name}{' (planned)' if planned else ''}: {used:,} "
                       f"bytes for {allocation.budget_bytes:,} allowed ({ratio:.1f}x)")
    return summary, f"allocation: {table}, {picture}" + (
        " (planned only; a run with the same settings and work directory takes it)" if planned else "")


def write_plan(args: argparse.Namespace, allocation: Any) -> None:
    """``--plan-only``: the allocation as the search's dry run sized it."""
    used = allocation.notes["checked_bytes"]
    print(_allocation_files(args, allocation, used, 4 * allocation.params / used, planned=True)[1])


def write_allocation(args: argparse.Namespace, allocation: Any, result: Any) -> dict[str, Any]:
    """The allocation of the written file; the packed file must meet the budget."""
    used = result.sizes.packed_file_bytes - result.sizes.tokenizer_bytes
    summary, line = _allocation_files(args, allocation, used, result.sizes.model_compression_ratio)
    if used > allocation.budget_bytes:  # the dry run sized the file exactly; this would be a bug
        raise ShrinkformerError(f"{args.output}: {used:,} bytes packed, over the budget of {allocation.budget_bytes:,}")
    print(line)
    return summary


def report_compression(args: argparse.Namespace, result: Any, report: dict[str, Any] | None = None) -> int:
    """What ``compress`` prints and writes to ``--report``, for our models and Hugging Face ones alike."""
    report = {**(report or result.to_dict()), "method": args.method, "command": args.command_line,
              "checkpoint": str(args.checkpoint), "output": str(args.output), "torch_version": torch.__version__}
    if args.report:
        write_json_atomic(report, args.report)
    s = result.sizes
    print(f"{len(result.outcome.modules)} modules ({result.outcome.share:.1%} of parameters); "
          f"packed {s.packed_file_bytes:,} bytes, {s.compression_ratio:.2f}x the fp32 file, "
          f"{s.model_compression_ratio:.2f}x its parameters ({s.scope_compression_ratio:.2f}x on the compressed "
          f"scope); with Huffman coding {s.huffman_file_bytes:,} bytes, {s.huffman_compression_ratio:.2f}x "
          f"({s.huffman_scope_compression_ratio:.2f}x on the scope): {result.huffman_file}")
    for split, r in result.tests.items():
        print(f"{split}: BLEU {r.scores.bleu:.2f}, chrF {r.scores.chrf:.2f}")
    return 0


def git_commit() -> str | None:
    import subprocess
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .experiments.plots import bleu_vs_compression
    from .experiments import frontier
    from .experiments.report import terminal_table, write_results
    from .experiments.sweep import reproduce

    if args.list_rows:
        from .experiments.grid import preset_rows

        print("\n".join(preset_rows(args.preset)))
        return 0
    if args.output is None:
        raise UsageError("reproduce needs --output DIR (or --list-rows)")
    started, commit = time.perf_counter(), git_commit()  # the code that runs, even if HEAD moves meanwhile
    check_writable(args.output, directory=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    only = args.only.split(",") if args.only else None
    result = reproduce(args.preset, args.output, args.data_dir, args.baseline, only, commit, args.cached)
    result.update(command=args.command_line, git_commit=commit,
                  torch_version=torch.__version__, machine=machine(),
                  wall_seconds=round(time.perf_counter() - started, 1))
    bleu_vs_compression(result["rows"], args.output / "bleu_vs_compression.png",
                        f"BLEU vs compression ({args.preset})", result["comparisons"])
    front = frontier.points(result["rows"], result["test_splits"])
    if front:
        frontier.plot(front, args.output / "frontier.png", f"The frontier ({args.preset})")
        frontier.write_html(front, result["test_splits"], args.output / "frontier.html", f"The frontier ({args.preset})")
    write_results(result, args.output)
    failed = [r["name"] for r in result["rows"] if r.get("status") == "failed"]
    pending = [r["name"] for r in result["rows"] if r.get("status") == "pending"]
    print("\n" + terminal_table(result) + "\n")
    print(f"{len(result['rows'])} experiments ({len(failed)} failed{': ' + ', '.join(failed) if failed else ''}"
          f"{f'; {len(pending)} not run yet' if pending else ''}); report: {args.output / 'report.md'}, plot: "
          f"{args.output / 'bleu_vs_compression.png'}")
    return 1 if failed else 0


def cmd_attention(args: argparse.Namespace) -> int:
    from .experiments.attention import analyse, quantizer, render
    from .loading import load_adapter
    from .experiments.plots import attention_histograms
    from .data.splits import read_split

    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    ks = sorted({int(k) for k in args.k.split(",")})
    if not ks or min(ks) < 2 or max(ks) > 256:
        raise UsageError(f"--k values must be in 2..256, got {args.k}")
    check_writable(args.output, directory=True)
    adapter = load_adapter(args.checkpoint, training=args.dense)
    cfg, probe = adapter.cfg, adapter.attention_probe(args.beam)
    beam = probe.beam_size
    if args.data_dir:
        cfg.data.data_dir = args.data_dir
    rec = read_split(cfg, cfg.data.valid_split, args.sentences)
    test = read_split(cfg, args.split or cfg.data.test_split, args.test_sentences)
    results = analyse(probe, rec.source, rec.target, test.source, test.target, ks)
    recorded = results.pop("_recorded")
    args.output.mkdir(parents=True, exist_ok=True)
    k_hist = 16 if 16 in ks else ks[-1]
    levels = {n: torch.tensor(v) for n, v in results["levels"]["kmeans"][str(k_hist)]["level_values"].items()}
    attention_histograms(recorded.layers, {n: quantizer(lv) for n, lv in levels.items()}, k_hist,
                         args.output / "attention_hist.png")
    command = args.command_line
    results.update(beam=beam, command=command, checkpoint=str(args.checkpoint),
                   torch_version=torch.__version__, machine=machine(), wall_seconds=round(time.perf_counter() - started, 1))
    write_json_atomic(results, args.output / "attention.json")
    md = args.output / "attention.md"
    write_text_atomic(md, render(results, command))
    print(f"unquantized BLEU {results['unquantized_bleu']:.2f}; smallest k within 0.3 BLEU: "
          f"{results['smallest_k_within_0.3_bleu']}; report: {md}")
    return 0


DATA_DIR_HELP = "directory of {split}.{lang}[.gz] files (else $SHRINKFORMER_DATA, else the dataset is downloaded)"
THREADS_HELP = ("torch intra-op threads (default: torch's choice). Runs are byte-identical at the same thread count, "
                "resumed or not; other thread counts sum in another order")


MODEL_HELP = ("model: a checkpoint (model.pt), a packed .sfz, or a Hugging Face model (a save_pretrained "
              "directory, a hub name, or a .sfz packed from one)")


def add_decode_args(p: argparse.ArgumentParser, checkpoint_optional: bool = False) -> None:
    p.add_argument("checkpoint", type=Path, nargs="?" if checkpoint_optional else None,
                   help=MODEL_HELP)
    p.add_argument("--beam", type=int, help="beam size (default: the model's own; 5 for ours, a Hugging Face "
                                            "model's generation_config.num_beams); 1 is greedy")
    p.add_argument("--threads", type=int, help=THREADS_HELP)
    p.add_argument("--length-penalty", type=float, help="score = log p / length ** this (default: the model's, 1.0)")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per batch (default 64)")
    add_dense_arg(p)


def add_dense_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dense", action="store_true", help="a packed model's compressed layers in their training "
                   "form (dense weights rebuilt from the codecs) instead of kept packed")


def cmd_translate(args: argparse.Namespace) -> int:
    if args.output:
        check_writable(args.output)
    _, translator = _translator(args)
    translate_stream(translator, args.input, args.output, args.batch_size)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data.corpus import read_lines
    from .evaluate.bleu import score
    from .data.splits import read_split

    if args.hypotheses:
        if not args.references:
            raise UsageError("--hypotheses needs --references")
        scores = score(read_lines(args.hypotheses), read_lines(args.references))
        result: dict[str, Any] = {"hypotheses": str(args.hypotheses), "references": str(args.references)}
    else:
        if args.checkpoint is None:
            raise UsageError("give a checkpoint, or --hypotheses and --references")
        cfg, translator = _translator(args)
        if args.data_dir:
            cfg.data.data_dir = args.data_dir
        split = args.split or cfg.data.test_split
        test = read_split(cfg, split, args.test_sentences)
        scores = score(translator.translate(test.source), test.target)
        result = {"checkpoint": str(args.checkpoint), "split": split, "beam_size": translator.beam_size}
    result.update(scores.to_dict())
    print(json.dumps(result, indent=2) if args.json else str(scores))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .loading import load_adapter

    print(load_adapter(args.checkpoint, training=args.format == "hf").export(args.format, args.output,
                                                                             args.quantization))
    return 0


def cmd_web_demo(args: argparse.Namespace) -> int:
    from .web import demo

    try:
        out = demo.write(args.checkpoint, args.output, overwrite=args.force)
    except OSError as err:
        if err.errno is not None:
            raise
        raise ShrinkformerError(str(err)) from None  # no emcc to rebuild a stale module
    size = sum(f.stat().st_size for f in out.iterdir() if f.name != "model.sfz")
    print(f"page with {args.checkpoint.name} as model.sfz ({(out / 'model.sfz').stat().st_size / 1e6:.2f} MB; "
          f"page {size / 1e3:.0f} KB without it): {out}\nserve it: python3 -m http.server -d {out} 8000, "
          f"then open http://localhost:8000/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .workflow.methods import METHODS

    parser = argparse.ArgumentParser(prog="shrinkformer", description=__doc__)
    parser.add_argument("--version", action="version", version=f"shrinkformer {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors in the log")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a translation model (resumes if OUTPUT holds last.pt)",
                       description="Train an encoder-decoder Transformer and score it with sacreBLEU. "
                                   "Run under torchrun for data parallel training.")
    add_config_args(p)
    p.add_argument("--output", "-o", type=Path, required=True, help="run directory")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("translate", help="translate lines from stdin or a file",
                       description="Translate one sentence per line, streaming, detokenized.")
    add_decode_args(p)
    p.add_argument("--input", "-i", type=Path, help="source file (default: stdin)")
    p.add_argument("--output", "-o", type=Path, help="output file (default: stdout)")
    p.set_defaults(func=cmd_translate)

    p = sub.add_parser("compress", help="compress a trained model, retrain it, write a packed .sfz",
                       description="Compress the Linear (and optionally Embedding) weights of a checkpoint, "
                                   "retrain with the compression in the loop, and write a packed model whose "
                                   "size is the real compression ratio. A killed run continues where it "
                                   "stopped when started again; run under torchrun for data parallel retraining.")
    p.add_argument("checkpoint", type=Path,
                   help="the trained model to compress: " + MODEL_HELP.removeprefix("model: ") + "; a .sfz must be "
                        "uncompressed")
    p.add_argument("--method", choices=tuple(METHODS),
                   help="kmeans (Deep Compression), binary-fixed (the original 1-bit scheme), bsflex (BS-Flex), "
                        "prune (iterative magnitude pruning), prune+kmeans (prune, then quantize the survivors), "
                        "kmeans-flex and prune+kmeans-flex (the same, retrained with BS-Flex's re-assignment of "
                        "weights to the nearest centroid at every step)")
    p.add_argument("--bits", type=int, help="kmeans, prune+kmeans and their -flex forms: bits per weight, 1..8 "
                   "(default 4)")
    p.add_argument("--init", choices=("linear", "density"), help="kmeans, prune+kmeans: initial centroids "
                   "(default linear)")
    p.add_argument("--row-scale", action="store_true", default=None,
                   help="kmeans, binary-fixed, bsflex, prune+kmeans and the -flex forms: a float16 scale per "
                        "output row times a codebook shared by the layer (2 bytes a row); with a budget, the "
                        "1- and 2-bit choices are offered with row scales too, at their exact price")
    p.add_argument("--scope", action="append", help="all, self-attention, encoder-self-attention, "
                   "decoder-self-attention, cross-attention, attention, ffn, embeddings (repeatable)")
    p.add_argument("--include", action="append", default=[], metavar="PATTERN",
                   help="also compress modules whose name matches this glob, added to --scope (without --scope: "
                        "only these); each pattern must match some module (repeatable)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="leave out modules whose name matches this glob, whatever --scope and --include chose; "
                        "each pattern must match some module (repeatable)")
    p.add_argument("--sparsity", help="prune, prune+kmeans: S, or START:END with --steps (default 0.5)")
    p.add_argument("--steps", type=int, help="prune, prune+kmeans: pruning rounds from START to END (default 1)")
    p.add_argument("--prune-scope", choices=("layer", "global"),
                   help="prune, prune+kmeans: the same share per layer, or the smallest weights across the scope "
                        "(default layer)")
    p.add_argument("--target-ratio", type=float, help="instead of --method: choose each layer's sparsity and bits "
                   "so that every parameter packs R times smaller than fp32 (tokenizer not counted)")
    p.add_argument("--budget-bytes", type=int, help="instead of --method: the same for a size in bytes")
    p.add_argument("--flex", action="store_true",
                   help="budget: retrain every codebook with flexible k-means (weights move between clusters) "
                        "instead of frozen assignments")
    p.add_argument("--gradual", action="store_true",
                   help="budget: reach sparsities of 80%% or more from 50%% in three pruning steps, "
                        "each retrained (--retrain-epochs each), instead of in one cut")
    p.add_argument("--plan-only", action="store_true",
                   help="budget: search and write the allocation (OUTPUT.allocation.json and .png) and stop, "
                        "before any retraining; a later run with the same settings takes it from the work directory")
    p.add_argument("--final-epochs", type=int, metavar="N",
                   help="budget: epochs of the last retraining (after the quantization), when they should differ "
                        "from --retrain-epochs (with --gradual or --staged, the earlier retrainings keep those)")
    p.add_argument("--binary-steps", type=int, default=1, metavar="N",
                   help="budget: binarize the BS-Flex layers in N groups, the most sensitive first, each "
                        "retrained (--retrain-epochs each; the last --final-epochs), instead of all at once")
    p.add_argument("--staged", action="store_true",
                   help="budget: retrain after the pruning, after the k-means and after the binarization "
                        "(--retrain-epochs each), instead of once after all of them")
    p.add_argument("--sensitivity", choices=("fisher", "loss"), default="fisher",
                   help="budget: how each layer's damage is estimated (default fisher: squared weight error "
                        "weighted by the empirical Fisher; loss: measured loss with that layer compressed)")
    p.add_argument("--sensitivity-sentences", type=int, default=500, metavar="N",
                   help="budget: training pairs the sensitivity is estimated on (default 500)")
    p.add_argument("--dense-dtype", choices=("fp32", "fp16"),
                   help="how parameters left uncompressed (biases, norms, dense layers) are stored (default fp32; "
                        "fp16 with a budget)")
    p.add_argument("--config", type=Path, metavar="FILE.yaml",
                   help="a compression written down: a grid row and a sweep preset with typed overrides "
                        "(experiments/compress_config.py); runs exactly what the sweep runs for that row")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override a --config value, e.g. compress.retrain_epochs=4 (repeatable)")
    p.add_argument("--retrain-epochs", type=int, default=2, help="retraining epochs after each step (default 2)")
    p.add_argument("--lr", type=float, default=3e-4, help="retraining peak learning rate")
    p.add_argument("--distill", type=float, default=0.0,
                   help="weight of the KL term to the uncompressed model's token distributions (default 0: off)")
    p.add_argument("--temperature", type=float, default=1.0, help="distillation temperature (default 1)")
    p.add_argument("--keep-best", action="store_true",
                   help="undo a retraining that lowers the greedy validation BLEU: each step keeps the better of "
                        "its compressed and its retrained model (off by default, as the study's rows ran)")
    p.add_argument("--retrain-batch-tokens", type=int, metavar="TOKENS",
                   help="padded tokens per retraining batch (default: the model's training setting; 3072 for a "
                        "Hugging Face model)")
    p.add_argument("--retrain-data", choices=("references", "teacher", "both"), default="references",
                   help="what retraining learns from: the references (default), the input model's own beam-search "
                        "translations of the training sources (sequence-level distillation; translated once, cached "
                        "under ~/.cache/shrinkformer/teacher), or both")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--train-limit", type=int, help="retrain on the first N pairs only")
    p.add_argument("--threads", type=int, help=THREADS_HELP)
    p.add_argument("--no-test", action="store_true", help="skip scoring the test split")
    p.add_argument("--save-every", type=int, default=200, metavar="STEPS",
                   help="snapshot retraining every STEPS optimizer steps (default 200; 0: at epoch ends only)")
    p.add_argument("--work-dir", type=Path, help="resumable retraining state (default: OUTPUT.work, removed on "
                                                  "success); run the same command again to continue a killed run")
    p.add_argument("--report", type=Path, help="write the JSON report here")
    p.add_argument("--output", "-o", type=Path, required=True, help="packed model (.sfz)")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("reproduce", help="run the study's grid and write results, report and plot",
                       description="Train the baseline (or take --baseline), run every experiment of the study "
                                   "and the ones it lacked, cached per experiment, and write results.json, "
                                   "results.csv, report.md and bleu_vs_compression.png.")
    p.add_argument("--preset", default="quick", help="quick (the study's message in minutes, from the committed "
                   "Multi30k baseline), multi30k (the whole study, hours on a CPU), smoke (a tiny model, for tests), "
                   "wmt14 (default quick)")
    p.add_argument("--output", "-o", type=Path, help="directory for results, report, plot, models, and the rows' "
                   "cache (cache/): row jobs on several machines share it through a shared filesystem")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--baseline", type=Path, help="start from this trained model instead of the preset's: .pt, "
                   ".sfz, or a Hugging Face model (directory or hub name; rows it cannot take are left out, with why)")
    p.add_argument("--only", help="comma-separated experiment names (the baseline and control always run)")
    p.add_argument("--threads", type=int, help=THREADS_HELP)
    p.add_argument("--cached", action="store_true", help="run nothing: report the rows already cached and list "
                                                         "the rest as not run yet (e.g. while a sweep runs elsewhere)")
    p.add_argument("--list-rows", action="store_true", help="print the preset's rows, one per line, and exit (row "
                   "names for --only, e.g. one per job of a job array)")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("attention", help="quantize self-attention probabilities and measure what changes",
                       description="Record encoder and decoder self-attention on validation sentences, quantize "
                                   "the probabilities to k values (k-means and uniform levels), report JS divergence "
                                   "and max difference per layer and head, and BLEU when decoding with the quantized "
                                   "attention in place. Writes attention.json, attention.md, attention_hist.png.")
    p.add_argument("checkpoint", type=Path, help=MODEL_HELP)
    p.add_argument("--output", "-o", type=Path, required=True, help="directory for attention.json/.md and the plot")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--sentences", type=int, default=200, help="validation sentences to record attention on")
    p.add_argument("--split", help="split decoded for BLEU (default: the model's test split)")
    p.add_argument("--test-sentences", type=int, help="decode only the first N sentences of that split")
    p.add_argument("--k", default="2,4,8,16,32", help="numbers of distinct values to try")
    add_dense_arg(p)
    p.add_argument("--beam", type=int, help="beam size for the BLEU decodes (default: the model's)")
    p.add_argument("--threads", type=int, help=THREADS_HELP)
    p.set_defaults(func=cmd_attention)

    p = sub.add_parser("export", help="write a model for an inference engine (CTranslate2)",
                       description="Export a checkpoint or packed model (compressed ones with their effective "
                                   "weights) to a CTranslate2 model directory, with the SentencePiece model beside "
                                   "it (sentencepiece.model). Needs the optional extra: pip install "
                                   "'shrinkformer[export]'.")
    p.add_argument("checkpoint", type=Path, help=MODEL_HELP)
    p.add_argument("--format", default="ctranslate2", choices=("ctranslate2", "hf"),
                   help="ctranslate2 (default): a CTranslate2 model directory; hf: a Hugging Face model back as a "
                        "directory transformers loads (decompressed weights)")
    p.add_argument("--quantization", default="float32", choices=("float32", "int8", "int8_float32"),
                   help="how CTranslate2 stores the weights (default float32)")
    p.add_argument("--output", "-o", type=Path, required=True, help="directory to create (must not exist)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="sacreBLEU and chrF of a model on a split, or of files",
                       description="Score a checkpoint on a split, or a hypothesis file against references.")
    add_decode_args(p, checkpoint_optional=True)
    p.add_argument("--test-sentences", type=int, help="decode only the first N sentences of the split")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--split", help="split to translate and score (default: the model's test split)")
    p.add_argument("--hypotheses", type=Path, help="score this file of translations instead of a model")
    p.add_argument("--references", type=Path, help="reference translations for --hypotheses")
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("web-demo", help="write a web page that translates with a packed model in the browser",
                       description="Write a static page that runs a packed .sfz of shrinkformer's Transformer in the "
                                   "browser: the runtime compiled to WebAssembly, its JavaScript, and the model beside "
                                   "it as model.sfz (the page also takes one dropped in). Serve the directory with any "
                                   "static server, e.g. python3 -m http.server -d DIR; WebCrypto, which checks the "
                                   "file, needs the page served from localhost or https, not opened as a file.")
    p.add_argument("checkpoint", type=Path, help="a packed model (.sfz) of shrinkformer's Transformer")
    p.add_argument("--output", "-o", type=Path, required=True, help="directory to write (must not exist)")
    p.add_argument("--force", action="store_true", help="replace OUTPUT if it is a directory")
    p.set_defaults(func=cmd_web_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["shrinkformer", *argv])  # what ran, recorded in every output
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except ShrinkformerError as err:
        print(f"shrinkformer: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # a writer not routed through io.atomic_write; still one line
        if err.errno not in STORAGE_ERRNOS | {errno.EACCES}:
            raise
        print(f"shrinkformer: error: cannot write {err.filename or 'an output'}: {err.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("shrinkformer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

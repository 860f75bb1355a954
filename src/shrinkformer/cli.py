"""The ``shrinkformer`` command: the only place that parses arguments and prints."""

from __future__ import annotations

import argparse
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
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="tiny, small (default), base or big")
    p.add_argument("--config", type=Path, help="YAML file with model/data/train/decode sections")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set train.lr=5e-4 (repeatable)")
    p.add_argument("--data-dir", help="directory of {split}.{lang}[.gz] files (else $SHRINKFORMER_DATA, "
                                      "else the dataset is downloaded)")


def cmd_train(args: argparse.Namespace) -> int:
    from .train.distributed import init_world, shutdown
    from .train.loop import train

    overrides = list(args.overrides) + ([f"data.data_dir={args.data_dir}"] if args.data_dir else [])
    cfg = load_config(args.preset, args.config, overrides)
    world = init_world()
    if not world.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    started = time.perf_counter()
    try:
        metrics = train(cfg, args.output, world)
    finally:
        shutdown(world)
    if world.is_main:
        metrics.update(command=shlex.join(["shrinkformer", *sys.argv[1:]]), torch_version=torch.__version__,
                       shrinkformer_version=__version__, machine=machine(), world_size=world.size,
                       wall_seconds=round(time.perf_counter() - started, 1))
        write_json_atomic(metrics, args.output / "metrics.json")
        print(f"{metrics['test_split']}: BLEU {metrics['bleu']:.2f}, chrF {metrics['chrf']:.2f} "
              f"({metrics['bleu_signature']})")
        print(f"model: {args.output / 'model.pt'}; metrics: {args.output / 'metrics.json'}")
    return 0


def _translator(args: argparse.Namespace):
    from .model.search import SearchConfig
    from .train.checkpoint import load_model
    from .translate import Translator

    cfg, tokenizer, model = load_model(args.checkpoint)
    search = SearchConfig(beam_size=args.beam if args.beam is not None else cfg.decode.beam_size,
                          length_penalty=cfg.decode.length_penalty if args.length_penalty is None else args.length_penalty,
                          max_len_a=cfg.decode.max_len_a, max_len_b=cfg.decode.max_len_b)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return cfg, Translator(model, tokenizer, search, batch_sentences=args.batch_size, device=device)


def add_decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", type=Path, help="model checkpoint (model.pt)")
    p.add_argument("--beam", type=int, help="beam size (default: the model's, 5); 1 is greedy")
    p.add_argument("--length-penalty", type=float)
    p.add_argument("--batch-size", type=int, default=64, help="sentences per batch")


def cmd_translate(args: argparse.Namespace) -> int:
    _, translator = _translator(args)
    source = open(args.input, encoding="utf-8") if args.input else sys.stdin
    # A named output file appears only once complete; stdout streams line by line.
    tmp = args.output.with_name(f".{args.output.name}.tmp") if args.output else None
    out = open(tmp, "w", encoding="utf-8") if tmp else sys.stdout
    try:
        for line in translator.stream(source, chunk=args.batch_size):
            out.write(line + "\n")
            out.flush()
        if tmp:
            out.close()
            os.replace(tmp, args.output)
    except UnicodeDecodeError as err:
        raise ShrinkformerError(f"{args.input or 'stdin'}: invalid UTF-8 ({err.reason})") from None
    finally:
        if args.input:
            source.close()
        if tmp:
            out.close()
            tmp.unlink(missing_ok=True)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .data.corpus import read_lines
    from .evaluate.bleu import score
    from .train.loop import read_split

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
        test = read_split(cfg, split)
        scores = score(translator.translate(test.source), test.target)
        result = {"checkpoint": str(args.checkpoint), "split": split, "beam_size": translator.search.beam_size}
    result.update(scores.to_dict())
    print(json.dumps(result, indent=2) if args.json else str(scores))
    return 0


def build_parser() -> argparse.ArgumentParser:
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

    p = sub.add_parser("evaluate", help="sacreBLEU and chrF of a model on a split, or of files",
                       description="Score a checkpoint on a split, or a hypothesis file against references.")
    p.add_argument("checkpoint", type=Path, nargs="?")
    p.add_argument("--beam", type=int)
    p.add_argument("--length-penalty", type=float)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--data-dir")
    p.add_argument("--split", help="default: the model's test split")
    p.add_argument("--hypotheses", type=Path)
    p.add_argument("--references", type=Path)
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except ShrinkformerError as err:
        print(f"shrinkformer: error: {err}", file=sys.stderr)
        return err.exit_code
    except ValueError as err:  # invalid parameters caught by config dataclasses
        print(f"shrinkformer: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("shrinkformer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

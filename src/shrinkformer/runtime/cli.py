"""``shrinkformer-translate MODEL.sfz``: translate lines from stdin (or a file) with the runtime
alone, without torch. ``shrinkformer translate`` runs this too where torch is not installed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ..errors import DataError, ShrinkformerError, UsageError
from ..io import atomic_write, check_writable


def build_parser(prog: str = "shrinkformer-translate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Translate one sentence per line with a packed .sfz model, "
                                                       "streaming, detokenized (the torch-free runtime).")
    p.add_argument("checkpoint", type=Path, help="a packed model (.sfz) of shrinkformer's Transformer")
    p.add_argument("--input", "-i", type=Path, help="source file (default: stdin)")
    p.add_argument("--output", "-o", type=Path, help="output file (default: stdout), written once complete")
    p.add_argument("--beam", type=int, help="beam size (default: the model's decode.beam_size)")
    p.add_argument("--length-penalty", type=float, help="default: the model's decode.length_penalty")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per batch (default 64)")
    p.add_argument("--threads", type=int, help="threads for the native library (default: all cores)")
    p.add_argument("--int8", action="store_true",
                   help="4-bit layers with int8 activations, as CTranslate2's int8 (faster, not exact: "
                        "translations move a little)")
    p.add_argument("--half-cache", action="store_true",
                   help="attention keys and values in float16: half a batch's memory (not exact either)")
    return p


def run(args: argparse.Namespace) -> int:
    from .translator import Translator

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.output:
        check_writable(args.output)
    translator = Translator.load(args.checkpoint, beam_size=args.beam, length_penalty=args.length_penalty,
                                 batch_sentences=args.batch_size, threads=args.threads,
                                 int8=args.int8, half_cache=args.half_cache)
    translate_stream(translator, args.input, args.output, args.batch_size)
    return 0


def translate_stream(translator, input_path: str | None, output_path: str | None, chunk: int) -> None:
    """Lines of ``input_path`` (or stdin) to ``output_path`` (or stdout, line by line as they are
    translated); a named output appears only once complete. Both CLIs translate through this."""
    try:
        source = open(input_path, encoding="utf-8") if input_path else sys.stdin
    except OSError as err:
        raise UsageError(f"{input_path}: cannot read ({err.strerror})") from None
    try:
        if output_path:
            with atomic_write(output_path) as out:
                for line in translator.stream(source, chunk=chunk):
                    out.write((line + "\n").encode("utf-8"))
        else:
            for line in translator.stream(source, chunk=chunk):
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
    except UnicodeDecodeError as err:
        raise DataError(f"{input_path or '<stdin>'}: invalid UTF-8 at byte {err.start}") from None
    finally:
        if input_path:
            source.close()


def main(argv: Sequence[str] | None = None, prog: str = "shrinkformer-translate") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        return run(args)
    except ShrinkformerError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

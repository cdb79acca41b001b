"""`replaylab tokenizer train SOURCE... --vocab-size N --out DIR` and `replaylab tokenizer show SPEC`."""

from __future__ import annotations

import argparse
import math

from replaylab.commands.data import _add_source_options, source_options
from replaylab.errors import DataError

HELP = "train a byte-level BPE tokenizer on corpora, or show a tokenizer"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", parser_class=type(p))
    sub.required = True
    t = sub.add_parser("train", help="train a deterministic byte-level BPE on a sample of each source")
    t.add_argument(
        "sources", nargs="+", metavar="SOURCE", help="recipe names, .jsonl/.txt/.parquet files or folders, hf:..."
    )
    t.add_argument("--vocab-size", type=int, required=True, help="vocabulary size including <|endoftext|> (>= 257)")
    t.add_argument(
        "--out",
        required=True,
        help="folder to write tokenizer.json into (a new folder, or one of replaylab's tokenizer folders)",
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a replaylab tokenizer folder trained on other sources or settings",
    )
    t.add_argument(
        "--sample-mb", type=float, default=2.0, help="MB of text taken from the start of each source (default 2)"
    )
    _add_source_options(t)
    s = sub.add_parser("show", help="vocab size, EOS token, hash, and how a text tokenizes")
    s.add_argument("spec", metavar="SPEC", help="'default', a tokenizer.json / folder, or a hub id")
    s.add_argument("--text", default="Replaying pre-training data improves fine-tuning.", help="text to tokenize")


def main(args: argparse.Namespace) -> int:
    from replaylab.data.tokenizer import get_tokenizer, train_tokenizer

    if args.tokenizer_command == "train":
        if not 1 <= args.sample_mb * 1e6 < math.inf:  # nan too, and less than a byte
            raise DataError(
                f"--sample-mb {args.sample_mb} is not a size; give the megabytes of text to sample from "
                "each source, at least 1e-6, such as 2"
            )
        tok = train_tokenizer(
            args.sources,
            vocab_size=args.vocab_size,
            out=args.out,
            sample_bytes=int(args.sample_mb * 1e6),
            options=source_options(args),
            overwrite=args.overwrite,
        )
        print(f"vocab {tok.vocab_size:,}, eos id {tok.eos_id}, hash {tok.hash[:12]}")
        print(tok.path)
        return 0
    tok = get_tokenizer(args.spec)
    ids = tok.encode(args.text)
    print(f"path       {tok.path}")
    print(f"vocab      {tok.vocab_size:,} ({tok.dtype.name} in stores)")
    print(f"eos        {tok.eos_id} {tok.backend.id_to_token(tok.eos_id)!r}")
    print(f"hash       {tok.hash}")
    print(f"tokens     {len(ids)} for {len(args.text)} chars: {[tok.backend.id_to_token(i) for i in ids]}")
    return 0

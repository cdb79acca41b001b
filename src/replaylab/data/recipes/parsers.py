"""Turn the raw formats of our sources into plain documents. Each parser takes the raw bytes or
text of ONE source file and returns plain text (or a list of documents); none touches the network."""

from __future__ import annotations

import gettext
import html
import io
import re
import struct
import warnings
import zlib
from html.parser import HTMLParser
from pathlib import Path

# --------------------------------------------------------------------------------------- Brown corpus

_BROWN_TOKEN = re.compile(r"(\S+)/[^\s/]+")
# Brown writes quotes as `` and '', and separates punctuation and possessives from words.
_DETOK_RULES = [
    (re.compile(r"``\s*"), '"'),
    (re.compile(r"\s*''"), '"'),
    (re.compile(r"\s+([.,;:!?%)\]}])"), r"\1"),
    (re.compile(r"([(\[{$])\s+"), r"\1"),
    (re.compile(r"\s+(n't|'s|'re|'ve|'ll|'d|'m)\b", re.IGNORECASE), r"\1"),
    (re.compile(r" {2,}"), " "),
]


def detokenize(tokens: list[str]) -> str:
    text = " ".join(tokens)
    for pattern, repl in _DETOK_RULES:
        text = pattern.sub(repl, text)
    return text.strip()


def parse_brown(text: str) -> str:
    """A Brown corpus file (`word/tag` tokens, one sentence per tab-indented line) as running prose:
    one sentence after another, tags removed, spacing restored."""
    sentences = []
    for line in text.splitlines():
        tokens = _BROWN_TOKEN.findall(line)
        if tokens:
            sentences.append(detokenize(tokens))
    return " ".join(sentences)


# ------------------------------------------------------------------------------- World English Bible

_NOTE = re.compile(r"<note\b[^>]*>.*?</note>", re.DOTALL)
_TITLE = re.compile(r"<title\b[^>]*>.*?</title>", re.DOTALL)
_TAG = re.compile(r"<[^>]+>")


def clean_osis(raw: str) -> str:
    """OSIS markup of a Bible passage as plain text: footnotes and section titles removed, word
    tags stripped. (pysword's own `clean=True` deletes footnotes without the space they replace.)"""
    text = _TITLE.sub(" ", _NOTE.sub(" ", raw))
    text = html.unescape(_TAG.sub("", text))
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" +([,.;:!?’”])", r"\1", text)
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


def read_bible_books(sword_root: Path, module: str) -> list[tuple[str, str]]:
    """(book name, plain text) for every book of a SWORD zText Bible module, in canonical order.
    Reads the module with our own block reader (`recipes.sword`): about a second, where pysword's
    per-verse block decompression took minutes."""
    from replaylab.data.recipes.sword import read_books

    return [(name, clean_osis(raw)) for name, raw in read_books(sword_root, module)]


# ------------------------------------------------------------------------------------ R lazy-load DB


def read_r_lazyload(data_dir: Path, name: str = "Rdata") -> dict[str, object]:
    """Objects of an R package's lazy-load database (`NAME.rdx` index + `NAME.rdb` blocks), without R.
    Each block is a 4-byte big-endian length followed by a zlib stream of an R serialization."""
    import rdata

    with warnings.catch_warnings():  # no file magic in a lazy-load DB: rdata warns "assumed RDS"
        warnings.simplefilter("ignore", UserWarning)
        index = rdata.conversion.convert(rdata.parser.parse_data((data_dir / f"{name}.rdx").read_bytes()))
    blob = (data_dir / f"{name}.rdb").read_bytes()
    out = {}
    for var in sorted(index["variables"]):
        offset, length = (int(x) for x in index["variables"][var])
        block = blob[offset : offset + length]
        (size,) = struct.unpack(">i", block[:4])
        raw = zlib.decompress(block[4:])
        assert len(raw) == size, f"corrupt R lazy-load block for {var}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out[str(var)] = rdata.conversion.convert(rdata.parser.parse_data(raw))
    return out


_CHAPTER = re.compile(r"^\s*(chapter|volume)\b", re.IGNORECASE)


def split_chapters(lines: list[str]) -> list[str]:
    """A novel given as lines (blank line = paragraph break) split at its CHAPTER headings; each
    chapter keeps its heading. Text before the first heading (title page) is its own piece."""
    pieces: list[list[str]] = [[]]
    for line in lines:
        # a heading right after another ("VOLUME I", "CHAPTER I") stays with it
        if _CHAPTER.match(line) and any(x.strip() and not _CHAPTER.match(x) for x in pieces[-1]):
            pieces.append([])
        pieces[-1].append(line)
    out = []
    for piece in pieces:
        paragraphs = re.split(r"\n\s*\n", "\n".join(piece))
        text = "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())
        if text:
            out.append(text)
    return out


# --------------------------------------------------------------------------- LibreOffice help (HTML)


class _HelpParagraphs(HTMLParser):
    """Collects the text of elements whose id starts with par_id/hd_id (the translated paragraphs
    and headings); navigation, scripts and untranslated chrome carry no such ids."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._depth = 0  # >0 while inside a wanted element (nesting of any tags below it)
        self._buf: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._depth:
            if tag not in ("br", "img", "input", "meta", "link", "hr"):
                self._depth += 1
            return
        ident = dict(attrs).get("id") or ""
        if ident.startswith(("par_id", "hd_id")) and tag not in ("br", "img", "input", "meta", "link", "hr"):
            self._depth = 1
            self._buf = []

    def handle_endtag(self, tag: str) -> None:
        if self._depth:
            self._depth -= 1
            if self._depth == 0:
                text = " ".join("".join(self._buf).split())
                if text:
                    self.paragraphs.append(text)

    def handle_data(self, data: str) -> None:
        if self._depth:
            self._buf.append(data)


def parse_help_html(text: str) -> str:
    """The translated paragraphs of one LibreOffice help page, one per line."""
    parser = _HelpParagraphs()
    parser.feed(text)
    parser.close()
    return "\n".join(parser.paragraphs)


# ------------------------------------------------------------------------------- gettext catalogs

_ACCEL = re.compile(r"[~_](?=\w)")


def parse_mo(data: bytes) -> str:
    """The translated strings of a compiled gettext catalog (.mo), one per line, in msgid order.
    Plural forms are all kept; the header (empty msgid) is dropped."""
    catalog = gettext.GNUTranslations(io.BytesIO(data))._catalog  # noqa: SLF001 (no public accessor)
    items = sorted(((str(k), str(v)) for k, v in catalog.items() if k != ""), key=lambda kv: kv[0])
    lines = []
    for _, value in items:
        # `~` (VCL) and `_` (GTK) before a letter mark keyboard accelerators, not text
        value = " ".join(_ACCEL.sub("", value).split())
        if value:
            lines.append(value)
    return "\n".join(lines)

"""A small reader for SWORD `zText` Bible modules (the World English Bible in Debian's
`sword-text-web`), one book at a time.

Why our own: pysword decompresses the whole compressed block again for every verse it returns, and
this module stores one block per book, so reading the Bible through it costs ~31,000 block
decompressions (minutes on 2 cores). Here each block is inflated once. We still take the
versification tables (book names, verses per chapter) from pysword: they are data, not code.

The format, per testament (`ot`, `nt`), in the module's DataPath (`b` = BlockType BOOK):
  `ot.bzs`  block index: one little-endian record `<III` (offset in .bzz, compressed size,
            uncompressed size) per block;
  `ot.bzv`  verse index: one record `<IIH` (block number, start, length inside the inflated block)
            per entry, entries in versification order: [0] module heading, [1] testament heading,
            then per book one book-intro entry and per chapter one chapter-intro entry followed by
            that chapter's verses;
  `ot.bzz`  the zlib-compressed blocks, back to back.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from replaylab.errors import DataError

_BLOCK = struct.Struct("<III")
_VERSE = struct.Struct("<IIH")
_EXT = {"BOOK": "b", "CHAPTER": "c", "VERSE": "v"}


@dataclass(frozen=True)
class ModuleConf:
    """The few `mods.d/<module>.conf` keys a zText reader needs."""

    data_path: Path
    versification: str
    block_type: str


def read_conf(sword_root: Path, module: str) -> ModuleConf:
    confs = [
        p
        for p in sorted((sword_root / "mods.d").glob("*.conf"))
        if re.search(rf"^\[{re.escape(module)}\]\s*$", p.read_text(encoding="utf-8", errors="replace"), re.M)
    ]
    if not confs:
        raise DataError(
            f"SWORD module {module!r} not found under {sword_root / 'mods.d'}: "
            f"check the module name and the unpacked package"
        )
    keys: dict[str, str] = {}
    for line in confs[0].read_text(encoding="utf-8", errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            keys.setdefault(key.strip(), value.strip())  # repeated keys (filters): first is enough
    driver, compress = keys.get("ModDrv", ""), keys.get("CompressType", "ZIP").upper()
    if driver.lower() != "ztext" or compress != "ZIP":
        raise DataError(
            f"SWORD module {module!r} is ModDrv={driver} CompressType={compress}; "
            f"this reader handles only zText with ZIP (zlib) compression"
        )
    return ModuleConf(
        data_path=sword_root / keys["DataPath"].removeprefix("./").rstrip("/"),
        versification=keys.get("Versification", "KJV").lower(),
        block_type=keys.get("BlockType", "CHAPTER").upper(),
    )


class _Testament:
    """One testament's three files, with each block inflated at most once."""

    def __init__(self, folder: Path, name: str, ext: str) -> None:
        blocks = (folder / f"{name}.{ext}zs").read_bytes()
        self._blocks = [_BLOCK.unpack_from(blocks, i) for i in range(0, len(blocks) - len(blocks) % 12, 12)]
        verses = (folder / f"{name}.{ext}zv").read_bytes()
        self._verses = verses
        self._count = len(verses) // _VERSE.size
        self._data = (folder / f"{name}.{ext}zz").read_bytes()
        self._cache: dict[int, bytes] = {}

    def _block(self, number: int) -> bytes:
        if number not in self._cache:
            if number >= len(self._blocks):
                return b""
            offset, size, _ = self._blocks[number]
            self._cache = {number: zlib.decompress(self._data[offset : offset + size])}  # books come in order
        return self._cache[number]

    def entry(self, index: int) -> bytes:
        if index >= self._count:
            return b""
        block, start, length = _VERSE.unpack_from(self._verses, index * _VERSE.size)
        return self._block(block)[start : start + length]


def read_books(sword_root: Path, module: str) -> Iterator[tuple[str, str]]:
    """(book name, raw OSIS text of its verses joined by newlines) for every book in canonical order
    (Old Testament then New). Chapter and book intro entries are skipped, as pysword's `get` does."""
    from pysword.canons import canons

    conf = read_conf(sword_root, module)
    if conf.versification not in canons:
        raise DataError(f"SWORD module {module!r} uses versification {conf.versification!r}, unknown to pysword")
    ext = _EXT.get(conf.block_type)
    if ext is None:
        raise DataError(f"SWORD module {module!r} has BlockType={conf.block_type}; expected BOOK, CHAPTER or VERSE")
    for testament in ("ot", "nt"):
        if not (conf.data_path / f"{testament}.{ext}zv").exists():
            continue
        reader = _Testament(conf.data_path, testament, ext)
        index = 2  # after the module and testament headings
        for name, _osis, _abbrev, chapter_lengths in canons[conf.versification][testament]:
            index += 1  # book intro
            verses = []
            for n in chapter_lengths:
                index += 1  # chapter intro
                verses.extend(reader.entry(i).decode("utf-8", errors="replace") for i in range(index, index + n))
                index += n
            yield name, "\n".join(verses)

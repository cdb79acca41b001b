"""Token stores: the design.md API, determinism, split disjointness, packing, nested budgets."""

import hashlib
import json

import numpy as np
import pytest

from replaylab.data.corpus import source_name
from replaylab.data.store import StoreOptions, TokenStore, choose_val_docs, get_store, open_store
from replaylab.data.tokenizer import load_tokenizer
from replaylab.errors import DataError
from replaylab.outputs import MARKER


def _file_hashes(store: TokenStore) -> dict[str, str]:
    """The store's files (not replaylab's marker: it records when the folder was made, to the second)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(store.path.iterdir()) if p.name != MARKER
    }


def test_store_layout_and_meta(code_store, tiny_tokenizer):
    names = {p.name for p in code_store.path.iterdir()}
    assert names == {
        "train.bin",
        "val.bin",
        "train_docs.npy",
        "val_docs.npy",
        "meta.json",
        "tokenizer.json",
        ".replaylab.json",
    }  # the marker: a store of replaylab's (replaylab.outputs)
    m = code_store.meta
    tok = load_tokenizer(tiny_tokenizer)
    assert m["tokenizer_hash"] == tok.hash == code_store.tokenizer().hash and m["dtype"] == "uint16"
    assert m["splits"]["train"]["tokens"] + m["splits"]["val"]["tokens"] == m["tokens"]
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == m["documents"]
    assert (code_store.path / "train.bin").stat().st_size == 2 * m["splits"]["train"]["tokens"]
    # The default split gives a small corpus >= 64 validation sequences of 256 tokens.
    assert code_store.num_sequences("val", 256) >= 64
    assert 2.0 < code_store.bytes_per_token("train") < 6.0
    assert len(code_store.identity) == 64


def test_documents_are_joined_by_eos(code_store, tiny_tokenizer):
    tok = load_tokenizer(tiny_tokenizer)
    offsets = code_store.doc_offsets("train")
    tokens = code_store.tokens("train")
    assert offsets[0] == 0 and offsets[-1] == len(tokens)
    ends = offsets[1:] - 1
    assert np.all(tokens[ends] == tok.eos_id)
    assert np.count_nonzero(tokens == tok.eos_id) == len(ends)  # EOS appears nowhere else
    first = tok.decode(tokens[offsets[0] : offsets[1] - 1])
    assert first.startswith(('"""', "#", "'''", "import", "from", 'r"""'))


def test_packing_and_gather(code_store):
    L = 64
    n = code_store.num_sequences("train", L)
    assert n == (code_store.num_tokens("train") - 1) // L
    idx = np.array([0, 5, n - 1])
    seqs = code_store.sequences("train", L, idx)
    assert seqs.dtype == np.int64 and seqs.shape == (3, L + 1)
    flat = code_store.tokens("train")
    for row, i in zip(seqs, idx):
        assert np.array_equal(row, flat[i * L : i * L + L + 1])
    # Consecutive sequences overlap by exactly one token (the shifted target).
    two = code_store.sequences("train", L, np.array([3, 4]))
    assert two[0, -1] == two[1, 0]
    with pytest.raises(DataError, match="out of range"):
        code_store.sequences("train", L, np.array([n]))


def test_nested_budgets(code_store):
    small = code_store.budget_indices(256, 16, seed=0)
    big = code_store.budget_indices(256, 64, seed=0)
    assert np.array_equal(big[:16], small)
    assert len(set(big.tolist())) == 64
    assert not np.array_equal(code_store.budget_indices(256, 64, seed=1), big)
    total = code_store.num_sequences("train", 256)
    with pytest.raises(DataError, match=f"has {total} train sequences"):
        code_store.budget_indices(256, total + 1, seed=0)


def test_split_is_disjoint_by_document(code_store, code_corpus):
    texts = [json.loads(line)["text"] for line in open(code_corpus)]
    hashes = (
        lambda split: {  # noqa: E731
            bytes(code_store.tokens(split)[a:b].tobytes())
            for a, b in zip(code_store.doc_offsets(split)[:-1], code_store.doc_offsets(split)[1:])
        }
    )
    train, val = hashes("train"), hashes("val")
    assert val and train and not (train & val)
    assert code_store.num_documents("train") + code_store.num_documents("val") == len(texts)


def test_two_builds_are_identical(tmp_path, monkeypatch, prose_corpus, tiny_tokenizer):
    stores = []
    for i in range(2):
        monkeypatch.setenv("REPLAYLAB_HOME", str(tmp_path / f"home{i}"))
        stores.append(get_store(str(prose_corpus), tokenizer=tiny_tokenizer, options={"max_docs": 20}))
    assert _file_hashes(stores[0]) == _file_hashes(stores[1])
    assert stores[0].identity == stores[1].identity and stores[0].name == stores[1].name


def test_cache_reuse_and_options_change_the_name(isolated_home, prose_corpus, tiny_tokenizer):
    a = get_store(str(prose_corpus), tokenizer=tiny_tokenizer, options={"max_docs": 10, "val_docs": 2})
    mtime = (a.path / "meta.json").stat().st_mtime_ns
    again = get_store(str(prose_corpus), tokenizer=tiny_tokenizer, options={"max_docs": 10, "val_docs": 2})
    assert again.path == a.path and (a.path / "meta.json").stat().st_mtime_ns == mtime
    b = get_store(str(prose_corpus), tokenizer=tiny_tokenizer, options={"max_docs": 10, "val_docs": 3})
    assert b.path != a.path and b.identity != a.identity and b.num_documents("val") == 3
    assert get_store(str(a.path)).path == a.path  # a store folder is itself a source
    assert open_store(a.name).path == a.path
    with pytest.raises(DataError, match="not built"):
        get_store(str(prose_corpus), tokenizer=tiny_tokenizer, options={"max_docs": 11}, build=False)
    assert not any(p.name.endswith(".tmp") for p in (isolated_home / "stores").iterdir())


def test_val_options(isolated_home, prose_corpus, tiny_tokenizer):
    s = get_store(str(prose_corpus), tokenizer=tiny_tokenizer, options={"max_docs": 20, "val_fraction": 0.25})
    assert s.num_documents("val") == 5 and s.num_documents("train") == 15
    s0 = get_store(str(prose_corpus), tokenizer=tiny_tokenizer, options={"max_docs": 20, "val_docs": 0})
    assert s0.num_tokens("val") == 0 and s0.num_sequences("val", 256) == 0
    with pytest.raises(DataError, match="leaves no training document"):
        get_store(str(prose_corpus), tokenizer=tiny_tokenizer, options={"max_docs": 5, "val_docs": 5})
    with pytest.raises(DataError, match="not both"):
        get_store(str(prose_corpus), tokenizer=tiny_tokenizer, options={"val_docs": 1, "val_fraction": 0.1})
    with pytest.raises(DataError, match="unknown data option 'val_doc'"):
        get_store(str(prose_corpus), tokenizer=tiny_tokenizer, options={"val_doc": 1})


def test_default_val_rule_scales_with_corpus():
    opts = StoreOptions()
    small = np.full(100, 1000)  # 100k tokens: needs the 64x257 minimum, under the 25% cap
    big = np.full(100_000, 1000)  # 100M tokens: capped at 1024 sequences
    assert 64 * 257 <= (small * choose_val_docs(small, opts)).sum() < 0.25 * small.sum()
    assert (big * choose_val_docs(big, opts)).sum() <= 1024 * 257 + 1000
    tiny = np.full(10, 100)  # cannot reach 64 sequences: at most a quarter of the corpus
    assert 1 <= choose_val_docs(tiny, opts).sum() <= 3


def test_store_smaller_than_one_sequence(isolated_home, tmp_path, tiny_tokenizer):
    f = tmp_path / "small.jsonl"
    f.write_text('{"text": "a few words"}\n{"text": "and more"}\n')
    s = get_store(str(f), tokenizer=tiny_tokenizer, options={"val_docs": 1})
    assert s.num_sequences("train", 256) == 0
    with pytest.raises(DataError, match="fewer than one sequence of 256"):
        s.budget_indices(256, 1, seed=0)
    with pytest.raises(DataError, match="fewer than one sequence"):
        s.sequences("train", 256, np.array([0]))


def test_single_document_needs_val_docs_zero(isolated_home, tmp_path, tiny_tokenizer):
    f = tmp_path / "one.txt"
    f.write_text("one document " * 200)
    with pytest.raises(DataError, match="single document.*--val-docs 0"):
        get_store(str(f), tokenizer=tiny_tokenizer)
    assert not (isolated_home / "stores").exists() or not [
        p for p in (isolated_home / "stores").iterdir() if not p.name.endswith(".lock")
    ]
    s = get_store(str(f), tokenizer=tiny_tokenizer, options={"val_docs": 0})
    assert s.num_documents("train") == 1


def test_large_vocab_uses_uint32(isolated_home, tmp_path, tiny_tokenizer):
    from tokenizers import Tokenizer as HF

    backend = HF.from_file(f"{tiny_tokenizer}/tokenizer.json")
    backend.add_tokens([f"zzq{i}qzz" for i in range(65_200)])  # vocab > 65536: ids need 32 bits
    (tmp_path / "big").mkdir()
    backend.save(str(tmp_path / "big" / "tokenizer.json"))
    f = tmp_path / "docs.jsonl"
    f.write_text("".join(json.dumps({"text": f"word zzq65100qzz number {i}"}) + "\n" for i in range(30)))
    s = get_store(str(f), tokenizer=str(tmp_path / "big"), options={"val_docs": 2})
    assert s.meta["dtype"] == "uint32" and (s.path / "train.bin").stat().st_size == 4 * s.num_tokens("train")
    big_id = backend.token_to_id("zzq65100qzz")
    assert big_id > 65535 and big_id in s.sequences("train", 8, np.arange(3)).ravel()


def test_build_streams_in_bounded_memory(isolated_home, tmp_path, prose_corpus, tiny_tokenizer):
    """Python-side peak memory does not grow with the corpus: 3x the text, about the same peak."""
    import shutil
    import tracemalloc

    from replaylab.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_tokenizer)
    opts = {"batch_docs": 8, "batch_chars": 50_000}
    get_store(str(prose_corpus), tokenizer=tok, options={**opts, "max_docs": 3})  # warm-up: imports are not measured
    big = tmp_path / "big"
    big.mkdir()
    for i in range(3):
        shutil.copy(prose_corpus, big / f"part{i}.jsonl")
    peaks = []
    for source in (str(prose_corpus), str(big)):
        tracemalloc.start()
        try:
            store = get_store(source, tokenizer=tok, options=opts)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    assert store.meta["utf8_bytes"] > 1_300_000
    assert peaks[1] < 1.5 * peaks[0], peaks  # holding the text would need > 3x


def _write_part(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
    return str(path)


def test_split_named_files_are_named_after_their_dataset(isolated_home, tmp_path, prose_corpus, tiny_tokenizer):
    """Two datasets' train.jsonl give `<dataset>-train-...` stores, not two `train-...` ones (issue 15)."""
    lines = prose_corpus.read_text(encoding="utf-8").splitlines(keepends=True)
    wiki = _write_part(tmp_path / "wiki" / "train.jsonl", lines[:10])
    forum = _write_part(tmp_path / "forum" / "data" / "train.jsonl", lines[10:20])  # a `data/` folder is skipped
    a = get_store(wiki, tokenizer=tiny_tokenizer, options={"val_docs": 2})
    b = get_store(forum, tokenizer=tiny_tokenizer, options={"val_docs": 2})
    assert a.name.rsplit("-", 2)[0] == "wiki-train" and b.name.rsplit("-", 2)[0] == "forum-train"
    assert a.meta["source_name"] == "wiki-train" and a.meta["source_path"] == str(tmp_path / "wiki" / "train.jsonl")
    assert open_store("wiki-train").path == a.path and open_store("forum-train").path == b.path
    # Split-like folders too, and any split stem; the prefix is sanitized like the rest of the name.
    (tmp_path / "wiki" / "test").mkdir()
    assert source_name(str(tmp_path / "wiki" / "test")) == "wiki-test"
    assert source_name(_write_part(tmp_path / "my corpus" / "validation.jsonl", lines[:2])) == "my_corpus-validation"


def test_other_sources_keep_their_names(isolated_home, tmp_path, prose_corpus, tiny_tokenizer):
    """Recipes, hf: ids and non-split stems are named as before: run configs and the demo find their stores."""
    assert source_name("code") == "code" and source_name("generic") == "generic"
    assert source_name("hf:org/name:cfg") == "org_name_cfg"
    assert source_name(str(prose_corpus)) == "prose"
    lines = prose_corpus.read_text(encoding="utf-8").splitlines(keepends=True)
    own = get_store(_write_part(tmp_path / "wiki.jsonl", lines[:10]), tokenizer=tiny_tokenizer, options={"val_docs": 2})
    assert own.name.rsplit("-", 2)[0] == "wiki" and own.meta["source_name"] == "wiki"
    # The source-name lookup matches `wiki-<tok>-<key>` exactly, never the store of wiki/train.jsonl.
    get_store(
        _write_part(tmp_path / "wiki" / "train.jsonl", lines[10:20]), tokenizer=tiny_tokenizer, options={"val_docs": 2}
    )
    assert open_store("wiki").path == own.path

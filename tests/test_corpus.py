"""Corpora: every source kind reads real documents; bad input fails with one clear message."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from replaylab.data.corpus import CorpusOptions, CorpusStats, iter_documents, parse_hf, source_fingerprint, source_name
from replaylab.errors import DataError


def test_jsonl_text_field_and_template(tmp_path):
    f = tmp_path / "qa.jsonl"
    f.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"question": "What is 2+2?", "answer": "4", "body": "first"},
                {"question": "Capital of France?", "answer": "Paris", "body": "second"},
            ]
        )
        + "\n\n"
    )
    assert list(iter_documents(str(f), {"text_field": "body"})) == ["first", "second"]
    docs = list(iter_documents(str(f), {"template": "Q: {question}\nA: {answer}"}))
    assert docs == ["Q: What is 2+2?\nA: 4", "Q: Capital of France?\nA: Paris"]


def test_real_corpus_fixtures(code_corpus, prose_corpus):
    stats = CorpusStats()
    docs = list(iter_documents(str(code_corpus), stats=stats))
    assert len(docs) == stats.documents > 20 and stats.utf8_bytes >= 1_000_000
    assert any("def " in d for d in docs)
    prose = list(iter_documents(str(prose_corpus), {"max_docs": 5}))
    assert len(prose) == 5 and all(len(p) > 20 for p in prose)


def test_txt_folder_one_file_per_document_sorted(tmp_path):
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "b.txt").write_text("second file")
    (d / "a.txt").write_text("first file")
    (d / "sub" / "c.txt").write_text("nested file")
    (d / "notes.md").write_text("not read by default")
    (d / ".hidden.txt").write_text("never read")
    (d / "empty.txt").write_text("  \n")
    stats = CorpusStats()
    assert list(iter_documents(str(d), stats=stats)) == ["first file", "second file", "nested file"]
    assert stats.skipped_empty == 1
    assert list(iter_documents(str(d), {"glob": "*.md"})) == ["not read by default"]


def test_parquet_column_and_template(tmp_path):
    f = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["alpha beta", "gamma"], "q": ["x", "y"], "a": ["1", "2"]}), f)
    assert list(iter_documents(str(f))) == ["alpha beta", "gamma"]
    assert list(iter_documents(str(f), {"template": "{q}={a}"})) == ["x=1", "y=2"]
    with pytest.raises(DataError, match="no column 'body'.*columns present: text, q, a"):
        list(iter_documents(str(f), {"text_field": "body"}))


def test_bad_jsonl_lines_name_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"text": "ok"}\n{"text": "ok"\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        list(iter_documents(str(f)))
    g = tmp_path / "nofield.jsonl"
    g.write_text('{"text": "ok"}\n\n{"body": "x"}\n')
    with pytest.raises(DataError, match=r"nofield.jsonl:3: record has no field 'text'; fields present: body"):
        list(iter_documents(str(g)))
    with pytest.raises(DataError, match=r"nofield.jsonl:1: record has no field 'q' used by template"):
        list(iter_documents(str(g), {"template": "{q}"}))


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    (d / "good.txt").write_bytes("caf\u00e9 \ufffd kept".encode())
    (d / "bad.txt").write_bytes(b"abc \xff\xfe def")
    stats = CorpusStats()
    docs = list(iter_documents(str(d), stats=stats))
    assert docs == ["abc \ufffd\ufffd def", "caf\u00e9 \ufffd kept"]
    assert stats.invalid_utf8_docs == 1 and stats.replaced_chars == 2
    assert "1 document(s) were not valid UTF-8" in stats.note()
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x.txt").write_bytes(b"\xff\xfe\xfd")
    with pytest.raises(DataError, match=r"is empty.*1 undecodable"):
        list(iter_documents(str(junk)))


def test_missing_empty_unknown_and_offline_sources(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="does not exist"):
        list(iter_documents(str(tmp_path / "nope.jsonl")))
    with pytest.raises(DataError, match="unknown source 'no_such_recipe'"):
        list(iter_documents("no_such_recipe"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="is empty"):
        list(iter_documents(str(empty)))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="nothing has no .jsonl, .txt or .parquet files"):
        list(iter_documents(str(tmp_path / "nothing")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="hf:org/data:cfg@v1: the Hugging Face hub is not reachable"):
        list(iter_documents("hf:org/data:cfg@v1"))
    with pytest.raises(DataError, match="malformed"):
        list(iter_documents("hf:bad id"))


def test_hf_parsing_and_names(tmp_path):
    assert parse_hf("hf:org/name:cfg@rev") == ("org/name", "cfg", "rev")
    assert parse_hf("hf:name") == ("name", None, None)
    assert source_name("hf:org/name:cfg") == "org_name_cfg"
    f = tmp_path / "my corpus.jsonl"
    f.write_text('{"text": "x"}\n')
    assert source_name(str(f)) == "my_corpus"
    before = source_fingerprint(str(f), CorpusOptions())
    assert before != source_fingerprint(str(f), CorpusOptions(text_field="body"))
    f.write_text('{"text": "changed"}\n')
    assert source_fingerprint(str(f), CorpusOptions()) != before  # an edited file gets a new store


def test_max_docs_and_bad_options(code_corpus):
    assert len(list(iter_documents(str(code_corpus), {"max_docs": 3}))) == 3
    with pytest.raises(DataError, match="names no field"):
        list(iter_documents(str(code_corpus), {"template": "no fields"}))
    with pytest.raises(DataError, match="max_docs must be >= 1"):
        list(iter_documents(str(code_corpus), {"max_docs": 0}))

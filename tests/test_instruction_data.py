"""Instruction data, from records to loss tokens: prompt/completion and chat records on real text (the Python
language reference topics as question/answer pairs), the tiny session tokenizer, and a real chat template (TRL
ships the chat templates of public models; Qwen2.5's is used here on our tokenizer).

Counted, not read back: the loss tokens of every example are compared with the completion (or assistant) text
tokenized on its own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import _home
from instruction_fixtures import _pairs

from replaylab.data.rows import DocumentRows
from replaylab.data.store import get_store
from replaylab.errors import DataError


def _on_loss_per_doc(store, split="train"):
    """[(all token ids, ids on the loss)] per document of a split, from the store's own files."""
    t, m, off = (
        np.asarray(store.tokens(split)),
        np.asarray(store.loss_mask(split)).astype(bool),
        store.doc_offsets(split),
    )
    return [(t[a:b], t[a:b][m[a:b]]) for a, b in zip(off[:-1], off[1:])]


def test_loss_tokens_are_the_completion_tokens(pc_store):
    tok = pc_store.tokenizer()
    completions = {tuple(tok.encode(c)) for _, _, c in _pairs()}
    docs = _on_loss_per_doc(pc_store, "train") + _on_loss_per_doc(pc_store, "val")
    assert len(docs) == len(_pairs())
    total_loss = 0
    for ids, on in docs:
        # on the loss: the completion's own tokens, then the EOS that ends the example
        assert on[-1] == tok.eos_id and tuple(on[:-1].tolist()) in completions
        prompt = ids[: len(ids) - len(on)]
        assert tok.decode(prompt).startswith("Explain the Python topic ")
        total_loss += len(on)
    want = sum(len(tok.encode(c)) + 1 for _, _, c in _pairs())
    assert total_loss == want  # loss tokens = completion tokens (+ one EOS each), counted
    meta = pc_store.meta
    assert meta["splits"]["train"]["loss_tokens"] + meta["splits"]["val"]["loss_tokens"] == want
    assert meta["instructions"]["loss_policy"] == "completion"


def test_default_chat_template_puts_only_assistant_turns_on_the_loss(chat_store):
    tok = chat_store.tokenizer()
    assert chat_store.meta["instructions"]["chat_template"] == "replaylab's default chat template"
    records = {}
    for line in Path(chat_store.meta["source"]).read_text().splitlines():
        turns = json.loads(line)["messages"]
        records[turns[1]["content"]] = turns
    for ids, on in _on_loss_per_doc(chat_store):
        text = tok.decode(ids)
        user = text.split("user: ", 1)[1].split("\n\n", 1)[0]
        turns = records[user]
        want = "".join(m["content"] + "\n\n" for m in turns if m["role"] == "assistant")
        assert tok.decode(on[:-1]) == want and on[-1] == tok.eos_id


def test_a_real_chat_template_puts_only_assistant_turns_on_the_loss(tmp_path, chat_corpus, tiny_tokenizer):
    trl = pytest.importorskip("trl")
    template = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text()
    folder = tmp_path / "qwen_style"
    folder.mkdir()
    shutil.copy(Path(tiny_tokenizer) / "tokenizer.json", folder / "tokenizer.json")
    config = json.loads((Path(tiny_tokenizer) / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    with _home(tmp_path / "home"):
        store = get_store(str(chat_corpus), tokenizer=str(folder), options={"format": "messages"})
    assert store.meta["instructions"]["chat_template"] == "the tokenizer's chat template"
    tok = store.tokenizer()
    records = [json.loads(line)["messages"] for line in Path(chat_corpus).read_text().splitlines()]
    by_user = {r[1]["content"]: r for r in records}
    seen = 0
    for ids, on in _on_loss_per_doc(store):
        text = tok.decode(ids)
        assert text.startswith("<|im_start|>system\nYou answer questions about Python.<|im_end|>\n")
        turns = by_user[text.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]]
        # Qwen2.5's template ends each assistant turn with <|im_end|>\n: that is the assistant's to predict.
        want = "".join(m["content"] + "<|im_end|>\n" for m in turns if m["role"] == "assistant")
        assert tok.decode(on[:-1]) == want
        assert "<|im_start|>assistant\n" not in tok.decode(on)  # the header is the prompt's
        seen += 1
    assert seen == store.num_documents("train")


def test_text_stores_keep_their_files_and_the_loss_all_policy_has_no_prompt_left_out(
    tmp_path, pc_corpus, tiny_tokenizer
):
    with _home(tmp_path / "home"):
        full = get_store(
            str(pc_corpus), tokenizer=tiny_tokenizer, options={"format": "prompt_completion", "loss": "all"}
        )
    assert full.meta["splits"]["train"]["loss_tokens"] == full.num_tokens("train")
    assert not any((full.path / f).exists() for f in ("all.bin", "all_mask.bin"))


@pytest.mark.parametrize(
    "options, match",
    [
        ({"format": "chat"}, "format is 'chat'; choose one of text, prompt_completion, messages"),
        ({"format": "text", "loss": "completion"}, "needs records with a completion"),
        ({"format": "prompt_completion", "template": "{prompt}"}, "are exclusive"),
        ({"format": "prompt_completion", "prompt_field": "question"}, "has no field 'question'"),
        ({"format": "messages"}, "has no field 'messages'"),
        ({"format": "prompt_completion", "loss": "some"}, "loss is 'some'"),
        # read as text: the hint names the option's flag in each command, not one command's
        ({}, "--format prompt_completion.*--target-format prompt_completion"),
    ],
)
def test_bad_instruction_options_are_one_line(tmp_path, pc_corpus, tiny_tokenizer, options, match):
    with _home(tmp_path / "home"), pytest.raises(DataError, match=match) as e:
        get_store(str(pc_corpus), tokenizer=tiny_tokenizer, options=options)
    assert "\n" not in str(e.value).strip()


def test_messages_without_an_assistant_turn_are_refused(tmp_path, tiny_tokenizer):
    f = tmp_path / "chat.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with _home(tmp_path / "home"), pytest.raises(DataError, match="no assistant message"):
        get_store(str(f), tokenizer=tiny_tokenizer, options={"format": "messages", "val_docs": 0})


def test_padded_packing_is_one_example_per_row(pc_store):
    rows = DocumentRows(pc_store, "padded")
    summary = rows.summary("train", 512)
    assert summary["rows"] == summary["examples"] == pc_store.num_documents("train")
    with pytest.raises(DataError, match="packing is 'tight'"):
        DocumentRows(pc_store, "tight")

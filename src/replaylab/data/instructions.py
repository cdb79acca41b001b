"""Instruction data: records of prompt/completion or chat messages become documents with a loss mask.

A corpus source has one `format` (a corpus option, chosen per source):
- "text" (the default): a record's `text_field` (or `template`) is one document, every token on the loss;
- "prompt_completion": `{"prompt": ..., "completion": ...}` records (`prompt_field`, `completion_field`); the
  document is prompt + completion, and only the completion (and the EOS that ends it) carries loss;
- "messages": `{"messages": [{"role": ..., "content": ...}, ...]}` records (`messages_field`), rendered with the
  tokenizer's own chat template (its tokenizer_config.json `chat_template` or a chat_template.jinja beside its
  tokenizer.json); only what each assistant turn adds carries loss. A tokenizer without a chat template (ours)
  gets `DEFAULT_CHAT_TEMPLATE`, stated below.

`loss` overrides the policy: "all" puts every token of a structured record on the loss (the old behaviour of a
`template` join), "completion" (the default for the structured formats) keeps prompts and user turns off it.

A structured document is a list of segments (text, on_loss). Segments are tokenized one by one and
concatenated (`store_build`): where a chat template puts special tokens at every turn boundary this is what
tokenizing the whole rendered string gives; where it does not, the boundary is a token boundary by construction,
so the mask never splits a token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from replaylab.errors import DataError

FORMATS = ("text", "prompt_completion", "messages")
LOSS_POLICIES = ("all", "completion")
Segments = list[tuple[str, bool]]  # (text, on the loss)

# The default for tokenizers without a chat template: each turn is "<role>: <content>\n\n"; an assistant turn's
# "assistant: " header is part of the prompt (off the loss), its content and the blank line after it are on it.
DEFAULT_CHAT_TEMPLATE = "{role}: {content}\n\n"


def loss_policy(fmt: str, loss: str | None) -> str:
    """The loss policy a source trains with: `loss` when given, else "all" for text, "completion" otherwise."""
    return loss or ("all" if fmt == "text" else "completion")


def describe_policy(fmt: str, loss: str | None) -> str:
    """One phrase for build output, manifests and logs."""
    policy = loss_policy(fmt, loss)
    if policy == "all":
        return f"{fmt}: loss on every token"
    return {
        "prompt_completion": "prompt_completion: loss on completion tokens only",
        "messages": "messages: loss on assistant turns only",
    }[fmt]


def check_format(fmt: str, loss: str | None) -> None:
    if fmt not in FORMATS:
        raise DataError(f"corpus option format is {fmt!r}; choose one of {', '.join(FORMATS)}")
    if loss is not None and loss not in LOSS_POLICIES:
        raise DataError(f"corpus option loss is {loss!r}; choose 'all' or 'completion'")
    if fmt == "text" and loss == "completion":
        raise DataError(
            "corpus option loss='completion' needs records with a completion: set format to "
            "'prompt_completion' or 'messages' (plain text has no prompt to leave out)"
        )


def _field(record: dict, name: str, where: str, option: str) -> Any:
    if name not in record:
        raise DataError(
            f"{where}: record has no field {name!r}; fields present: {', '.join(map(str, record)) or 'none'} "
            f"(set {option})"
        )
    return record[name]


def prompt_completion(record: dict, prompt_field: str, completion_field: str, where: str) -> Segments:
    prompt = _field(record, prompt_field, where, "--prompt-field")
    completion = _field(record, completion_field, where, "--completion-field")
    for name, value in ((prompt_field, prompt), (completion_field, completion)):
        if not isinstance(value, str):
            raise DataError(f"{where}: field {name!r} is {type(value).__name__}, not text")
    return [(prompt, False), (completion, True)]


def messages(record: dict, messages_field: str, where: str) -> list[dict]:
    turns = _field(record, messages_field, where, "--messages-field")
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: field {messages_field!r} is not a non-empty list of messages")
    for i, m in enumerate(turns):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: message {i} is not {{'role': str, 'content': str}} (got {json.dumps(m)[:80]})")
    if not any(m["role"] == "assistant" for m in turns):
        raise DataError(f"{where}: no assistant message, so nothing to train on; drop the record or add one")
    return turns


# --------------------------------------------------------------------------------------------- chat templates
def chat_template(folder: Path | None) -> str | None:
    """The tokenizer's own chat template (tokenizer_config.json's `chat_template`, or chat_template.jinja), or
    None when it has none."""
    if folder is None:
        return None
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        except (OSError, ValueError):
            return None
        if isinstance(template, list):  # named templates: the "default" one
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        return template if isinstance(template, str) else None
    return None


def _special_tokens(folder: Path | None) -> dict[str, str]:
    out: dict[str, str] = {}
    config = folder / "tokenizer_config.json" if folder is not None else None
    if config is not None and config.is_file():
        try:
            raw = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raw = {}
        for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
            value = raw.get(key)
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                out[key] = value
    return out


class ChatRenderer:
    """Renders message lists as segments with a tokenizer's chat template (or the default one).

    Assistant-only loss from any template: turn i's assistant text is what rendering messages[:i+1] adds to
    rendering messages[:i] with the generation prompt (the template's "<assistant header>"); a template for which
    that is not a prefix (one that rewrites earlier turns) is refused, naming the record."""

    def __init__(self, folder: Path | None):
        self.template = chat_template(folder)
        self._env = None
        if self.template is not None:
            from jinja2.exceptions import TemplateError
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message: str):
                raise TemplateError(message)

            # The settings Hugging Face tokenizers render chat templates with.
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = raise_exception
            env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
            self._compiled = env.from_string(self.template)
            self._env = env
            self._special = _special_tokens(folder)

    @property
    def name(self) -> str:
        return "the tokenizer's chat template" if self.template is not None else "replaylab's default chat template"

    def _render(self, turns: list[dict], generation_prompt: bool) -> str:
        return self._compiled.render(messages=turns, add_generation_prompt=generation_prompt, **self._special)

    def segments(self, turns: list[dict], loss: str, where: str) -> Segments:
        if self.template is None:
            out: Segments = []
            for m in turns:
                if m["role"] == "assistant":
                    out.append(("assistant: ", False))
                    out.append((m["content"] + "\n\n", True))
                else:
                    out.append((DEFAULT_CHAT_TEMPLATE.format(role=m["role"], content=m["content"]), False))
            return [(t, on or loss == "all") for t, on in out if t]
        from jinja2.exceptions import TemplateError

        try:
            out = []
            done = ""
            for i, m in enumerate(turns):
                if m["role"] != "assistant":
                    continue
                before = self._render(turns[:i], True)
                through = self._render(turns[: i + 1], False)
                if not before.startswith(done) or not through.startswith(before):
                    raise DataError(
                        f"{where}: the chat template renders earlier turns differently once a later one is added, "
                        "so the assistant's tokens cannot be told apart; use format 'prompt_completion' or a "
                        "template that only appends"
                    )
                out.append((before[len(done) :], False))
                out.append((through[len(before) :], True))
                done = through
            full = self._render(turns, False)
            if full.startswith(done) and len(full) > len(done):
                out.append((full[len(done) :], False))
        except TemplateError as e:
            raise DataError(f"{where}: the chat template refused the messages ({e})") from None
        return [(t, on or loss == "all") for t, on in out if t]

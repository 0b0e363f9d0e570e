"""A model folder's tokenizer without transformers, for engines that run no torch (llama.cpp).

transformers' AutoTokenizer imports torch on its way (2.4 s and some 250 MiB of a
llama.cpp worker's memory here) for what a fast tokenizer does in Rust anyway.
A folder with `tokenizer.json` is read by the `tokenizers` library that
transformers' fast tokenizers wrap, with the names and the chat template from
`tokenizer_config.json` (or `chat_template.jinja`), rendered as transformers
renders it (`inference.templates.render_template`): the same ids, text and
prompts. A folder without `tokenizer.json` (a slow SentencePiece tokenizer
only) still loads through transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import tokenizers

from inference.templates import render_template

# The named special tokens transformers hands a chat template (`special_tokens_map`).
NAMED_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class FolderTokenizer:
    """The part of a Hugging Face fast tokenizer's API that the engines use."""

    def __init__(self, folder: Path) -> None:
        try:
            self.backend_tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises a bare Exception for a file it cannot read
            raise ValueError(f"tokenizer.json: {exc}") from exc
        # As transformers' fast tokenizers encode when not asked otherwise (a file may set both).
        self.backend_tokenizer.no_padding()
        self.backend_tokenizer.no_truncation()
        config = _json(folder / "tokenizer_config.json")
        # Where both name a token, special_tokens_map.json (the older file) wins, as in transformers.
        named = {**config, **_json(folder / "special_tokens_map.json")}
        self.special_tokens_map = {
            name: _content(named[name]) for name in NAMED_TOKENS if named.get(name) is not None
        }
        self.chat_templates = _chat_templates(folder, config)
        self.chat_template = self.chat_templates.get("default")
        eos = self.special_tokens_map.get("eos_token")
        self.eos_token_id = self.backend_tokenizer.token_to_id(eos) if eos is not None else None

    def __len__(self) -> int:
        return int(self.backend_tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(
        self,
        token_ids: list[int],
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: Literal[False] = False,  # the text as it was generated, always
    ) -> str:
        return str(self.backend_tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens))

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        tokenize: Literal[False] = False,
        add_generation_prompt: bool = False,
    ) -> str:
        # As transformers picks: the `tool_use` template when there are tools and the model has one.
        template = self.chat_templates.get("tool_use") if tools else None
        template = template or self.chat_template
        if not template:
            raise ValueError("This tokenizer has no chat template.")
        return render_template(
            template,
            messages,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            **self.special_tokens_map,
        )


def load_tokenizer(folder: Path) -> Any:
    """The folder's tokenizer: a FolderTokenizer where it has `tokenizer.json`, else transformers'."""
    if (folder / "tokenizer.json").is_file():
        return FolderTokenizer(folder)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def _json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text())) if path.is_file() else {}


def _content(token: Any) -> str:
    """A special token as tokenizer_config.json writes it: its text, or an AddedToken's dict."""
    return str(token["content"] if isinstance(token, dict) else token)


def _chat_templates(folder: Path, config: dict[str, Any]) -> dict[str, str]:
    """The chat templates by name ("default", "tool_use"…), where transformers looks for them.

    `chat_template.jinja` and `additional_chat_templates/<name>.jinja` (transformers 5), or
    the config's `chat_template`: one string, or a list of named templates.
    """
    templates: dict[str, str] = {}
    declared = config.get("chat_template")
    if isinstance(declared, str):
        templates["default"] = declared
    elif isinstance(declared, list):
        templates.update({entry["name"]: entry["template"] for entry in declared})
    if (folder / "chat_template.jinja").is_file():
        templates["default"] = (folder / "chat_template.jinja").read_text()
    for path in sorted((folder / "additional_chat_templates").glob("*.jinja")):
        templates[path.stem] = path.read_text()
    return templates

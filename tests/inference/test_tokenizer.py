"""inference.tokenizer reads a model folder as transformers' AutoTokenizer does, without torch.

Each check is differential: the same folder through FolderTokenizer and through
transformers, on the packaged models' tokenizers and on folders written here
with chat templates that use what transformers' Jinja environment offers.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jinja2
import pytest
from transformers import AutoTokenizer

from inference.engines.guided import GrammarCompiler
from inference.loading import gguf_tokenizer, packaged_model_path
from inference.templates import render_chat
from inference.tokenizer import FolderTokenizer, load_tokenizer
from tests.processes import REPO_ROOT

TEXTS = [
    "The capital of France is Paris.",
    "  leading and trailing spaces  ",
    "Ünïcödé, 汉字, emoji 🦙 and a tab\tand\nnew lines",
    "<|im_start|>user\nspecial tokens written as text<|im_end|>",
    "def f(x):\n    return x ** 2  # code",
    "",
]
CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}],
    [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": 'And 3+3, in <b>bold</b> & "quotes"?'},
    ],
]
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city — ünïcödé",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
# What transformers' environment offers a template: tojson with its options, namespace, loop
# controls, raise_exception, dict, the special tokens as variables, {% generation %} blocks.
RICH_TEMPLATE = """{{ bos_token }}{% set ns = namespace(count=0) %}
{%- if tools %}<tools>{{ tools | tojson }}</tools>
{{ tools[0] | tojson(indent=2, sort_keys=True) }}
{% endif %}
{%- for message in messages %}
    {%- if message['role'] not in ['system', 'user', 'assistant'] %}
        {{- raise_exception('Unknown role: ' + message['role']) }}
    {%- endif %}
    {%- set ns.count = ns.count + 1 %}
    {%- if message['role'] == 'assistant' %}{% generation %}
[A{{ ns.count }}] {{ message['content'] }}{{ eos_token }}{% endgeneration %}
    {%- else %}[{{ message['role'] | upper }}] {{ message['content'] | trim }}
    {% endif %}
    {%- if loop.index > 5 %}{% break %}{% endif %}
{%- endfor %}
{%- set extra = dict(turns=ns.count) %}{{ extra | tojson }}
{%- if add_generation_prompt %}[A]{% endif %}"""


@pytest.fixture(scope="module")
def smollm2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged SmolLM2's tokenizer, as the llama.cpp engine reads it (written from the GGUF)."""
    gguf = packaged_model_path("smollm2-135m-instruct")
    return gguf_tokenizer(gguf, cache_dir=tmp_path_factory.mktemp("cache"))


def folder_with(source: Path, target: Path, config: dict[str, Any], template: str | None = None) -> Path:
    """A tokenizer folder: `source`'s tokenizer.json, `config` and, when given, chat_template.jinja."""
    target.mkdir()
    shutil.copy(source / "tokenizer.json", target / "tokenizer.json")
    (target / "tokenizer_config.json").write_text(json.dumps(config))
    if template is not None:
        (target / "chat_template.jinja").write_text(template)
    return target


def test_smollm2_ids_text_and_names_are_transformers(smollm2_folder: Path) -> None:
    ours, theirs = FolderTokenizer(smollm2_folder), AutoTokenizer.from_pretrained(smollm2_folder)
    assert len(ours) == len(theirs)
    assert ours.eos_token_id == theirs.eos_token_id
    assert ours.special_tokens_map == theirs.special_tokens_map
    assert ours.chat_template == theirs.chat_template
    for text in TEXTS:
        for special in (True, False):
            ids = ours.encode(text, add_special_tokens=special)
            assert ids == theirs.encode(text, add_special_tokens=special), text
    ids = ours.encode(TEXTS[3] + TEXTS[2], add_special_tokens=False)
    for skip in (True, False):
        assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(
            ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False
        )
    assert ours.decode([ours.encode("🦙")[0]]) == theirs.decode([theirs.encode("🦙")[0]])  # half a character


def test_smollm2_prompts_are_transformers(smollm2_folder: Path) -> None:
    ours, theirs = FolderTokenizer(smollm2_folder), AutoTokenizer.from_pretrained(smollm2_folder)
    for messages in CONVERSATIONS:
        for tools in (None, [WEATHER]):  # SmolLM2's template does not know tools: they go in as text
            assert render_chat(ours, messages, tools) == render_chat(theirs, messages, tools)
        for generation_prompt in (True, False):
            assert ours.apply_chat_template(
                messages, add_generation_prompt=generation_prompt
            ) == theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def test_minilm_encodes_with_its_special_tokens_unpadded_and_untruncated() -> None:
    """Its tokenizer.json pads and truncates to 128; transformers' encode does neither unless asked."""
    folder = packaged_model_path("all-minilm-l6-v2")
    ours, theirs = load_tokenizer(folder), AutoTokenizer.from_pretrained(folder)
    assert isinstance(ours, FolderTokenizer)
    long = " ".join(["word"] * 300)
    for text in [*TEXTS, long]:
        assert ours.encode(text) == theirs.encode(text), text[:40]
    assert len(ours.encode(long)) == 302  # [CLS] 300 × word [SEP]
    assert ours.special_tokens_map == theirs.special_tokens_map
    assert len(ours) == len(theirs)


def test_templates_render_as_transformers_renders_them(smollm2_folder: Path, tmp_path: Path) -> None:
    config = {
        "bos_token": "<|im_start|>",
        "eos_token": {"__type": "AddedToken", "content": "<|im_end|>", "special": True},
    }
    folder = folder_with(smollm2_folder, tmp_path / "rich", config, RICH_TEMPLATE)
    ours, theirs = FolderTokenizer(folder), AutoTokenizer.from_pretrained(folder)
    long_talk = [{"role": "user", "content": f"turn {n}"} for n in range(8)]  # past the {% break %}
    for messages in [*CONVERSATIONS, long_talk]:
        for tools in (None, [WEATHER]):
            expected = theirs.apply_chat_template(
                messages, tools=tools, tokenize=False, add_generation_prompt=True
            )
            assert ours.apply_chat_template(messages, tools=tools, add_generation_prompt=True) == expected
    assert "ünïcödé" in ours.apply_chat_template(CONVERSATIONS[0], tools=[WEATHER])  # not \\u-escaped
    wrong = [{"role": "robot", "content": "beep"}]
    with pytest.raises(jinja2.exceptions.TemplateError, match="Unknown role: robot"):
        ours.apply_chat_template(wrong)
    with pytest.raises(jinja2.exceptions.TemplateError, match="Unknown role: robot"):
        theirs.apply_chat_template(wrong, tokenize=False)


def test_a_template_cannot_reach_python_internals(smollm2_folder: Path, tmp_path: Path) -> None:
    escapes = [
        "{% set ns = namespace() %}{% set ns.__class__ = 1 %}",
        "{{ ''.__class__.__mro__ }}",
        "{{ messages.__class__.__init__.__globals__ }}",
    ]
    for n, template in enumerate(escapes):
        ours = FolderTokenizer(folder_with(smollm2_folder, tmp_path / str(n), {}, template))
        with pytest.raises(jinja2.exceptions.SecurityError):
            ours.apply_chat_template(CONVERSATIONS[0])


def test_named_templates_pick_tool_use_with_tools_as_transformers_does(
    smollm2_folder: Path, tmp_path: Path
) -> None:
    templates = [
        {"name": "default", "template": "plain:{{ messages[-1]['content'] }}"},
        {"name": "tool_use", "template": "tools:{{ tools | length }}:{{ messages[-1]['content'] }}"},
    ]
    folder = folder_with(smollm2_folder, tmp_path / "named", {"chat_template": templates})
    ours, theirs = FolderTokenizer(folder), AutoTokenizer.from_pretrained(folder)
    for tools in (None, [WEATHER]):
        expected = theirs.apply_chat_template(CONVERSATIONS[0], tools=tools, tokenize=False)
        assert ours.apply_chat_template(CONVERSATIONS[0], tools=tools) == expected
    assert ours.apply_chat_template(CONVERSATIONS[0], tools=[WEATHER]) == "tools:1:Hi"


def test_a_folder_without_tokenizer_json_loads_through_transformers(tmp_path: Path) -> None:
    minilm = packaged_model_path("all-minilm-l6-v2")
    folder = tmp_path / "slow"
    folder.mkdir()
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm / name, folder / name)
    tokenizer = load_tokenizer(folder)
    assert not isinstance(tokenizer, FolderTokenizer)
    assert tokenizer.encode("A cat sleeps.") == FolderTokenizer(minilm).encode("A cat sleeps.")


def test_grammars_see_the_same_token_bytes(smollm2_folder: Path) -> None:
    ours, theirs = FolderTokenizer(smollm2_folder), AutoTokenizer.from_pretrained(smollm2_folder)
    eos = [int(theirs.eos_token_id)]
    mine, reference = GrammarCompiler(ours, len(ours), eos), GrammarCompiler(theirs, len(theirs), eos)
    for token_id in [0, 1, 2, 17, 255, 1000, 30000, len(ours) - 1, *ours.encode("🦙 Paris")]:
        assert mine.token_bytes(token_id) == reference.token_bytes(token_id)


def test_reading_a_folder_and_rendering_imports_no_torch(smollm2_folder: Path) -> None:
    """What a llama.cpp worker does before its model loads, in a fresh interpreter: torch is never imported.

    `auto` picks llama.cpp for a GGUF on a machine without an NVIDIA driver, without asking torch.
    """
    script = f"""
import sys
from pathlib import Path
from inference.engines import _llamacpp_fits
assert _llamacpp_fits("auto")
from inference.engines.guided import GrammarCompiler
from inference.engines import llamacpp_engine
from inference.sampling import Guide
from inference.templates import render_chat
from inference.tokenizer import load_tokenizer
tokenizer = load_tokenizer(Path({str(smollm2_folder)!r}))
prompt = render_chat(tokenizer, [{{"role": "user", "content": "Hi"}}])
grammars = GrammarCompiler(tokenizer, len(tokenizer), [tokenizer.eos_token_id])
grammars.compile(Guide(kind="json_object", spec="{{}}", field="response_format"))
print(len(tokenizer.encode(prompt)), "torch" in sys.modules, "transformers" in sys.modules)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    count, torch_loaded, transformers_loaded = done.stdout.split()
    assert int(count) > 5
    assert (torch_loaded, transformers_loaded) == ("False", "False")

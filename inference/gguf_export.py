"""Write a Hugging Face Llama-family folder as a float16 GGUF, so that llama.cpp can serve it.

llama.cpp's own converter (`convert_hf_to_gguf.py`) ships with its source,
not with any wheel; this is the part of it our engine needs, on the `gguf`
package's writer and tensor-name map: the Llama architecture's metadata, its
weights (query and key rows reordered from Hugging Face's rotate-half layout
to llama.cpp's interleaved one, as the original converter does) and the
GPT-2 style BPE vocabulary with its special tokens and chat template. llama.cpp
detokenises and recognises end-of-turn tokens with that vocabulary; prompts
are tokenised by us, so its pre-tokenizer is left at "default".
No Django here; gguf, numpy and safetensors are imported inside.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from inference.errors import ModelLoadError

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "BertModel")


def export_folder(folder: Path, out: Path) -> None:
    """Write `folder` to `out` as a GGUF; raise ModelLoadError for an architecture we do not convert."""
    config = json.loads((folder / "config.json").read_text())
    architectures = set(config.get("architectures") or ())
    if "BertModel" in architectures:
        _export_bert(folder, config, out)
    elif architectures & set(ARCHITECTURES):
        _export_llama(folder, config, out)
    else:
        raise ModelLoadError(
            f"{folder} is a {config.get('architectures')} model; the llama.cpp backend converts "
            f"{', '.join(ARCHITECTURES)} folders (give a .gguf file, or use --backend transformers)."
        )


def _export_llama(folder: Path, config: dict[str, Any], out: Path) -> None:
    import gguf

    heads, layers = int(config["num_attention_heads"]), int(config["num_hidden_layers"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    hidden = int(config["hidden_size"])
    rope = config.get("rope_parameters") or config
    writer = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name(folder.name)
    writer.add_context_length(int(config.get("max_position_embeddings") or 2048))
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(int(config.get("head_dim") or hidden // heads))
    writer.add_rope_freq_base(float(rope.get("rope_theta") or 10000.0))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps") or 1e-5))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    _add_vocabulary(writer, folder)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    for name, weights in _weights(folder):
        if name.endswith("rotary_emb.inv_freq"):
            continue
        if name.endswith("q_proj.weight"):
            weights = _interleave_rope_rows(weights, heads)
        elif name.endswith("k_proj.weight"):
            weights = _interleave_rope_rows(weights, kv_heads)
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ModelLoadError(f"{folder} has a tensor llama.cpp's Llama does not know: {name}")
        writer.add_tensor(gguf_name, weights.astype("float16" if weights.ndim >= 2 else "float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _export_bert(folder: Path, config: dict[str, Any], out: Path) -> None:
    """A BERT sentence encoder (mean pooling, as sentence-transformers' MiniLM): embeddings only."""
    import gguf

    layers = int(config["num_hidden_layers"])
    writer = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
    writer.add_name(folder.name)
    writer.add_context_length(int(config.get("max_position_embeddings") or 512))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(layers)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_layer_norm_eps(float(config.get("layer_norm_eps") or 1e-12))
    writer.add_causal_attention(False)
    writer.add_pooling_type(_pooling(folder))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    special = {int(added["id"]) for added in tokenizer.get("added_tokens") or () if added.get("special")}
    by_id = {int(i): text for text, i in vocab.items()}
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    # llama.cpp's WordPiece marks a word's start with U+2581 instead of marking continuations with "##".
    writer.add_token_list([_word_piece(by_id[i], i in special) for i in range(len(by_id))])
    writer.add_token_types(
        [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(len(by_id))]
    )
    writer.add_vocab_size(len(by_id))
    writer.add_token_type_count(int(config.get("type_vocab_size") or 2))
    gguf.SpecialVocab(folder, n_vocab=len(by_id)).add_to_gguf(writer, quiet=True)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, layers)
    for name, weights in _weights(folder):
        if name.startswith("pooler.") or name.endswith("position_ids"):
            continue
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ModelLoadError(f"{folder} has a tensor llama.cpp's BERT does not know: {name}")
        # Position and token-type tables are added to activations as they are: float32, as llama.cpp adds.
        added = gguf_name.startswith(("position_embd", "token_types"))
        writer.add_tensor(
            gguf_name, weights.astype("float16" if weights.ndim >= 2 and not added else "float32")
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _word_piece(token: str, special: bool) -> str:
    if special or (token.startswith("[") and token.endswith("]")):
        return token
    return token[2:] if token.startswith("##") else "\u2581" + token


def _pooling(folder: Path) -> Any:
    """The sentence-transformers pooling of `folder` as llama.cpp's pooling type (mean by default)."""
    import gguf

    pooling = folder / "1_Pooling" / "config.json"
    modes = json.loads(pooling.read_text()) if pooling.exists() else {}
    if modes.get("pooling_mode_cls_token"):
        return gguf.PoolingType.CLS
    return gguf.PoolingType.MEAN


def _interleave_rope_rows(weights: Any, heads: int) -> Any:
    """Hugging Face keeps each head's rotary pairs as two halves; llama.cpp expects them side by side."""
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _weights(folder: Path) -> Any:
    """(name, float32 numpy array) for every tensor of the folder's safetensors files."""
    import torch
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{folder} has no .safetensors weights to convert.")
    for path in files:
        with safe_open(str(path), framework="pt") as weights:
            for name in weights.keys():  # noqa: SIM118 - safe_open is not a mapping
                yield name, weights.get_tensor(name).to(torch.float32).numpy()


def _add_vocabulary(writer: Any, folder: Path) -> None:
    """The byte-level BPE vocabulary, token types, merges, special tokens and chat template."""
    import gguf

    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE" or (tokenizer.get("decoder") or {}).get("type") != "ByteLevel":
        raise ModelLoadError(f"{folder}'s tokenizer is not a byte-level BPE; give a .gguf file instead.")
    by_id = {int(i): text for text, i in model["vocab"].items()}
    special = set()
    for added in tokenizer.get("added_tokens") or ():
        by_id[int(added["id"])] = added["content"]
        if added.get("special"):
            special.add(int(added["id"]))
    size = max(by_id) + 1
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(size)]
    types = [
        gguf.TokenType.CONTROL
        if i in special
        else gguf.TokenType.NORMAL
        if i in by_id
        else gguf.TokenType.UNUSED
        for i in range(size)
    ]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_vocab_size(size)
    vocab = gguf.SpecialVocab(folder, load_merges=True, n_vocab=size)
    template = folder / "chat_template.jinja"
    if vocab.chat_template is None and template.exists():
        vocab.chat_template = template.read_text()
    vocab.add_to_gguf(writer, quiet=True)

# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)
#
# This module_utils is PRIVATE to the collection. It can change without notice
# and must not be used by anything outside llmops.vllm.
#
# What a model's config.json says that decides whether vLLM can serve it as asked, read the same way
# from a host's cache (serving_host_info) and from the hub (hf_model_config): one summary, so the
# preflight's checks cannot tell where it came from. Standard library only.

from __future__ import annotations

# The fields the checks read: the attention heads (tensor parallelism), the context length, the dtype,
# and the shape of the KV cache (layers, KV heads, head size, MLA's latent size, sliding window).
CONFIG_FIELDS = ("architectures", "model_type", "num_attention_heads", "num_key_value_heads", "torch_dtype", "dtype",
                 "max_position_embeddings", "num_hidden_layers", "hidden_size", "head_dim", "kv_lora_rank",
                 "qk_rope_head_dim", "sliding_window")
# multimodal models keep the language model's numbers in a sub-config
TEXT_CONFIGS = ("text_config", "llm_config", "language_config")
# the files vLLM loads weights from; safetensors first (vLLM's load_format auto prefers them)
WEIGHTS = (".safetensors", ".bin", ".pt", ".gguf")
SAFETENSORS_INDEX = "model.safetensors.index.json"


def model_config_summary(config):
    """The fields of a config.json that the preflight checks read; a text sub-config fills in what the top lacks."""
    summary = {"auto_map": isinstance(config.get("auto_map"), dict) and bool(config.get("auto_map"))}
    # a RoPE scaling stretches the context beyond max_position_embeddings (transformers 5 calls it rope_parameters)
    summary["rope_scaling"] = any(isinstance(config.get(k), dict) and "factor" in config[k] for k in ("rope_scaling", "rope_parameters"))
    sources = [config] + [config[k] for k in TEXT_CONFIGS if isinstance(config.get(k), dict)]
    for field in CONFIG_FIELDS:
        for source in sources:
            if source.get(field) is not None:
                summary[field] = source[field]
                break
    if "dtype" in summary and "torch_dtype" not in summary:
        # transformers 4.56+ writes dtype where older ones wrote torch_dtype
        summary["torch_dtype"] = summary["dtype"]
    summary.pop("dtype", None)
    quantization = [s.get("quantization_config") for s in sources if isinstance(s.get("quantization_config"), dict)]
    summary["quantization"] = str(quantization[0].get("quant_method") or "") if quantization else ""
    return summary


def weight_files(paths_sizes):
    """{path: size} of the files vLLM would load weights from, out of a snapshot's {path: size}.

    Safetensors when the snapshot has any (vLLM's default load format prefers them), else the
    PyTorch and GGUF files.
    """
    safetensors = dict((p, s) for p, s in paths_sizes.items() if p.endswith(".safetensors"))
    if safetensors:
        return safetensors
    return dict((p, s) for p, s in paths_sizes.items() if p.endswith(WEIGHTS))


def index_total_size(index):
    """metadata.total_size of a model.safetensors.index.json (bytes of all shards' tensors), or None."""
    try:
        total = (index.get("metadata") or {}).get("total_size")
    except AttributeError:
        return None
    if isinstance(total, (int, float)) and not isinstance(total, bool) and total > 0:
        return int(total)
    return None


def model_entries(entries, model, revision):
    """The entries (serving_host_info's or hf_model_config's models) that describe model at revision, in order."""
    return [e for e in entries or [] if e.get("model") == model and str(e.get("revision") or "main") == revision]

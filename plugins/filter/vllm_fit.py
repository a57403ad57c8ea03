# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

# Will the model fit into its GPUs? The weights (from the model's files, else its parameter count), and
# the KV cache that vLLM must hold for one request of max_model_len, against each GPU's memory times
# gpu_memory_utilization, per tensor- and pipeline-parallel rank. docs/fit.md shows the computation
# step by step for two real models and cites the vLLM 0.32.0 code that each step follows.

from ansible.errors import AnsibleFilterError

from ansible_collections.llmops.vllm.plugins.filter.vllm_options import vllm_cli_key
from ansible_collections.llmops.vllm.plugins.module_utils._hf_config import model_entries

GIB = 1024.0 ** 3
MIB = 1024 * 1024
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
# Memory that vLLM 0.32.0 takes from gpu_memory_utilization's share before the KV cache and that no
# config.json tells: the peak activations of its profile run (max_num_batched_tokens tokens through the
# model, and the sampler over max_num_seqs rows), the memory outside PyTorch (CUDA's and NCCL's buffers),
# and the CUDA graphs, which vLLM measures and subtracts by default since 0.21
# (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1; vllm/v1/worker/gpu_worker.py, determine_available_memory).
# It also covers the part of nvidia-smi's memory.total that CUDA does not hand out (vLLM sizes its share
# from cudaMemGetInfo's total: 480 MiB less on the lent H100, 0.42 GiB at 0.9). The role's
# vllm_server_fit_margin_gib overrides it; docs/fit.md says why 2.
DEFAULT_MARGIN_GIB = 2.0
# vLLM's default KV cache block (vllm/config/cache.py, CacheConfig.DEFAULT_BLOCK_SIZE); the attention
# backend may pick another, which moves the result by a block or two.
DEFAULT_BLOCK_SIZE = 16

DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "auto": 2}
QUANTIZED_BYTES = {"fp8": 1, "fbgemm_fp8": 1, "experts_int8": 1, "int8_per_channel_weight_only": 1,
                   "awq": 0.5, "awq_marlin": 0.5, "auto_awq": 0.5, "gptq": 0.5, "gptq_marlin": 0.5, "auto_gptq": 0.5,
                   "mxfp4": 0.5, "modelopt_fp4": 0.5, "nvfp4_per_token": 0.5}
# kv_cache_dtype -> bytes per stored element, for the plain layouts (vllm/utils/torch_utils.py,
# STR_DTYPE_TO_TORCH_DTYPE; "auto" is the model's dtype, see _model_dtype_bytes). The packed layouts
# (fp8_ds_mla, nvfp4, the turboquant and per-token-head ones) carry scales in their pages: not estimated.
KV_DTYPE_BYTES = {"float16": 2, "half": 2, "bfloat16": 2, "float32": 4, "float": 4,
                  "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "fp8_inc": 1}
# Checkpoints of these methods may declare an FP8 KV cache (kv_cache_scheme), which vLLM then uses with
# kv_cache_dtype auto (vllm/model_executor/layers/attention/attention.py): their KV is counted at 1 byte,
# so that the check never refuses what the checkpoint's own scheme makes fit.
KV_SCHEME_QUANTIZATION = ("compressed-tensors", "modelopt", "modelopt_fp4", "fp8", "quark")
# Model types whose layers are not all full attention (sliding-window, chunked-local, Mamba or linear
# attention layers, sparse MLA with an indexer) or that keep no KV cache per token: vLLM sizes their
# caches differently, so the full-attention formula would over-estimate; they get no KV check.
NOT_FULL_ATTENTION = frozenset((
    "bamba", "falcon_h1", "falcon_mamba", "granitemoehybrid", "jamba", "kimi_linear", "lfm2", "lfm2_moe", "llama4",
    "llama4_text", "mamba", "mamba2", "minimax_m1", "minimax_text_01", "nemotron_h", "phi4flash", "plamo2", "qwen3_next",
    "zamba2", "deepseek_v32", "deepseek_v4", "gemma2", "gemma3", "gemma3_text", "gemma3n", "cohere2", "gpt_oss",
    "bert", "roberta", "xlm-roberta", "modernbert", "t5", "whisper", "mllama",
))


def vllm_parameter_count(value):
    """A parameter count from 8000000000, 8e9, "8B", "70b", "1.5B" or "560M"; None when empty."""
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip().upper()
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}.get(text[-1:])
    try:
        return float(text[:-1]) * scale if scale else float(text)
    except ValueError:
        raise AnsibleFilterError("parameters must be a count such as 8e9 or '8B', not %r" % (value,))


def _options(instance):
    return dict((vllm_cli_key(k), v) for k, v in (instance.get("options") or {}).items())


def vllm_weight_bytes(instance, file_bytes=0):
    """(bytes, how it was estimated) for an instance's weights: the model's files, else parameters x dtype."""
    if file_bytes:
        return int(file_bytes), "the size of its weight files"
    params = vllm_parameter_count(instance.get("parameters"))
    if not params:
        return 0, ""
    options = _options(instance)
    if options.get("quantization") in QUANTIZED_BYTES:
        per = QUANTIZED_BYTES[options["quantization"]]
        how = "%s parameters at %s bytes each (%s)" % (instance.get("parameters"), per, options["quantization"])
    else:
        per = DTYPE_BYTES.get(str(options.get("dtype", "auto")), 2)
        how = "%s parameters at %s bytes each (dtype %s)" % (instance.get("parameters"), per, options.get("dtype", "auto"))
    return int(params * per), how


def _utilization(options):
    try:
        return float(options.get("gpu-memory-utilization", DEFAULT_GPU_MEMORY_UTILIZATION))
    except (TypeError, ValueError):
        return DEFAULT_GPU_MEMORY_UTILIZATION


def _shards(options):
    """(tensor_parallel_size, pipeline_parallel_size) from the instance's options, each at least 1."""
    sizes = []
    for key in ("tensor-parallel-size", "pipeline-parallel-size"):
        try:
            sizes.append(max(1, int(options.get(key, 1))))
        except (TypeError, ValueError):
            sizes.append(1)
    return sizes[0], sizes[1]


def vllm_fit_problem(instance, gpu_memory_mib, file_bytes=0):
    """A sentence when the instance's weights cannot fit into its GPUs at its gpu_memory_utilization, else ''.

    gpu_memory_mib lists the total memory of each GPU the instance gets. An estimate: vLLM also needs
    room for activations and the KV cache (llmops.vllm.vllm_kv_fit_problem checks those).
    """
    weights, how = vllm_weight_bytes(instance, file_bytes)
    if not weights or not gpu_memory_mib:
        return ""
    options = _options(instance)
    utilization = float(options.get("gpu-memory-utilization", DEFAULT_GPU_MEMORY_UTILIZATION))
    tp, pp = _shards(options)
    shards = max(1, min(tp * pp, len(gpu_memory_mib)))
    per_gpu_needed = weights / shards
    per_gpu_usable = min(float(m) for m in gpu_memory_mib) * MIB * utilization
    if per_gpu_needed <= per_gpu_usable:
        return ""
    return ("%s needs about %.1f GiB of weights per GPU (an estimate from %s, over %d GPU%s), but each of its GPUs "
            "offers %.1f GiB at gpu_memory_utilization %s. Give it more GPUs (gpus; tensor_parallel_size follows), "
            "a quantized model, or a higher gpu_memory_utilization." % (
                instance.get("name"), per_gpu_needed / GIB, how, shards, "" if shards == 1 else "s",
                per_gpu_usable / GIB, utilization))


def _length(value):
    """A token count as vLLM's --max-model-len takes it (8192, "8k" = 8000, "8K" = 8192); "auto" for -1/auto."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return "auto" if int(value) == -1 else int(value)
    text = str(value).strip()
    if text.lower() == "auto" or text == "-1":
        return "auto"
    if text.isdigit():
        return int(text)
    decimal = {"k": 10 ** 3, "m": 10 ** 6, "g": 10 ** 9, "t": 10 ** 12}
    binary = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
    number, suffix = text[:-1], text[-1:]
    try:
        if suffix in decimal:
            return int(float(number) * decimal[suffix])
        if suffix in binary:
            return int(number) * binary[suffix]
    except ValueError:
        return None
    return None


def _positive_int(value):
    if isinstance(value, bool):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _cdiv(a, b):
    return -(-a // b)


def _model_dtype(options, summary):
    """The dtype vLLM computes in: the dtype option, else the checkpoint's (float32 is cast down to 16 bits)."""
    dtype = str(options.get("dtype") or "auto")
    if dtype == "auto":
        # vllm/config/model.py, _resolve_auto_dtype: "Downcast for float32 models"
        config = str(summary.get("torch_dtype") or "bfloat16").replace("torch.", "")
        return config if config in ("float16", "bfloat16") else "bfloat16"
    return dtype


def kv_cache_plan(instance, gpu_memory_mib, model_summary, file_bytes=0, margin_gib=DEFAULT_MARGIN_GIB):
    """The numbers of the KV cache check for one instance, or None when they cannot be known.

    instance: a resolved instance (options with vLLM's names); gpu_memory_mib: the total memory of each of
    its GPUs; model_summary: the model's config.json as serving_host_info summarizes it; file_bytes: the
    size of its weight files (0: estimated from its parameters, else left out). Follows vLLM 0.32.0: one
    request of max_model_len must fit into what is left per GPU (vllm/v1/core/kv_cache_utils.py,
    check_enough_kv_cache_memory), the batch size (max_num_seqs) only limits concurrency.
    """
    summary = model_summary or {}
    if not isinstance(summary, dict) or not gpu_memory_mib:
        return None
    options = _options(instance)
    if str(options.get("runner", "")) == "pooling" or str(options.get("convert", "")) in ("embed", "classify", "reward"):
        return None
    if str(summary.get("model_type") or "") in NOT_FULL_ATTENTION:
        return None
    layer_types = summary.get("layer_types")
    if isinstance(layer_types, list) and any(t != "full_attention" for t in layer_types):
        return None  # sliding-window, linear or Mamba layers among them
    layers = _positive_int(summary.get("num_hidden_layers"))
    heads = _positive_int(summary.get("num_attention_heads"))
    if not layers or not heads:
        return None
    mla = summary.get("kv_lora_rank") is not None
    if mla:
        latent = _positive_int(summary.get("kv_lora_rank"))
        rope = _positive_int(summary.get("qk_rope_head_dim")) or 0
        if not latent:
            return None
        # MLA keeps one latent vector (no separate V) of kv_lora_rank + qk_rope_head_dim per token, and every
        # tensor-parallel rank holds all of it (vllm/config/model.py, get_num_kv_heads: "return 1")
        head_size, values_per_head, kv_heads = latent + rope, 1, 1
    else:
        head_size = _positive_int(summary.get("head_dim"))
        if not head_size:
            hidden = _positive_int(summary.get("hidden_size"))
            if not hidden:
                return None
            head_size = hidden // heads
        kv_heads = _positive_int(summary.get("num_key_value_heads")) or heads
        values_per_head = 2  # a key and a value

    length = _length(options.get("max-model-len"))
    if "max-model-len" in options and length is None:
        return None
    if length == "auto":
        return None  # vLLM then picks the longest that fits (_auto_fit_max_model_len): nothing to refuse
    length_from = "max_model_len"
    if length is None:
        length = _positive_int(summary.get("max_position_embeddings"))
        length_from = "the model's max_position_embeddings"
        if not length:
            return None
    window = _positive_int(summary.get("sliding_window"))
    if window and window < length:
        return None  # sliding-window layers keep only the window: a smaller, differently sized cache

    kv_dtype = str(options.get("kv-cache-dtype") or "auto")
    if kv_dtype == "auto":
        quantization = str(summary.get("quantization") or "")
        if quantization in KV_SCHEME_QUANTIZATION:
            kv_dtype_bytes, kv_dtype_label = 1, "fp8 at least: a %s checkpoint may declare an fp8 KV cache" % quantization
        else:
            model_dtype = _model_dtype(options, summary)
            if model_dtype not in DTYPE_BYTES:
                return None
            kv_dtype_bytes, kv_dtype_label = DTYPE_BYTES[model_dtype], "%s, the model's dtype" % model_dtype
    elif kv_dtype in KV_DTYPE_BYTES:
        kv_dtype_bytes, kv_dtype_label = KV_DTYPE_BYTES[kv_dtype], "kv_cache_dtype %s" % kv_dtype
    else:
        return None

    gpus = len(gpu_memory_mib)
    tp, pp = _shards(options)
    if tp * pp > gpus:
        return None  # more ranks than GPUs: vLLM fails for another reason, which its own check reports
    # vllm/config/model.py, get_num_kv_heads: each rank holds kv_heads // tp, at least one (then replicated)
    kv_heads_per_gpu = kv_heads if mla else max(1, kv_heads // tp)
    # vllm/distributed/utils.py, get_pp_indices: the remainder goes to the stages before the last
    layers_per_gpu = layers // pp + (1 if layers % pp else 0)
    block_size = _positive_int(options.get("block-size")) or DEFAULT_BLOCK_SIZE
    bytes_per_token = layers_per_gpu * kv_heads_per_gpu * head_size * values_per_head * kv_dtype_bytes
    block_bytes = bytes_per_token * block_size
    blocks_per_request = _cdiv(length, block_size)
    # vllm/v1/core/kv_cache_utils.py, get_kv_cache_configs: the block pool keeps one null block back
    needed = block_bytes * (blocks_per_request + 1)

    weights, weights_how = vllm_weight_bytes(instance, file_bytes)
    quantization = str(options.get("quantization") or "")
    if file_bytes and quantization in QUANTIZED_BYTES and not summary.get("quantization"):
        # a 16-bit checkpoint that vLLM quantizes as it loads: its files overstate the weights on the GPU,
        # so they are counted at the quantized size (a lower bound: embeddings stay 16-bit)
        weights = int(weights * QUANTIZED_BYTES[quantization] / 2)
        weights_how = "its weight files at %s of their 16-bit size (quantization %s as it loads)" % (
            QUANTIZED_BYTES[quantization] / 2, quantization)
    weights_per_gpu = weights / float(tp * pp)
    try:
        # weights kept in CPU memory (vLLM's cpu_offload_gb, GiB per GPU)
        weights_per_gpu = max(0.0, weights_per_gpu - float(options.get("cpu-offload-gb") or 0) * GIB)
    except (TypeError, ValueError):
        pass
    total = min(float(m) for m in gpu_memory_mib) * MIB
    utilization = _utilization(options)
    margin = float(margin_gib) * GIB
    requested = total * utilization
    explicit = _length(options.get("kv-cache-memory-bytes"))
    if isinstance(explicit, int) and explicit > 0:
        # vLLM then skips its memory profile and takes this as the KV cache's size (determine_available_memory)
        available, available_from = float(explicit), "kv_cache_memory_bytes"
    else:
        available, available_from = requested - weights_per_gpu - margin, "gpu_memory_utilization"
    blocks = int(available // block_bytes) - 1 if available > 0 else 0
    longest = max(0, blocks) * block_size
    return {
        "name": instance.get("name"), "max_model_len": length, "max_model_len_from": length_from,
        "mla": mla, "layers": layers, "layers_per_gpu": layers_per_gpu, "kv_heads": kv_heads,
        "kv_heads_per_gpu": kv_heads_per_gpu, "head_size": head_size, "values_per_head": values_per_head,
        "kv_cache_dtype": kv_dtype, "kv_dtype_label": kv_dtype_label, "kv_dtype_bytes": kv_dtype_bytes,
        "tensor_parallel_size": tp, "pipeline_parallel_size": pp, "gpus": gpus,
        "bytes_per_token": bytes_per_token, "block_size": block_size, "needed_bytes": needed,
        "gpu_total_bytes": total, "gpu_memory_utilization": utilization, "requested_bytes": requested,
        "weights_bytes": weights, "weights_how": weights_how, "weights_per_gpu_bytes": weights_per_gpu,
        "margin_bytes": margin, "available_bytes": available, "available_from": available_from,
        "fits": needed <= available, "longest_fitting": longest,
        "full_length_requests": (max(0, blocks) / float(blocks_per_request)) if blocks_per_request else 0.0,
        "utilization_needed": (weights_per_gpu + margin + needed) / total if total else 0.0,
    }


def _gib(value):
    return "%.1f GiB" % (value / GIB)


def _per_token(plan):
    if plan["mla"]:
        shape = "%d layers x one %d-wide latent (MLA)" % (plan["layers_per_gpu"], plan["head_size"])
    else:
        shape = "%d layers x %d KV head%s x %d head size x 2 (key and value)" % (
            plan["layers_per_gpu"], plan["kv_heads_per_gpu"], "" if plan["kv_heads_per_gpu"] == 1 else "s", plan["head_size"])
    return "%s x %s byte%s (%s) = %s KiB per token" % (
        shape, plan["kv_dtype_bytes"], "" if plan["kv_dtype_bytes"] == 1 else "s", plan["kv_dtype_label"],
        ("%.1f" % (plan["bytes_per_token"] / 1024.0)).rstrip("0").rstrip("."))


def vllm_kv_fit_problem(instance, gpu_memory_mib, model_summary, file_bytes=0, margin_gib=DEFAULT_MARGIN_GIB, host=""):
    """A sentence when vLLM would refuse to start because one request of max_model_len does not fit into the
    KV cache memory left on each GPU, else ''. '' too when the model's config does not tell enough.
    """
    plan = kv_cache_plan(instance, gpu_memory_mib, model_summary, file_bytes, margin_gib)
    if plan is None or plan["fits"]:
        return ""
    where = "Instance %s%s" % (plan["name"], " on %s" % host if host else "")
    ranks = plan["tensor_parallel_size"] * plan["pipeline_parallel_size"]
    split = "" if ranks == 1 else " (tensor_parallel_size %d, pipeline_parallel_size %d)" % (
        plan["tensor_parallel_size"], plan["pipeline_parallel_size"])
    if plan["available_from"] == "kv_cache_memory_bytes":
        room = "kv_cache_memory_bytes gives it %s" % _gib(plan["available_bytes"])
    else:
        room = "each GPU keeps %s for it: %s x gpu_memory_utilization %s = %s, minus %s of weights per GPU (%s), " \
               "minus the %s margin for activations and CUDA graphs (vllm_server_fit_margin_gib)" % (
                   _gib(max(plan["available_bytes"], 0)), _gib(plan["gpu_total_bytes"]), plan["gpu_memory_utilization"],
                   _gib(plan["requested_bytes"]), _gib(plan["weights_per_gpu_bytes"]),
                   plan["weights_how"] or "not known, so left out", _gib(plan["margin_bytes"]))
    fixes = []
    if plan["longest_fitting"] > 0:
        fixes.append("lower max_model_len to at most %d" % plan["longest_fitting"])
    if plan["available_from"] == "kv_cache_memory_bytes":
        fixes.append("raise kv_cache_memory_bytes to at least %d" % plan["needed_bytes"])
    elif plan["utilization_needed"] <= 1.0:
        fixes.append("raise gpu_memory_utilization to at least %s" % (int(plan["utilization_needed"] * 100 + 0.999) / 100.0))
    if (not plan["mla"] and plan["kv_heads_per_gpu"] > 1) or plan["weights_per_gpu_bytes"] > 0:
        fixes.append("give it more GPUs (gpus; tensor_parallel_size follows)")
    if plan["kv_dtype_bytes"] > 1:
        fixes.append("set kv_cache_dtype: fp8 (half the size; an fp8 cache costs some accuracy)")
    advice = "; or ".join(fixes) or "serve it on GPUs with more memory"
    return ("%s: vLLM would refuse to start: one request of max_model_len %d (%s) needs %s of KV cache per GPU%s "
            "(%s), but %s. %s%s (options: the instance's options or vllm_server_options)." % (
                where, plan["max_model_len"], plan["max_model_len_from"], _gib(plan["needed_bytes"]), split,
                _per_token(plan), room, advice[:1].upper(), advice[1:]))


def vllm_kv_fit_note(instance, gpu_memory_mib, model_summary, file_bytes=0, margin_gib=DEFAULT_MARGIN_GIB):
    """How many requests of max_model_len the KV cache holds at once, when it holds fewer than two; else ''.

    Not a refusal: vLLM starts, but serves such requests one at a time (the others wait), whatever
    max_num_seqs says; shorter requests share the cache.
    """
    plan = kv_cache_plan(instance, gpu_memory_mib, model_summary, file_bytes, margin_gib)
    if plan is None or not plan["fits"] or plan["full_length_requests"] >= 2:
        return ""
    return ("%s: its KV cache holds about %s GiB per GPU, room for %.1f requests of max_model_len %d at once "
            "(about %d tokens in all); more wait for room, whatever max_num_seqs says. Lower max_model_len or raise "
            "gpu_memory_utilization for more at once." % (
                plan["name"], "%.1f" % (plan["available_bytes"] / GIB), plan["full_length_requests"],
                plan["max_model_len"], plan["longest_fitting"]))


def vllm_model_facts(instance, models, hub=None):
    """{config, weights_bytes} of an instance's model, for the fit checks: from the host's cached copy
    (serving_host_info's models), else from the hub's answer (hf_model_config's models); an empty
    config and 0 bytes where neither tells (the weights then come from the instance's parameters).
    """
    model, revision = str(instance.get("model")), str(instance.get("revision") or "main")
    facts = {"config": {}, "weights_bytes": 0}
    for entry in model_entries(list(models or []) + list(hub or []), model, revision):
        if not facts["config"] and isinstance(entry.get("config"), dict):
            facts["config"] = entry["config"]
        if not facts["weights_bytes"]:
            facts["weights_bytes"] = _positive_int(entry.get("weights_bytes")) or 0
    return facts


class FilterModule(object):
    def filters(self):
        return {
            "vllm_fit_problem": vllm_fit_problem,
            "vllm_kv_fit_problem": vllm_kv_fit_problem,
            "vllm_kv_fit_note": vllm_kv_fit_note,
            "vllm_model_facts": vllm_model_facts,
        }

"""The fit check with the KV cache (plugins/filter/vllm_fit.py), on the recorded H100 and the numbers of
real config.json files. The expected sizes are worked out by hand in docs/fit.md and, independently,
by vLLM 0.32.0's own page-size formula (vllm_page_size_bytes below, after vllm/v1/kv_cache_interface.py)."""

import csv
import os

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar

from ansible_collections.llmops.vllm.plugins.filter.vllm_fit import (
    DEFAULT_MARGIN_GIB, FilterModule, kv_cache_plan, vllm_kv_fit_note, vllm_kv_fit_problem)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
GIB = 1024 ** 3


def recorded_h100_mib():
    """memory.total of the recorded H100 (tests/unit/fixtures/nvidia_smi/h100-580/query.csv)."""
    with open(os.path.join(ROOT, "tests/unit/fixtures/nvidia_smi/h100-580/query.csv")) as f:
        rows = list(csv.DictReader(f, skipinitialspace=True))
    return [int(row["memory.total [MiB]"]) for row in rows]


H100 = recorded_h100_mib()
# meta-llama/Llama-3.1-8B-Instruct's config.json (grouped-query attention: 8 KV heads for 32 query heads)
LLAMA_31_8B = {"model_type": "llama", "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
               "head_dim": 128, "hidden_size": 4096, "torch_dtype": "bfloat16", "max_position_embeddings": 131072,
               "rope_scaling": True, "quantization": ""}
# model.safetensors.index.json metadata.total_size of the same model (bytes of its bf16 tensors)
LLAMA_31_8B_BYTES = 16060522496
# meta-llama/Llama-2-7b-hf's config.json (multi-head attention: as many KV heads as query heads; no head_dim)
LLAMA_2_7B = {"model_type": "llama", "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
              "hidden_size": 4096, "torch_dtype": "float16", "max_position_embeddings": 4096, "quantization": ""}
LLAMA_2_7B_BYTES = 13476839424
# meta-llama/Llama-3.1-70B-Instruct's config.json and index total_size
LLAMA_31_70B = {"model_type": "llama", "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
                "head_dim": 128, "hidden_size": 8192, "torch_dtype": "bfloat16", "max_position_embeddings": 131072,
                "quantization": ""}
LLAMA_31_70B_BYTES = 141107412992
# deepseek-ai/DeepSeek-V2-Lite-Chat's config.json (multi-head latent attention)
DEEPSEEK_V2_LITE = {"model_type": "deepseek_v2", "num_hidden_layers": 27, "num_attention_heads": 16,
                    "num_key_value_heads": 16, "hidden_size": 2048, "kv_lora_rank": 512, "qk_rope_head_dim": 64,
                    "torch_dtype": "bfloat16", "max_position_embeddings": 163840, "quantization": ""}


def vllm_page_size_bytes(num_kv_heads, head_size, head_size_v, dtype_size, block_size=16):
    """vLLM 0.32.0's AttentionSpec.page_size_bytes for dense K/V: num_kv_heads x block_size x
    (head_size + head_size_v) x dtype size (vllm/v1/kv_cache_interface.py, state_content_size_bytes and
    unpadded_page_size_bytes); MLA stores no V (MLAAttentionSpec.head_size_v = 0)."""
    return num_kv_heads * block_size * (head_size + head_size_v) * dtype_size


def vllm_needed_bytes(layers, page_size_bytes, max_model_len, block_size=16):
    """What vLLM 0.32.0's check asks of one worker: bytes_per_block x cdiv(max_model_len, block_size)
    (_max_memory_usage_bytes_from_groups), plus the null block it holds back (get_kv_cache_configs)."""
    bytes_per_block = layers * page_size_bytes
    return bytes_per_block * (-(-max_model_len // block_size) + 1)


def instance(name="m", **options):
    return {"name": name, "options": options}


def test_the_recorded_h100_is_the_one_the_docs_compute_with():
    assert H100 == [81559]


def test_gqa_8b_at_its_full_context_fits_one_h100():
    plan = kv_cache_plan(instance("llama-8b"), H100, LLAMA_31_8B, LLAMA_31_8B_BYTES)
    # 32 layers x 8 KV heads x 128 x 2 (K and V) x 2 bytes = 128 KiB per token
    assert plan["bytes_per_token"] == 131072
    assert plan["needed_bytes"] == vllm_needed_bytes(32, vllm_page_size_bytes(8, 128, 128, 2), 131072)
    assert plan["needed_bytes"] == 16 * GIB + 2 * 1024 * 1024  # 16 GiB and the null block
    assert plan["max_model_len"] == 131072 and plan["max_model_len_from"] == "the model's max_position_embeddings"
    # 81559 MiB x 0.9 - 16060522496 bytes of weights - 2 GiB
    assert plan["available_bytes"] == pytest.approx(81559 * 1024 * 1024 * 0.9 - LLAMA_31_8B_BYTES - 2 * GIB)
    assert round(plan["available_bytes"] / GIB, 2) == 54.73
    assert plan["fits"] and vllm_kv_fit_problem(instance("llama-8b"), H100, LLAMA_31_8B, LLAMA_31_8B_BYTES) == ""
    assert round(plan["full_length_requests"], 2) == 3.42
    assert vllm_kv_fit_note(instance("llama-8b"), H100, LLAMA_31_8B, LLAMA_31_8B_BYTES) == "", "3.4 at once: no note"


def test_gqa_8b_is_refused_when_too_little_memory_is_left_for_one_request():
    problem = vllm_kv_fit_problem(instance("llama-8b", gpu_memory_utilization=0.4), H100, LLAMA_31_8B,
                                  LLAMA_31_8B_BYTES, host="gpu1")
    assert problem.startswith(
        "Instance llama-8b on gpu1: vLLM would refuse to start: one request of max_model_len 131072 (the model's "
        "max_position_embeddings) needs 16.0 GiB of KV cache per GPU (32 layers x 8 KV heads x 128 head size x 2 "
        "(key and value) x 2 bytes (bfloat16, the model's dtype) = 128 KiB per token), but each GPU keeps 14.9 GiB "
        "for it: 79.6 GiB x gpu_memory_utilization 0.4 = 31.9 GiB, minus 15.0 GiB of weights per GPU (the size of "
        "its weight files), minus the 2.0 GiB margin for activations and CUDA graphs (vllm_server_fit_margin_gib).")
    # the longest that fits: (14.9 GiB // 2 MiB blocks - the null block) x 16 tokens
    assert "Lower max_model_len to at most 122048" in problem
    assert "raise gpu_memory_utilization to at least 0.42" in problem
    assert "give it more GPUs (gpus; tensor_parallel_size follows)" in problem
    assert "set kv_cache_dtype: fp8" in problem
    # what the message advises is enough
    for fixed in ({"max_model_len": 122048}, {"gpu_memory_utilization": 0.42}, {"kv_cache_dtype": "fp8"}):
        options = dict({"gpu_memory_utilization": 0.4}, **fixed)
        assert vllm_kv_fit_problem(instance("llama-8b", **options), H100, LLAMA_31_8B, LLAMA_31_8B_BYTES) == ""
    assert vllm_kv_fit_problem(instance("llama-8b", gpu_memory_utilization=0.4, max_model_len=122064), H100,
                               LLAMA_31_8B, LLAMA_31_8B_BYTES) != "", "one block more does not fit"


def test_mha_7b_needs_four_times_the_kv_of_gqa():
    plan = kv_cache_plan(instance("llama2"), H100, LLAMA_2_7B, LLAMA_2_7B_BYTES)
    # no head_dim in its config.json: hidden_size / heads = 128; 32 KV heads
    assert plan["head_size"] == 128 and plan["kv_heads_per_gpu"] == 32
    assert plan["bytes_per_token"] == 524288 == 4 * kv_cache_plan(instance(), H100, LLAMA_31_8B)["bytes_per_token"]
    assert plan["needed_bytes"] == vllm_needed_bytes(32, vllm_page_size_bytes(32, 128, 128, 2), 4096)
    assert plan["needed_bytes"] == 2 * GIB + 8 * 1024 * 1024
    assert plan["fits"] and round(plan["full_length_requests"], 1) == 28.6
    problem = vllm_kv_fit_problem(instance("llama2", gpu_memory_utilization=0.2), H100, LLAMA_2_7B, LLAMA_2_7B_BYTES)
    assert "one request of max_model_len 4096 (the model's max_position_embeddings) needs 2.0 GiB" in problem
    assert "32 layers x 32 KV heads x 128 head size x 2 (key and value) x 2 bytes (float16, the model's dtype) = 512 KiB" in problem
    assert "each GPU keeps 1.4 GiB for it" in problem and "Lower max_model_len to at most 2800" in problem


def test_tensor_parallel_splits_kv_heads_and_weights():
    two = H100 * 2
    plan = kv_cache_plan(instance("llama-70b", tensor_parallel_size=2), two, LLAMA_31_70B, LLAMA_31_70B_BYTES)
    assert plan["kv_heads_per_gpu"] == 4 and plan["bytes_per_token"] == 80 * 4 * 128 * 2 * 2
    assert plan["weights_per_gpu_bytes"] == LLAMA_31_70B_BYTES / 2
    problem = vllm_kv_fit_problem(instance("llama-70b", tensor_parallel_size=2), two, LLAMA_31_70B, LLAMA_31_70B_BYTES)
    assert "needs 20.0 GiB of KV cache per GPU (tensor_parallel_size 2, pipeline_parallel_size 1)" in problem
    assert "80 layers x 4 KV heads x 128 head size" in problem and "minus 65.7 GiB of weights per GPU" in problem
    assert "each GPU keeps 4.0 GiB for it" in problem
    assert vllm_kv_fit_problem(instance("llama-70b", tensor_parallel_size=2, max_model_len=16384), two, LLAMA_31_70B,
                               LLAMA_31_70B_BYTES) == ""
    assert vllm_kv_fit_problem(instance("llama-70b", tensor_parallel_size=4), H100 * 4, LLAMA_31_70B, LLAMA_31_70B_BYTES) == ""


def test_more_ranks_than_kv_heads_replicate_one_head_each():
    plan = kv_cache_plan(instance(tensor_parallel_size=16), H100 * 16, LLAMA_31_8B, LLAMA_31_8B_BYTES)
    assert plan["kv_heads_per_gpu"] == 1  # max(1, 8 // 16), vllm/config/model.py get_num_kv_heads


def test_pipeline_parallel_splits_layers_as_vllm_does():
    # get_pp_indices: 32 layers over 3 stages are 10, 11, 11; the fullest stage decides
    assert kv_cache_plan(instance(pipeline_parallel_size=3), H100 * 3, LLAMA_31_8B)["layers_per_gpu"] == 11
    assert kv_cache_plan(instance(pipeline_parallel_size=2), H100 * 2, LLAMA_31_8B)["layers_per_gpu"] == 16
    assert kv_cache_plan(instance(tensor_parallel_size=2, pipeline_parallel_size=2), H100 * 2, LLAMA_31_8B) is None


def test_an_fp8_kv_cache_halves_it():
    plan = kv_cache_plan(instance(kv_cache_dtype="fp8"), H100, LLAMA_31_8B, LLAMA_31_8B_BYTES)
    assert plan["bytes_per_token"] == 65536 and plan["kv_dtype_label"] == "kv_cache_dtype fp8"
    problem = vllm_kv_fit_problem(instance(kv_cache_dtype="fp8_e5m2", gpu_memory_utilization=0.3), H100, LLAMA_31_8B,
                                  LLAMA_31_8B_BYTES)
    assert "x 1 byte (kv_cache_dtype fp8_e5m2) = 64 KiB per token" in problem and "set kv_cache_dtype" not in problem
    # a checkpoint that may carry its own fp8 KV scheme is counted at 1 byte, never refused for 2
    quantized = dict(LLAMA_31_8B, quantization="compressed-tensors")
    assert kv_cache_plan(instance(), H100, quantized)["kv_dtype_bytes"] == 1
    assert kv_cache_plan(instance(kv_cache_dtype="bfloat16"), H100, quantized)["kv_dtype_bytes"] == 2


def test_mla_keeps_one_latent_per_token_on_every_rank():
    plan = kv_cache_plan(instance(), H100, DEEPSEEK_V2_LITE)
    # 27 layers x (512 + 64) x 2 bytes, no V
    assert plan["bytes_per_token"] == 31104 == 27 * vllm_page_size_bytes(1, 576, 0, 2, block_size=1)
    assert plan["needed_bytes"] == vllm_needed_bytes(27, vllm_page_size_bytes(1, 576, 0, 2), 163840)
    assert kv_cache_plan(instance(tensor_parallel_size=2), H100 * 2, DEEPSEEK_V2_LITE)["bytes_per_token"] == 31104
    problem = vllm_kv_fit_problem(instance("dsv2", gpu_memory_utilization=0.1), H100, DEEPSEEK_V2_LITE, 31 * GIB)
    assert "27 layers x one 576-wide latent (MLA) x 2 bytes" in problem


def test_dtype_option_and_float32_checkpoints():
    assert kv_cache_plan(instance(dtype="float32"), H100, LLAMA_2_7B)["kv_dtype_bytes"] == 4
    # vLLM casts a float32 checkpoint down to 16 bits with dtype auto (_resolve_auto_dtype)
    assert kv_cache_plan(instance(), H100, dict(LLAMA_2_7B, torch_dtype="float32"))["kv_dtype_bytes"] == 2


@pytest.mark.parametrize("value, length", [(32768, 32768), ("32768", 32768), ("32k", 32000), ("32K", 32768), ("1.5k", 1500)])
def test_max_model_len_as_vllm_reads_it(value, length):
    assert kv_cache_plan(instance(max_model_len=value), H100, LLAMA_31_8B)["max_model_len"] == length
    assert kv_cache_plan({"options": {"max-model-len": value}}, H100, LLAMA_31_8B)["max_model_len"] == length


def test_without_the_weights_the_kv_cache_alone_is_checked():
    plan = kv_cache_plan(instance(), H100, LLAMA_31_8B)
    assert plan["weights_per_gpu_bytes"] == 0
    problem = vllm_kv_fit_problem(instance("m", gpu_memory_utilization=0.2), H100, LLAMA_31_8B)
    assert "minus 0.0 GiB of weights per GPU (not known, so left out)" in problem
    assert vllm_kv_fit_problem({"name": "m", "parameters": "8B", "options": {"gpu_memory_utilization": 0.4}}, H100,
                               LLAMA_31_8B).count("(8B parameters at 2 bytes each (dtype auto))") == 1


def test_an_explicit_kv_cache_size_replaces_the_utilization():
    problem = vllm_kv_fit_problem(instance(kv_cache_memory_bytes="8G"), H100, LLAMA_31_8B, LLAMA_31_8B_BYTES)
    assert "kv_cache_memory_bytes gives it 8.0 GiB" in problem and "raise kv_cache_memory_bytes to at least" in problem
    assert vllm_kv_fit_problem(instance(kv_cache_memory_bytes="17G"), H100, LLAMA_31_8B, LLAMA_31_8B_BYTES) == ""


def test_the_margin_is_the_roles_default_and_moves_the_line():
    with open(os.path.join(ROOT, "roles/vllm_server/defaults/main.yml")) as f:
        assert float(yaml.safe_load(f)["vllm_server_fit_margin_gib"]) == DEFAULT_MARGIN_GIB
    tight = instance(gpu_memory_utilization=0.42)
    assert vllm_kv_fit_problem(tight, H100, LLAMA_31_8B, LLAMA_31_8B_BYTES) == ""
    assert vllm_kv_fit_problem(tight, H100, LLAMA_31_8B, LLAMA_31_8B_BYTES, margin_gib=3) != ""


def test_few_full_length_requests_at_once_is_a_note_not_a_refusal():
    tight = instance("llama-8b", gpu_memory_utilization=0.45)
    assert vllm_kv_fit_problem(tight, H100, LLAMA_31_8B, LLAMA_31_8B_BYTES) == ""
    note = vllm_kv_fit_note(tight, H100, LLAMA_31_8B, LLAMA_31_8B_BYTES)
    assert note.startswith("llama-8b: its KV cache holds about 18.9 GiB per GPU, room for 1.2 requests of max_model_len "
                           "131072 at once")
    assert "whatever max_num_seqs says" in note


@pytest.mark.parametrize("options, summary", [
    ({}, {}),
    ({}, {k: v for k, v in LLAMA_31_8B.items() if k != "num_hidden_layers"}),
    ({}, {k: v for k, v in LLAMA_2_7B.items() if k != "hidden_size"}),
    ({"max_model_len": -1}, LLAMA_31_8B),
    ({"max_model_len": "auto"}, LLAMA_31_8B),
    ({"kv_cache_dtype": "nvfp4"}, LLAMA_31_8B),
    ({}, dict(LLAMA_31_8B, sliding_window=4096)),
    ({}, dict(LLAMA_31_8B, model_type="gemma3_text")),
    ({}, dict(LLAMA_31_8B, model_type="jamba")),
    ({"runner": "pooling"}, LLAMA_31_8B),
    ({"tensor_parallel_size": 2}, LLAMA_31_8B),
])
def test_what_the_check_cannot_know_is_left_to_vllm(options, summary):
    tiny = dict(options, gpu_memory_utilization=0.2) if "gpu_memory_utilization" not in options else options
    assert vllm_kv_fit_problem(instance(**tiny), H100, summary, LLAMA_31_8B_BYTES) == ""


def test_layer_types_other_than_full_attention_get_no_check():
    tight = instance(gpu_memory_utilization=0.4)
    mixed = dict(LLAMA_31_8B, layer_types=["sliding_attention", "full_attention"] * 16)
    assert vllm_kv_fit_problem(tight, H100, mixed, LLAMA_31_8B_BYTES) == ""
    full = dict(LLAMA_31_8B, layer_types=["full_attention"] * 32)
    assert vllm_kv_fit_problem(tight, H100, full, LLAMA_31_8B_BYTES) != ""


def test_a_window_as_long_as_the_context_is_full_attention():
    summary = dict(LLAMA_2_7B, sliding_window=4096)
    assert kv_cache_plan(instance(), H100, summary)["bytes_per_token"] == 524288


def test_filters_are_registered():
    filters = FilterModule().filters()
    assert set(filters) == {"vllm_fit_problem", "vllm_kv_fit_problem", "vllm_kv_fit_note", "vllm_model_facts"}


def render_fit_task(task_name, variables):
    """Template a task's vars of roles/vllm_server/tasks/fit.yml as Ansible does."""
    loader = DataLoader()
    tasks = loader.load_from_file(os.path.join(ROOT, "roles/vllm_server/tasks/fit.yml"), trusted_as_template=True)
    task = next(t for t in tasks if t["name"] == task_name)
    merged = dict(variables)
    merged.update(task["vars"])
    templar = Templar(loader=loader, variables=merged)
    return {key: templar.template(value) for key, value in task["vars"].items()
            if key.startswith("__vllm_server_kv") or key == "__vllm_server_fit_problem"}


def test_fit_yml_feeds_the_cached_config_and_the_weights_to_the_check():
    cached = {"model": "meta-llama/Llama-3.1-8B-Instruct", "revision": "main", "cached": True, "config": LLAMA_31_8B,
              "weights_bytes": LLAMA_31_8B_BYTES}
    other = {"model": "meta-llama/Llama-3.1-8B-Instruct", "revision": "other", "config": {}, "weights_bytes": 0}
    variables = {
        "_vllm_server_host_gpus": [{"index": "0", "uuid": "GPU-2130f80e", "memory_mib": H100[0]}],
        "_vllm_server_instance": {"name": "llama-8b", "model": "meta-llama/Llama-3.1-8B-Instruct", "gpus": "all",
                                  "gpu_count": 1, "options": {"gpu_memory_utilization": 0.4}},
        "__vllm_server_model_info": {"models": [other, cached]},
        "_vllm_server_hub_answers": [],
        "vllm_server_fit_margin_gib": 2,
        "inventory_hostname": "gpu1",
    }
    kv_task = "Check that the KV cache of one max_model_len request fits beside the weights, as vLLM checks at start"
    rendered = render_fit_task(kv_task, variables)
    assert rendered["__vllm_server_kv_problem"].startswith("Instance llama-8b on gpu1: vLLM would refuse to start")
    assert "minus 15.0 GiB of weights per GPU (the size of its weight files)" in rendered["__vllm_server_kv_problem"]
    variables["_vllm_server_instance"]["options"] = {}
    assert render_fit_task(kv_task, variables)["__vllm_server_kv_problem"] == ""
    # not in the host's cache: the hub's answer (hf_model_config) tells the same
    variables["_vllm_server_instance"]["options"] = {"gpu_memory_utilization": 0.4}
    variables["__vllm_server_model_info"] = {"models": [other, dict(cached, cached=False, config={}, weights_bytes=0)]}
    assert render_fit_task(kv_task, variables)["__vllm_server_kv_problem"] == "", "nothing known: no KV check"
    variables["_vllm_server_hub_answers"] = [dict(cached, cached=False)]
    assert "minus 15.0 GiB of weights per GPU" in render_fit_task(kv_task, variables)["__vllm_server_kv_problem"]
    # the weight check reads the same measure: 141 GB of a 70B model's bf16 weights cannot fit one H100
    variables["__vllm_server_model_info"] = {"models": [dict(cached, weights_bytes=LLAMA_31_70B_BYTES)]}
    weight_task = "Check that each model's weights can fit into its GPUs"
    assert render_fit_task(weight_task, variables)["__vllm_server_fit_problem"].startswith(
        "llama-8b needs about 131.4 GiB of weights per GPU (an estimate from the size of its weight files, over 1 GPU)")


def test_model_facts_come_from_the_cache_else_the_hub():
    from ansible_collections.llmops.vllm.plugins.filter.vllm_fit import vllm_model_facts
    llama = {"name": "m", "model": "meta-llama/Llama-3.1-8B-Instruct"}
    cached = {"model": llama["model"], "revision": "main", "config": LLAMA_31_8B, "weights_bytes": LLAMA_31_8B_BYTES}
    hub = {"model": llama["model"], "revision": "main", "config": LLAMA_2_7B, "weights_bytes": 1}
    assert vllm_model_facts(llama, [cached], [hub]) == {"config": LLAMA_31_8B, "weights_bytes": LLAMA_31_8B_BYTES}
    assert vllm_model_facts(llama, [dict(cached, config={}, weights_bytes=0)], [hub]) == {"config": LLAMA_2_7B, "weights_bytes": 1}
    assert vllm_model_facts(dict(llama, revision="v2"), [cached], [hub]) == {"config": {}, "weights_bytes": 0}
    assert vllm_model_facts(llama, [], None) == {"config": {}, "weights_bytes": 0}


def test_weights_quantized_as_they_load_or_kept_in_cpu_memory_leave_more_room():
    bf16 = kv_cache_plan(instance(), H100, LLAMA_31_8B, LLAMA_31_8B_BYTES)
    fp8 = kv_cache_plan(instance(quantization="fp8"), H100, LLAMA_31_8B, LLAMA_31_8B_BYTES)
    assert fp8["weights_per_gpu_bytes"] == LLAMA_31_8B_BYTES // 2
    assert "quantization fp8 as it loads" in fp8["weights_how"]
    # a checkpoint quantized already: its files are what the GPU holds
    awq = kv_cache_plan(instance(quantization="awq"), H100, dict(LLAMA_31_8B, quantization="awq"), 5 * GIB)
    assert awq["weights_per_gpu_bytes"] == 5 * GIB
    offload = kv_cache_plan(instance(cpu_offload_gb=4), H100, LLAMA_31_8B, LLAMA_31_8B_BYTES)
    assert offload["weights_per_gpu_bytes"] == bf16["weights_per_gpu_bytes"] - 4 * GIB


def test_a_70b_awq_model_fits_by_its_weights_but_not_with_its_whole_context():
    """The molecule gpu-host scenario's case (its config.json in the host's cache, weights from `parameters`)."""
    from ansible_collections.llmops.vllm.plugins.filter.vllm_fit import vllm_fit_problem
    awq = dict(LLAMA_31_70B, torch_dtype="float16", quantization="awq")
    llama = {"name": "llama-70b-awq", "parameters": "70B", "options": {"quantization": "awq"}}
    assert vllm_fit_problem(llama, H100) == ""
    problem = vllm_kv_fit_problem(llama, H100, awq)
    assert "needs 40.0 GiB of KV cache per GPU" in problem and "each GPU keeps 37.1 GiB for it" in problem
    assert "minus 32.6 GiB of weights per GPU (70B parameters at 0.5 bytes each (awq))" in problem
    assert "Lower max_model_len to at most 121504" in problem
    assert vllm_kv_fit_problem(dict(llama, options={"quantization": "awq", "max_model_len": 32768}), H100, awq) == ""

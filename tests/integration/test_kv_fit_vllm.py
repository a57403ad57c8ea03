"""The fit check's KV cache (plugins/filter/vllm_fit.py) against vLLM 0.32.0's own sizing code: for real
models' config.json, vLLM in the test image (vllm_kv_check.py) builds the layer specs its attention layers
report and runs get_kv_cache_configs, the start-up check; it must accept exactly the memory the fit check
says one request of max_model_len needs, and refuse one byte less."""

import json
import os
import subprocess
import sys

import pytest

from vllm_testbed import IMAGE, ROOT

sys.path.insert(0, os.path.join(ROOT, "collections"))
from ansible_collections.llmops.vllm.plugins.filter.vllm_fit import kv_cache_plan  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", "rms_norm_eps": 1e-05,
         "vocab_size": 128256, "bos_token_id": 128000, "eos_token_id": 128009, "rope_theta": 500000.0}
# meta-llama/Llama-3.1-8B-Instruct (grouped-query attention)
LLAMA_31_8B = dict(LLAMA, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                   hidden_size=4096, intermediate_size=14336, torch_dtype="bfloat16", max_position_embeddings=131072,
                   rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 8192, "rope_type": "llama3"})
# meta-llama/Llama-2-7b-hf (multi-head attention, no head_dim)
LLAMA_2_7B = dict(LLAMA, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, hidden_size=4096,
                  intermediate_size=11008, torch_dtype="float16", max_position_embeddings=4096, vocab_size=32000,
                  bos_token_id=1, eos_token_id=2, rope_theta=10000.0)
# meta-llama/Llama-3.1-70B-Instruct
LLAMA_31_70B = dict(LLAMA_31_8B, num_hidden_layers=80, num_attention_heads=64, hidden_size=8192, intermediate_size=28672)
# deepseek-ai/DeepSeek-V2-Lite-Chat (multi-head latent attention)
DEEPSEEK_V2_LITE = {
    "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "num_hidden_layers": 27,
    "num_attention_heads": 16, "num_key_value_heads": 16, "hidden_size": 2048, "intermediate_size": 10944,
    "moe_intermediate_size": 1408, "kv_lora_rank": 512, "q_lora_rank": None, "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64, "v_head_dim": 128, "n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6,
    "first_k_dense_replace": 1, "moe_layer_freq": 1, "topk_method": "greedy", "n_group": 1, "topk_group": 1,
    "norm_topk_prob": False, "scoring_func": "softmax", "routed_scaling_factor": 1.0, "hidden_act": "silu",
    "max_position_embeddings": 163840, "rms_norm_eps": 1e-06, "rope_theta": 10000,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "torch_dtype": "bfloat16", "vocab_size": 102400, "bos_token_id": 100000, "eos_token_id": 100001,
}
SUMMARY_KEYS = ("model_type", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_size",
                "torch_dtype", "kv_lora_rank", "qk_rope_head_dim", "sliding_window", "max_position_embeddings")

CASES = [
    ("llama-3.1-8b", LLAMA_31_8B, {}),
    ("llama-3.1-8b-32k-fp8", LLAMA_31_8B, {"max_model_len": 32768, "kv_cache_dtype": "fp8"}),
    ("llama-2-7b", LLAMA_2_7B, {}),
    ("llama-3.1-70b-tp2", LLAMA_31_70B, {"tensor_parallel_size": 2}),
    ("llama-3.1-8b-tp16", LLAMA_31_8B, {"tensor_parallel_size": 16, "max_model_len": 8192}),
    ("llama-3.1-8b-pp3", LLAMA_31_8B, {"pipeline_parallel_size": 3, "max_model_len": 100000}),
    ("deepseek-v2-lite", DEEPSEEK_V2_LITE, {"max_model_len": 32768}),
]


def plan(config, options):
    summary = dict((k, config[k]) for k in SUMMARY_KEYS if config.get(k) is not None)
    gpus = options.get("tensor_parallel_size", 1) * options.get("pipeline_parallel_size", 1)
    return kv_cache_plan({"name": "x", "options": options}, [81559] * gpus, summary)


@pytest.fixture(scope="module")
def vllm_says():
    cases = []
    for name, config, options in CASES:
        needed = plan(config, options)["needed_bytes"]
        cases.append({"name": name, "config": config, "max_model_len": options.get("max_model_len"),
                      "tp": options.get("tensor_parallel_size", 1), "pp": options.get("pipeline_parallel_size", 1),
                      "kv_cache_dtype": options.get("kv_cache_dtype", "auto"), "available": [needed, needed - 1]})
    result = subprocess.run(
        ["docker", "run", "--rm", "-i", "--network", "none", "-v", "%s:/it:ro" % HERE, "--entrypoint", "python3", IMAGE,
         "/it/vllm_kv_check.py"],
        input=json.dumps(cases), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict((entry["name"], entry) for entry in json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("name, config, options", CASES, ids=[c[0] for c in CASES])
def test_the_fit_check_needs_what_vllm_needs(vllm_says, name, config, options):
    ours, theirs = plan(config, options), vllm_says[name]
    assert ours["max_model_len"] == theirs["max_model_len"]
    assert ours["layers_per_gpu"] == theirs["layers_per_gpu"]
    assert ours["kv_heads_per_gpu"] == theirs["num_kv_heads"] and ours["head_size"] == theirs["head_size"]
    assert ours["mla"] == theirs["use_mla"]
    assert ours["bytes_per_token"] == theirs["bytes_per_token"]
    needed = ours["needed_bytes"]
    assert theirs["verdicts"][str(needed)] == "fits"
    assert theirs["verdicts"][str(needed - 1)].startswith(
        "To serve at least one request with the model's max seq len (%d)" % ours["max_model_len"])

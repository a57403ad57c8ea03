"""vllm_server's preflight against the GPUs of the fake driver, whose dataset is the recording of
the lent H100 (one NVIDIA H100 80GB HBM3, 81559 MiB): GPUs that do not exist and models too big
for them (by their weights, or by their weights and KV cache) are refused before anything changes."""

import json

import pytest

from llmops_testlib import HubStandIn, run_playbook

PLAYBOOK = "molecule/gpu-host/vllm-preflight.yml"


def test_an_8b_model_fits_one_h100(tmp_path):
    derived = tmp_path / "derived.json"
    result = run_playbook(PLAYBOOK, {"derived_file": str(derived), "vllm_server_instances": [
        {"name": "llama-8b", "model": "meta-llama/Llama-3.1-8B-Instruct", "parameters": "8B", "gpus": "all"}]})
    assert result.returncode == 0, result.output[-3000:]
    facts = json.loads(derived.read_text())
    assert [(g["index"], g["memory_mib"]) for g in facts["gpus"]] == [("0", 81559)]
    # One GPU: no tensor parallelism; the only derived option is vLLM's graceful-stop window
    # (vllm_server_shutdown_timeout, default 60 s).
    assert facts["options"] == [{"shutdown_timeout": 60}], "one GPU: no tensor parallelism"


def test_a_70b_model_in_bf16_is_refused_on_one_h100():
    result = run_playbook(PLAYBOOK, {"vllm_server_instances": [
        {"name": "llama-70b", "model": "meta-llama/Llama-3.3-70B-Instruct", "parameters": "70B", "gpus": [0]}]})
    assert result.returncode != 0
    text = " ".join(result.output.split())
    assert ("llama-70b needs about 130.4 GiB of weights per GPU (an estimate from 70B parameters at 2 bytes each "
            "(dtype auto), over 1 GPU), but each of its GPUs offers 71.7 GiB at gpu_memory_utilization 0.9") in text


def test_the_same_model_quantized_fits():
    result = run_playbook(PLAYBOOK, {"vllm_server_instances": [
        {"name": "llama-70b-awq", "model": "org/Llama-3.3-70B-Instruct-AWQ", "parameters": "70B", "gpus": [0],
         "options": {"quantization": "awq"}}]})
    assert result.returncode == 0, result.output[-3000:]


def test_a_gpu_the_host_does_not_have_is_refused():
    result = run_playbook(PLAYBOOK, {"vllm_server_instances": [{"name": "two", "model": "m/m", "gpus": [0, 1]}]})
    assert result.returncode != 0
    assert "Instance two on llmops-gpu-host asks for GPUs 1, which the host does not have (it has 0)" in " ".join(result.output.split())


# The config.json of a 70B model quantized with AWQ (hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4, in
# part): its 4-bit weights fit one H100, but not beside the KV cache of its whole 131072-token context.
LLAMA_70B_AWQ = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 80,
                 "num_attention_heads": 64, "num_key_value_heads": 8, "hidden_size": 8192, "head_dim": 128,
                 "max_position_embeddings": 131072, "torch_dtype": "float16",
                 "rope_scaling": {"factor": 8.0, "rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 8192},
                 "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True}}
AWQ_MODEL = "llmops-test/Llama-3.1-70B-Instruct-AWQ-kv-fit"


def awq_instance(**options):
    return {"name": "llama-70b-awq", "model": AWQ_MODEL, "parameters": "70B", "gpus": [0],
            "options": dict({"quantization": "awq"}, **options)}


def test_the_kv_cache_of_its_whole_context_is_refused_beside_70b_awq_weights():
    result = run_playbook(PLAYBOOK, {"cached_configs": {AWQ_MODEL: LLAMA_70B_AWQ}, "vllm_server_instances": [awq_instance()]})
    assert result.returncode != 0
    text = " ".join(result.output.split())
    # 80 layers x 8 KV heads x 128 x 2 x 2 bytes = 320 KiB a token; 131072 tokens and the null block: 40.0 GiB;
    # 81559 MiB x 0.9 - 70e9 x 0.5 bytes - 2 GiB = 37.1 GiB
    assert ("Instance llama-70b-awq on llmops-gpu-host: vLLM would refuse to start: one request of max_model_len 131072 "
            "(the model's max_position_embeddings) needs 40.0 GiB of KV cache per GPU (80 layers x 8 KV heads x 128 head "
            "size x 2 (key and value) x 2 bytes (float16, the model's dtype) = 320 KiB per token), but each GPU keeps "
            "37.1 GiB for it: 79.6 GiB x gpu_memory_utilization 0.9 = 71.7 GiB, minus 32.6 GiB of weights per GPU (70B "
            "parameters at 0.5 bytes each (awq))") in text
    assert "Lower max_model_len to at most 121504" in text


def test_the_same_model_with_a_shorter_context_passes():
    result = run_playbook(PLAYBOOK, {"cached_configs": {AWQ_MODEL: LLAMA_70B_AWQ},
                                     "vllm_server_instances": [awq_instance(max_model_len=32768)]})
    assert result.returncode == 0, result.output[-3000:]


# A first deploy: the same model in no cache, known only to the hub (the stand-in, tests/doubles/hf-hub, on
# the control node's loopback), which serves its config.json and a safetensors index saying how large its
# weights are (the real repo's total_size), but no weight: the preflight asks it before anything changes.
AWQ_TOTAL_SIZE = 39772213248


def unsized(instance):
    """The instance without its declared parameter count: the weights' size must come from the hub."""
    return dict((k, v) for k, v in instance.items() if k != "parameters")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    index = {"metadata": {"total_size": AWQ_TOTAL_SIZE}, "weight_map": {"lm_head.weight": "model-00001-of-00001.safetensors"}}
    files = {"config.json": json.dumps(LLAMA_70B_AWQ).encode(), "model.safetensors.index.json": json.dumps(index).encode(),
             "model-00001-of-00001.safetensors": b"\0" * 64}
    with HubStandIn(tmp_path_factory.mktemp("hub"), {AWQ_MODEL: files}, {"tokens": ["hf_llmops_gpu_host"]}) as stand_in:
        yield stand_in.url


def test_a_first_deploy_refuses_the_kv_misfit_from_the_hubs_config(hub):
    result = run_playbook(PLAYBOOK, {"vllm_server_hf_endpoint": hub, "vllm_server_env": {},
                                     "vllm_server_instances": [unsized(awq_instance())]})
    assert result.returncode != 0
    text = " ".join(result.output.split())
    assert "Ask the hub about those models, once for the whole run" in text
    # the weights are the index's total_size (37.0 GiB), not an estimate from a parameter count
    assert ("Instance llama-70b-awq on llmops-gpu-host: vLLM would refuse to start: one request of max_model_len 131072 "
            "(the model's max_position_embeddings) needs 40.0 GiB of KV cache per GPU") in text, result.output[-3000:]
    assert "minus 37.0 GiB of weights per GPU (the size of its weight files)" in text, result.output[-3000:]
    assert "Lower max_model_len" in text


def test_a_first_deploy_with_a_context_that_fits_passes(hub):
    result = run_playbook(PLAYBOOK, {"vllm_server_hf_endpoint": hub, "vllm_server_env": {},
                                     "vllm_server_instances": [unsized(awq_instance(max_model_len=32768))]})
    assert result.returncode == 0, result.output[-3000:]

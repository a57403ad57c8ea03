"""vllm_server's preflight against the GPUs of the fake driver, whose dataset is the recording of
the lent H100 (one NVIDIA H100 80GB HBM3, 81559 MiB): GPUs that do not exist and models too big
for them are refused before anything changes."""

import json

from llmops_testlib import run_playbook

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

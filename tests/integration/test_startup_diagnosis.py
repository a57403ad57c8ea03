"""Why vLLM did not start, in this collection's variables: verify_endpoint against real vLLM 0.32.0
servers (the CPU build) that fail at start the way users' servers do (issue 12).

Each case starts the real server with one thing wrong and lets the module wait for it with
`container` set: the module must end the wait as the container exits, quote vLLM's own exception
whole (a pydantic ValidationError with every line), and say which variable fixes it. The failures
that need a GPU or Hugging Face (out of memory, bfloat16 on an old GPU, a gated model) are tested
against vLLM's recorded messages in tests/unit/plugins/module_utils/test_vllm_startup.py.
"""

import pytest

from vllm_testbed import VllmContainer

CASES = {
    # Docker's default /dev/shm (64 MiB) without ipc: host
    "shm": dict(model="llmops-test/tiny-chat", docker_args=["--shm-size", "64m"]),
    # offline, and the model is not in the cache
    "offline": dict(model="llmops-test/not-downloaded"),
    # longer than the model's max_position_embeddings (2048)
    "max-model-len": dict(model="llmops-test/tiny-chat", args=["--max-model-len", "4096"]),
    # a value our option check lets through (it knows names and choices, not ranges): pydantic refuses it
    "utilization": dict(model="llmops-test/tiny-chat", args=["--gpu-memory-utilization", "1.5"]),
    # tiny-chat has 2 attention heads
    "heads": dict(model="llmops-test/tiny-chat", args=["--tensor-parallel-size", "3"]),
}


@pytest.fixture(scope="module")
def failing_servers(containers):
    """All cases started at once: each fails within seconds of importing vLLM, so they share that time."""
    servers = {}
    for case, spec in CASES.items():
        server = VllmContainer("fail-" + case, spec["model"], args=spec.get("args", ()), docker_args=spec.get("docker_args", ()))
        containers.append(server)
        servers[case] = server.start()
    return servers


def diagnose(run_module, server):
    result, run = run_module({"url": server.url, "chat": False, "stream": False, "timeout": 300, "container": server.name})
    assert result.get("failed") is True, result
    assert run.elapsed < 240, "the module waited for a container that had exited (%.0fs)" % run.elapsed
    assert "exited with exit code" in result["msg"] or "restarted" in result["msg"], result["msg"]
    return result


def test_shared_memory(failing_servers, run_module):
    result = diagnose(run_module, failing_servers["shm"])
    assert any(e.startswith("RuntimeError: Insufficient space in /dev/shm for shared-memory allocation") for e in result["container_errors"])
    assert any("vllm_server_ipc_mode: host" in a and "vllm_server_shm_size" in a for a in result["advice"]), result["advice"]
    assert "What to change: vLLM's processes ran out of shared memory" in result["msg"]


def test_offline_without_the_model(failing_servers, run_module):
    result = diagnose(run_module, failing_servers["offline"])
    assert any(e.startswith("huggingface_hub.errors.LocalEntryNotFoundError: Cannot find an appropriate cached snapshot folder")
               for e in result["container_errors"]), result["container_errors"]
    assert any("HF_HUB_OFFLINE" in a and "vllm_server_download_models" in a for a in result["advice"]), result
    assert not any("vllm_server_hf_token" in a for a in result["advice"]), "an absent model is not a gated one"


def test_max_model_len_longer_than_the_model(failing_servers, run_module):
    result = diagnose(run_module, failing_servers["max-model-len"])
    error = [e for e in result["container_errors"] if "User-specified max_model_len (4096)" in e]
    assert error, result["container_errors"]
    assert error[0].startswith("pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig\n"), error[0]
    assert any(a.startswith("max_model_len in the instance's options (vllm_server_options) is longer") for a in result["advice"])


def test_a_value_out_of_range_keeps_every_line_of_the_validation_error(failing_servers, run_module):
    result = diagnose(run_module, failing_servers["utilization"])
    error = [e for e in result["container_errors"] if "validation error" in e]
    assert error, result["container_errors"]
    lines = error[0].splitlines()
    assert len(lines) >= 3, "only the first line of the pydantic error was kept: %r" % error[0]
    assert "gpu_memory_utilization" in error[0] and "less than or equal to 1" in error[0]
    assert result["advice"] == ["vLLM refused an option value: correct the field named above in the instance's options "
                                "(vllm_server_options)."]


def test_heads_not_divisible_by_tensor_parallel_size(failing_servers, run_module):
    result = diagnose(run_module, failing_servers["heads"])
    assert any("Total number of attention heads (2) must be divisible by tensor parallel size (3)" in e
               for e in result["container_errors"]), result["container_errors"]
    assert any("divide evenly over the instance's GPUs" in a for a in result["advice"]), result["advice"]

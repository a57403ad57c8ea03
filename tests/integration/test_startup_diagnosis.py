"""Why vLLM did not start, in this collection's variables: verify_endpoint against real vLLM 0.32.0
servers (the CPU build) that fail at start the way users' servers do (issues 12 and 21).

Each case starts the real server with one thing wrong and lets the module wait for it with
`container` set: the module must end the wait as the container exits, quote vLLM's own exception
whole (a pydantic ValidationError with every line), and say which variable fixes it. Hugging Face is
the hub stand-in (tests/doubles/hf-hub, a test double: Hugging Face is unreachable here), reached
from containers on the host's network. The failures that need a GPU (out of memory, bfloat16 on an
old GPU, no device, an old driver, a hang in NCCL) are tested against vLLM's, torch's and NCCL's
messages as their sources word them in tests/unit/plugins/module_utils/test_vllm_startup.py.

LLMOPS_IT_RECORD_STARTUP_LOGS=DIR writes each case's `docker logs` to DIR/<case>.log (how the
fixtures of tests/unit/fixtures/vllm_startup were recorded).
"""

import json
import os
import shutil
import subprocess
import time

import pytest

from vllm_testbed import MODELS, ROOT, VllmContainer, free_port

TINY_CHAT = os.path.join(MODELS, "hub", "models--llmops-test--tiny-chat")
GATED = "llmops-test/tiny-chat"


# A case: the model, vLLM's arguments (args), docker's (docker_args), a changed copy of tiny-chat (copy:
# config.json's changes; the model is then that directory), or the hub stand-in (hub: True; online, an
# empty writable Hugging Face home).
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
    # a model that ships its own code (auto_map, a model_type transformers does not know)
    "remote-code": dict(copy={"model_type": "llmops_custom", "auto_map": {"AutoConfig": "configuration_custom.CustomConfig",
                                                                          "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}}),
    # an architecture this vLLM does not know
    "architecture": dict(copy={"architectures": ["NoSuchForCausalLM"]}),
    # a gated model and no token; a model the hub does not have
    "gated": dict(model=GATED, hub=True),
    "not-found": dict(model="llmops-test/no-such-model", hub=True),
    # a KV cache smaller than one request of max_model_len 2048 (VLLM_CPU_KVCACHE_SPACE, in whole GiB, would
    # replace the option: it is left unset)
    "kv-cache": dict(model="llmops-test/tiny-chat", args=["--kv-cache-memory-bytes", "1048576"], cpu_kvcache_space=None),
    # no KV cache at all
    "no-cache-blocks": dict(model="llmops-test/tiny-chat", cpu_kvcache_space=0),
    # a KV cache space larger than the host's memory
    "kv-space": dict(model="llmops-test/tiny-chat", cpu_kvcache_space=4096),
    # the model's config says gptq, the option says awq
    "quantization": dict(copy={"quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False,
                                                       "sym": True}},
                         args=["--quantization", "awq"]),
}


def tiny_chat_copy(directory, changes):
    """A plain copy of tiny-chat's snapshot with config.json changed."""
    snapshots = os.path.join(TINY_CHAT, "snapshots")
    source = os.path.join(snapshots, sorted(os.listdir(snapshots))[0])
    shutil.copytree(source, directory, symlinks=False)
    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    config.update(changes)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    return directory


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The hub stand-in on a port of its own, serving the tiny models, with tiny-chat gated."""
    config = tmp_path_factory.mktemp("hf-hub") / "config.json"
    config.write_text(json.dumps({"tokens": ["hf_llmops_it_granted"], "gated": {GATED: ["hf_llmops_it_granted"]}}))
    port = free_port()
    env = dict(os.environ, LLMOPS_HF_HUB_PORT=str(port), LLMOPS_HF_HUB_MODELS=os.path.join(MODELS, "hub"),
               LLMOPS_HF_HUB_CONFIG=str(config))
    control = os.path.join(ROOT, "tests", "doubles", "hf-hub")
    subprocess.run([control, "up"], env=env, check=True, timeout=60, capture_output=True)
    yield "http://127.0.0.1:%d" % port
    subprocess.run([control, "down"], env=env, check=True, timeout=60, capture_output=True)


@pytest.fixture(scope="module")
def failing_servers(containers, hub, tmp_path_factory):
    """All cases started at once: each fails within seconds of importing vLLM, so they share that time."""
    servers = {}
    for case, spec in CASES.items():
        model, docker_args, extra = spec.get("model"), list(spec.get("docker_args", ())), {}
        if "copy" in spec:
            directory = tiny_chat_copy(str(tmp_path_factory.mktemp(case) / "model"), spec["copy"])
            model = "/models/" + case
            docker_args += ["-v", directory + ":" + model + ":ro"]
        if "cpu_kvcache_space" in spec:
            extra["cpu_kvcache_space"] = spec["cpu_kvcache_space"]
        if spec.get("hub"):
            home = tmp_path_factory.mktemp(case + "-hf-home")
            os.chmod(str(home), 0o777)
            extra.update(models=str(home), offline=False, host_network=True)
            docker_args += ["-e", "HF_ENDPOINT=" + hub]
        server = VllmContainer("fail-" + case, model, args=spec.get("args", ()), docker_args=docker_args,
                               worker_in_engine=False, **extra)
        containers.append(server)
        servers[case] = server.start()
    yield servers
    record = os.environ.get("LLMOPS_IT_RECORD_STARTUP_LOGS")
    if record:
        os.makedirs(record, exist_ok=True)
        for case, server in servers.items():
            with open(os.path.join(record, case + ".log"), "w") as f:
                # one file for both streams keeps the order in which docker prints them
                subprocess.run(["docker", "logs", server.name], stdout=f, stderr=subprocess.STDOUT, timeout=60)


def diagnose(run_module, server):
    started = time.time()
    result, run = run_module({"url": server.url, "chat": False, "stream": False, "timeout": 600, "container": server.name})
    ended = time.time()
    assert result.get("failed") is True, result
    # the cases start together and share two cores: how long vLLM takes to fail depends on the load, how
    # long the module waits after the exit does not (it looks every 2 s; ansible's own start takes seconds)
    exited = server.finished_at()
    assert exited is not None, "the container still runs: %s" % result["msg"]
    assert ended - max(exited, started) < 30, "the module waited %.0fs for a container that had exited" % (ended - max(exited, started))
    assert run.elapsed < 500, "the module waited for a container that had exited (%.0fs)" % run.elapsed
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


def test_a_model_with_its_own_code(failing_servers, run_module):
    result = diagnose(run_module, failing_servers["remote-code"])
    assert any("contains custom code which must be executed" in e for e in result["container_errors"]), result["container_errors"]
    assert "The model ships its own code: set trust_remote_code: true in the instance's options if you trust it." in result["advice"]


def test_an_architecture_vllm_does_not_know(failing_servers, run_module):
    result = diagnose(run_module, failing_servers["architecture"])
    assert any("NoSuchForCausalLM" in e for e in result["container_errors"]), result["container_errors"]
    assert any(a.startswith("This vLLM does not know the model's architecture: use a newer vLLM image (vllm_server_image)")
               for a in result["advice"]), result["advice"]


def test_a_gated_model_without_a_token(failing_servers, run_module):
    result = diagnose(run_module, failing_servers["gated"])
    assert any("GatedRepoError" in e and "Access to model %s is restricted" % GATED in e
               for e in result["container_errors"]), result["container_errors"]
    assert any("vllm_server_hf_token" in a and a.startswith("Hugging Face refused the download") for a in result["advice"])


def test_a_model_the_hub_does_not_have(failing_servers, run_module):
    result = diagnose(run_module, failing_servers["not-found"])
    assert any("llmops-test/no-such-model" in e for e in result["container_errors"]), result["container_errors"]
    assert any(a.startswith("The model id does not name a model on Hugging Face") for a in result["advice"]), result["advice"]
    # the Hub answers 401 to an anonymous request for a missing repo: that is no gated model
    assert not any("vllm_server_hf_token (from Ansible Vault)" in a for a in result["advice"]), result["advice"]


def test_a_kv_cache_smaller_than_one_request(failing_servers, run_module):
    result = diagnose(run_module, failing_servers["kv-cache"])
    assert any("To serve at least one request with the model's max seq len (2048)" in e and
               "larger than the available KV cache memory" in e for e in result["container_errors"]), result["container_errors"]
    assert any(a.startswith("The KV cache does not fit next to the weights") and "VLLM_CPU_KVCACHE_SPACE" in a
               for a in result["advice"]), result["advice"]


def test_no_kv_cache_at_all(failing_servers, run_module):
    result = diagnose(run_module, failing_servers["no-cache-blocks"])
    assert any("No available memory for the cache blocks" in e for e in result["container_errors"]), result["container_errors"]
    assert any(a.startswith("The KV cache does not fit next to the weights") for a in result["advice"]), result["advice"]


def test_a_kv_cache_space_larger_than_the_host(failing_servers, run_module):
    result = diagnose(run_module, failing_servers["kv-space"])
    assert any("is less than requested memory for kv (4096.0 GiB)" in e for e in result["container_errors"]), result["container_errors"]
    assert any(a.startswith("The CPU server's KV cache space is larger than the host's free memory") for a in result["advice"])
    assert not any("raise VLLM_CPU_KVCACHE_SPACE" in a for a in result["advice"]), "the opposite of what helps"


def test_a_quantization_the_model_is_not_in(failing_servers, run_module):
    result = diagnose(run_module, failing_servers["quantization"])
    assert any("Quantization method specified in the model config (gptq) does not match the quantization method specified "
               "in the `quantization` argument (awq)" in e for e in result["container_errors"]), result["container_errors"]
    assert any(a.startswith("The quantization in the instance's options does not match the model") for a in result["advice"])

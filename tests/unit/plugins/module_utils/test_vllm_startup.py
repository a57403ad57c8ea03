"""Why vLLM did not start, from its log: whole exception messages, and the variable that fixes each
common failure (issue 12).

Logs vLLM 0.32.0 printed here are in tests/unit/fixtures/vllm_startup (SOURCES.md says how each was
made). Failures that need a GPU or Hugging Face cannot happen here: their messages are written as
vLLM 0.32.0's and huggingface_hub 2.4.0's sources (the wheels of the test image) format them, each
citing its source line.
"""

import os

import pytest

from ansible_collections.llmops.vllm.plugins.module_utils._vllm_startup import advice, exceptions

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "vllm_startup")


def recorded(name):
    with open(os.path.join(FIXTURES, name + ".log")) as f:
        return f.read().splitlines()


def engine_core(*lines):
    """Lines as the engine core process logs them (each prefixed, as vLLM's engine core failures are)."""
    return ["(EngineCore pid=27) ERROR 11-30 13:45:28 [core.py:1510] " + line for line in lines]


def api_server(*lines):
    """Lines of the API server process's stderr, as a traceback there is printed (no prefix)."""
    return list(lines)


def traceback_of(*message):
    return ["Traceback (most recent call last):",
            '  File "/opt/venv/lib/python3.11/site-packages/vllm/v1/worker/gpu_worker.py", line 1013, in determine_available_memory',
            "    raise ValueError(msg)"] + list(message)


# ---- recorded from the real server -----------------------------------------------------------------


def test_shared_memory_recorded():
    found = exceptions(recorded("shm"))
    assert found[0] == ("RuntimeError: Insufficient space in /dev/shm for shared-memory allocation: 160 MiB required, "
                        "64 MiB free. Increase /dev/shm (e.g. --shm-size or --ipc=host).")
    assert found[-1].startswith("RuntimeError: Engine core initialization failed. See root cause above.")
    assert advice(found) == [
        "vLLM's processes ran out of shared memory: keep vllm_server_ipc_mode: host (the default), or give the container a "
        "larger /dev/shm with vllm_server_shm_size (for example 16g) when its IPC namespace must stay private."]


def test_offline_without_the_model_recorded():
    found = exceptions(recorded("offline"))
    assert found == ["huggingface_hub.errors.LocalEntryNotFoundError: Cannot find an appropriate cached snapshot folder for "
                     "the specified revision on the local disk and outgoing traffic has been disabled. To enable repo "
                     "look-ups and downloads online, pass 'local_files_only=False' as input."]
    text = " ".join(advice(found))
    assert "HF_HUB_OFFLINE in vllm_server_env" in text and "vllm_server_download_models: true" in text
    # a warning that mentions an error is no error
    assert not any("Too many open files" in e for e in found)


def test_max_model_len_recorded_keeps_the_whole_validation_error():
    found = exceptions(recorded("maxlen"))
    assert len(found) == 1
    lines = found[0].splitlines()
    assert lines[0] == "pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig"
    assert lines[1].startswith("  Value error, User-specified max_model_len (4096) is greater than the derived max_model_len "
                               "(max_position_embeddings=2048.0 or model_max_length=None in model's config.json).")
    assert lines[2] == "    For further information visit https://errors.pydantic.dev/2.14/v/value_error"
    assert advice(found) == [
        "max_model_len in the instance's options (vllm_server_options) is longer than the model's context: lower it to at "
        "most the model's max_position_embeddings, or leave it out to use the model's own."]


def test_an_option_value_vllm_refuses_recorded():
    found = exceptions(recorded("util"))
    assert found == ["pydantic_core._pydantic_core.ValidationError: 1 validation error for CacheConfig\n"
                     "gpu_memory_utilization\n"
                     "  Input should be less than or equal to 1 [type=less_than_equal, input_value=1.5, input_type=float]\n"
                     "    For further information visit https://errors.pydantic.dev/2.14/v/less_than_equal"]
    assert advice(found) == ["vLLM refused an option value: correct the field named above in the instance's options "
                             "(vllm_server_options)."]


def test_heads_recorded():
    found = exceptions(recorded("heads"))
    assert "Total number of attention heads (2) must be divisible by tensor parallel size (3)." in found[0]
    assert advice(found) == [
        "The model's attention heads do not divide evenly over the instance's GPUs: give the instance a number of GPUs "
        "(gpus) that divides them, or set tensor_parallel_size in its options."]


# ---- the parser ---------------------------------------------------------------------------------------


def test_exception_names_that_do_not_end_in_error_are_kept():
    log = api_server(*traceback_of("torch._dynamo.exc.Unsupported: Attempted to call function marked as skipped",
                                   "  Explanation: Dynamo developers have intentionally marked that the function cannot be traced."))
    log += api_server(*traceback_of("KeyboardInterrupt"))
    assert exceptions(log) == [
        "torch._dynamo.exc.Unsupported: Attempted to call function marked as skipped\n"
        "  Explanation: Dynamo developers have intentionally marked that the function cannot be traced.",
        "KeyboardInterrupt"]


def test_a_message_with_a_blank_line_stays_whole_until_the_next_log_line():
    # huggingface_hub/utils/_http.py:890 (GatedRepoError), as huggingface_hub 2.4.0 formats it
    log = api_server(*traceback_of(
        "huggingface_hub.errors.GatedRepoError: 401 Client Error. (Request ID: Root=1-6929;a1b2)",
        "",
        "Cannot access gated repo for url https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct/resolve/main/config.json.",
        "Access to model meta-llama/Llama-3.1-8B-Instruct is restricted. You must have access to it and be authenticated to "
        "access it. Please log in.",
        "",
        "W1130 13:44:17.616000 1 torch/_library/triton.py:53] Triton not available, find_triton_kernels = []"))
    found = exceptions(log)
    assert found == ["huggingface_hub.errors.GatedRepoError: 401 Client Error. (Request ID: Root=1-6929;a1b2)\n\n"
                     "Cannot access gated repo for url https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct/resolve/main/"
                     "config.json.\nAccess to model meta-llama/Llama-3.1-8B-Instruct is restricted. You must have access to "
                     "it and be authenticated to access it. Please log in."]
    assert advice(found) == [
        "Hugging Face refused the download: the model is gated or private. Set vllm_server_hf_token (from Ansible Vault) to "
        "a token of an account that accepted the model's license on its Hugging Face page."]


def test_chained_exceptions_are_each_kept_and_repeats_once():
    log = api_server(*traceback_of("OSError: [Errno 28] No space left on device"))
    log += ["", "The above exception was the direct cause of the following exception:", ""]
    log += api_server(*traceback_of("RuntimeError: Engine core initialization failed. See root cause above."))
    log += api_server(*traceback_of("OSError: [Errno 28] No space left on device"))
    assert exceptions(log) == ["RuntimeError: Engine core initialization failed. See root cause above.",
                               "OSError: [Errno 28] No space left on device"]


# ---- what cannot happen on this machine, as vLLM words it ----------------------------------------------

GPU_FAILURES = [
    # vllm/v1/worker/utils.py:763
    (engine_core("ValueError: Free memory on device cuda:0 (10.21/79.19 GiB) on startup is less than desired GPU memory "
                 "utilization (0.9, 71.27 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes."),
     "Other processes already hold part of the GPU's memory"),
    # vllm/v1/core/kv_cache_utils.py:1024
    (engine_core("ValueError: To serve at least one request with the model's max seq len (131072), (16.0 GiB KV cache is "
                 "needed, which is larger than the available KV cache memory (9.47 GiB). Based on the available memory, the "
                 "estimated maximum model length is 77584. Try increasing `gpu_memory_utilization` (which also controls CPU "
                 "memory reservation on the CPU backend, despite its name) or decreasing `max_model_len` when initializing "
                 "the engine."),
     "The KV cache does not fit next to the weights: lower max_model_len or raise gpu_memory_utilization"),
    # vllm/v1/core/kv_cache_utils.py:1010
    (engine_core("ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when "
                 "initializing the engine (this flag also controls CPU memory reservation on the CPU backend, despite its "
                 "name). See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."),
     "The KV cache does not fit next to the weights"),
    # torch's caching allocator (c10/cuda/CUDACachingAllocator.cpp), raised as torch.OutOfMemoryError
    (engine_core("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.96 GiB. GPU 0 has a total capacity of "
                 "23.55 GiB of which 1.12 GiB is free. Process 2871 has 22.42 GiB memory in use."),
     "The GPU ran out of memory: lower gpu_memory_utilization or max_model_len"),
    # vllm/platforms/cuda.py:648
    (engine_core("ValueError: Bfloat16 is only supported on GPUs with compute capability of at least 8.0. Your Tesla T4 GPU "
                 "has compute capability 7.5. You can use float16 instead by explicitly setting the `dtype` flag in CLI, "
                 "for example: --dtype=half."),
     "The GPU cannot compute in bfloat16 (compute capability below 8.0): set dtype: half in the instance's options."),
    # vllm/model_executor/models/registry.py:1205
    (api_server(*traceback_of("ValueError: Model architectures ['Glm5ForCausalLM'] are not supported for now. Supported "
                              "architectures: dict_keys(['LlamaForCausalLM', 'Qwen2ForCausalLM'])")),
     "This vLLM does not know the model's architecture: use a newer vLLM image (vllm_server_image)"),
    # transformers/dynamic_module_utils.py:749 and :777 (transformers 5.19.0)
    (api_server(*traceback_of("ValueError: The repository org/custom-model contains custom code which must be executed to "
                              "correctly load the model. You can inspect the repository content at https://hf.co/org/custom-model .",
                              " You can inspect the repository content at https://hf.co/org/custom-model.",
                              "Please pass the argument `trust_remote_code=True` to allow custom code to be run.")),
     "The model ships its own code: set trust_remote_code: true in the instance's options if you trust it."),
    # torch/cuda/__init__.py (_lazy_init) in a container without GPUs
    (engine_core("RuntimeError: Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and "
                 "installed a driver from http://www.nvidia.com/Download/index.aspx"),
     "The container sees no usable GPU: check that the nvidia_container_toolkit role ran"),
    # huggingface_hub/utils/_http.py:940 (RepositoryNotFoundError)
    (api_server(*traceback_of("huggingface_hub.errors.RepositoryNotFoundError: 401 Client Error. (Request ID: Root=1-1)",
                              "",
                              "Repository Not Found for url: https://huggingface.co/api/models/org/typo-model/revision/main.")),
     "The model id does not name a model on Hugging Face or a directory inside the container"),
]


@pytest.mark.parametrize("log, expected", GPU_FAILURES, ids=[
    "free-memory", "kv-cache", "no-cache-blocks", "cuda-oom", "bfloat16", "architecture", "remote-code", "no-driver", "not-found"])
def test_failures_that_need_a_gpu_or_the_hub_name_their_variable(log, expected):
    found = exceptions(log)
    assert found, log
    assert any(a.startswith(expected) for a in advice(found)), advice(found)


def test_a_log_without_exceptions_has_no_advice():
    log = ["(APIServer pid=1) INFO 11-30 13:44:21 [api_utils.py:286] non-default args: {'model': 'x'}",
           "(APIServer pid=1) WARNING 11-30 13:44:21 [system_utils.py:255] ... fd limit errors like `OSError: [Errno 24] Too many open files`."]
    assert exceptions(log) == [] and advice([]) == []

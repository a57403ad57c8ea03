"""Why vLLM did not start, from its log: whole exception messages, and the variable that fixes each
common failure (issues 12 and 21).

Logs vLLM 0.32.0 printed here are in tests/unit/fixtures/vllm_startup (SOURCES.md says how each was
made; tests/integration/test_startup_diagnosis.py starts the same servers). Failures that need a GPU
cannot happen here: their messages are written as vLLM 0.32.0's, torch's, NCCL's and
huggingface_hub 2.4.0's sources format them, each citing its source line.
"""

import os

import pytest

from ansible_collections.llmops.vllm.plugins.module_utils._vllm_startup import HangWatch, advice, docker_time, exceptions

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


def test_custom_code_recorded():
    found = exceptions(recorded("remote-code"))
    assert len(found) == 1 and found[0].startswith("pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig")
    assert "The repository /models/remote-code contains custom code which must be executed" in found[0]
    assert "Please pass the argument `trust_remote_code=True` to allow custom code to be run." in found[0]
    assert advice(found) == ["The model ships its own code: set trust_remote_code: true in the instance's options if you trust it."]


def test_unknown_architecture_recorded():
    found = exceptions(recorded("architecture"))
    assert len(found) == 1 and "Value error, Model architectures ['NoSuchForCausalLM'] are not supported for now." in found[0]
    assert advice(found) == [
        "This vLLM does not know the model's architecture: use a newer vLLM image (vllm_server_image), or set "
        "trust_remote_code: true in the instance's options when the model ships its own code."]


def test_gated_repo_recorded():
    found = exceptions(recorded("gated"))
    assert any(e.startswith("huggingface_hub.errors.GatedRepoError: 401 Client Error.\n\nCannot access gated repo for url ") and
               "Access to model llmops-test/tiny-chat is restricted." in e for e in found), found
    assert advice(found) == [
        "Hugging Face refused the download: the model is gated or private. Set vllm_server_hf_token (from Ansible Vault) to a "
        "token of an account that accepted the model's license on its Hugging Face page."]


def test_missing_repo_recorded():
    found = exceptions(recorded("not-found"))
    assert any(e.startswith("huggingface_hub.errors.RepositoryNotFoundError: 401 Client Error.") for e in found), found
    assert any("llmops-test/no-such-model is not a local folder and is not a valid model identifier" in e for e in found), found
    # the Hub's 401 for a repo it does not have is not a gated model's
    assert advice(found) == [
        "The model id does not name a model on Hugging Face or a directory inside the container: check the instance's model "
        "(vllm_server_model); a private model also needs vllm_server_hf_token."]


def test_kv_cache_too_small_recorded():
    found = exceptions(recorded("kv-cache"))
    assert any(e.startswith("ValueError: To serve at least one request with the model's max seq len (2048)") and
               "larger than the available KV cache memory" in e for e in found), found
    assert advice(found) == [
        "The KV cache does not fit next to the weights: lower max_model_len or raise gpu_memory_utilization in the "
        "instance's options (vllm_server_options), or give the instance more GPUs (gpus); on a CPU server raise "
        "VLLM_CPU_KVCACHE_SPACE in its env."]


def test_no_kv_cache_recorded():
    found = exceptions(recorded("no-cache-blocks"))
    assert any(e.startswith("ValueError: No available memory for the cache blocks.") for e in found), found
    assert advice(found)[0].startswith("The KV cache does not fit next to the weights")


def test_cpu_kv_space_larger_than_the_host_recorded():
    found = exceptions(recorded("kv-space"))
    # the worker's ValueError, or the engine's RuntimeError that repeats it (the last three exceptions are kept)
    assert any("Available memory on node 0 (" in e and "requested memory for kv (4096.0 GiB)" in e for e in found), found
    assert advice(found) == [
        "The CPU server's KV cache space is larger than the host's free memory: lower VLLM_CPU_KVCACHE_SPACE (GiB) in the "
        "instance's env (vllm_server_env) or kv_cache_memory_bytes in its options, or free memory on the host."]


def test_quantization_mismatch_recorded():
    found = exceptions(recorded("quantization"))
    assert len(found) == 1 and ("Value error, Quantization method specified in the model config (gptq) does not match the "
                                "quantization method specified in the `quantization` argument (awq).") in found[0]
    assert advice(found) == [
        "The quantization in the instance's options does not match the model or this GPU: leave quantization out for a "
        "pre-quantized model (vLLM reads it from the model's config), or choose a method this GPU supports."]


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
    # vllm/config/device.py:56 (DeviceConfig.__post_init__): no platform detected, as in a GPU image without GPUs
    (api_server(*traceback_of("RuntimeError: Failed to infer device type, please set the environment variable "
                              "`VLLM_LOGGING_LEVEL=DEBUG` to turn on verbose logging to help debug the issue.")),
     "The container sees no usable GPU: check that the nvidia_container_toolkit role ran"),
    # torch's c10/cuda/CUDAFunctions.cpp (the driver's CUDA older than the one torch was built with)
    (engine_core("RuntimeError: The NVIDIA driver on your system is too old (found version 12020). Please update your GPU "
                 "driver by downloading and installing a new version from the URL: http://www.nvidia.com/Download/index.aspx "
                 "Alternatively, go to: https://pytorch.org to install a PyTorch version that has been compiled with your "
                 "version of the CUDA driver."),
     "The host's NVIDIA driver is older than the CUDA that the image was built with"),
    # the CUDA runtime's text of cudaErrorInsufficientDriver (35), as torch raises a CUDA error
    (engine_core("RuntimeError: CUDA error: CUDA driver version is insufficient for CUDA runtime version"),
     "The host's NVIDIA driver is older than the CUDA that the image was built with"),
    # torch's c10/cuda/CUDAFunctions.cpp with the CUDA runtime's cudaErrorSystemDriverMismatch (803)
    (engine_core("RuntimeError: Unexpected error from cudaGetDeviceCount(). Did you run some cuda functions before calling "
                 "NumCudaDevices() that might have already set an error? Error 803: system has unsupported display driver / "
                 "cuda driver combination"),
     "The host's NVIDIA driver is older than the CUDA that the image was built with"),
    # huggingface_hub/utils/_http.py:940 (RepositoryNotFoundError)
    (api_server(*traceback_of("huggingface_hub.errors.RepositoryNotFoundError: 401 Client Error. (Request ID: Root=1-1)",
                              "",
                              "Repository Not Found for url: https://huggingface.co/api/models/org/typo-model/revision/main.")),
     "The model id does not name a model on Hugging Face or a directory inside the container"),
]


@pytest.mark.parametrize("log, expected", GPU_FAILURES, ids=[
    "free-memory", "kv-cache", "no-cache-blocks", "cuda-oom", "bfloat16", "architecture", "remote-code", "no-driver",
    "no-device-type", "driver-too-old", "driver-insufficient", "driver-mismatch", "not-found"])
def test_failures_that_need_a_gpu_or_the_hub_name_their_variable(log, expected):
    found = exceptions(log)
    assert found, log
    assert any(a.startswith(expected) for a in advice(found)), advice(found)


def test_no_gpu_and_an_old_driver_are_told_apart():
    no_gpu = " ".join(advice(exceptions(GPU_FAILURES[8][0])))
    assert "CUDA_VISIBLE_DEVICES or NVIDIA_VISIBLE_DEVICES in vllm_server_env" in no_gpu and "vllm_server_gpus" in no_gpu
    assert "vllm_server_image" not in no_gpu, "a missing GPU is no image's fault"
    for log, dummy in GPU_FAILURES[9:12]:
        old_driver = advice(exceptions(log))
        assert len(old_driver) == 1 and "vllm_server_image" in old_driver[0] and "upgrade the host's driver" in old_driver[0]
        assert "nvidia_container_toolkit" not in old_driver[0]


def test_a_log_without_exceptions_has_no_advice():
    log = ["(APIServer pid=1) INFO 11-30 13:44:21 [api_utils.py:286] non-default args: {'model': 'x'}",
           "(APIServer pid=1) WARNING 11-30 13:44:21 [system_utils.py:255] ... fd limit errors like `OSError: [Errno 24] Too many open files`."]
    assert exceptions(log) == [] and advice([]) == []


# ---- a start that hangs in the GPUs' collective communication (needs several GPUs) ---------------------
#
# Lines as vLLM 0.32.0 logs them with tensor_parallel_size 2, behind `docker logs --timestamps`. The
# sources: vllm/distributed/device_communicators/pynccl.py:148 ("vLLM is using nccl==%s", rank 0,
# right before ncclCommInitRank and the warm-up all-reduce), shm_broadcast.py:109 and :871 (the engine's
# heartbeat while it waits for its workers, every VLLM_RINGBUFFER_WARNING_INTERVAL = 60 s),
# custom_all_reduce.py:286 (vLLM's P2P test failed), and NCCL's "host:pid:tid [rank] NCCL WARN" lines
# (src/debug.cc, printed with NCCL_DEBUG=WARN). Hangs of this kind: vllm-project/vllm#6370, #27313,
# QwenLM/Qwen3-VL#1793 (stuck after "vLLM is using nccl==", NCCL_P2P_DISABLE=1 got it past).

T0 = 1796616000.0   # 2026-12-07T04:00:00Z

NCCL_LINE = "(Worker_TP0 pid=215) INFO 12-07 04:00:25 [pynccl.py:148] vLLM is using nccl==2.28.9"
HEARTBEAT_LINE = ("(EngineCore_DP0 pid=120) INFO 12-07 04:02:00 [shm_broadcast.py:871] No available shared memory broadcast "
                  "block found in 60 seconds. This typically happens when some processes are hanging or doing some "
                  "time-consuming work (e.g. compilation, weight/kv cache quantization).")
P2P_LINE = ("(Worker_TP0 pid=215) WARNING 12-07 04:00:27 [custom_all_reduce.py:286] Custom allreduce is disabled because your "
            "platform lacks GPU P2P capability or P2P test failed. To silence this warning, specify "
            "disable_custom_all_reduce=True explicitly.")
NCCL_WARN_LINE = "gpu-1:215:230 [0] NCCL WARN Cuda failure 'peer access is not supported between these two devices'"


def stamped(*entries):
    """`docker logs --timestamps` lines: (seconds after T0, line) each."""
    import datetime

    out = []
    for offset, line in entries:
        when = datetime.datetime.fromtimestamp(T0 + offset, datetime.timezone.utc)
        out.append(when.strftime("%Y-%m-%dT%H:%M:%S.") + "%09dZ " % (when.microsecond * 1000) + line)
    return out


START = [(1, "(APIServer pid=1) INFO 12-07 04:00:01 [api_server.py:1839] vLLM API server version 0.32.0"),
         (20, "(Worker_TP0 pid=215) INFO 12-07 04:00:20 [parallel_state.py:1906] world_size=2 rank=0 local_rank=0 "
              "distributed_init_method=tcp://127.0.0.1:41721 backend=nccl")]


def test_docker_timestamps_are_read():
    assert docker_time("2026-12-07T04:00:25.123456789Z hello world") == (pytest.approx(T0 + 25.123456789, abs=1e-6), "hello world")
    assert docker_time("hello") == (None, "hello")


def test_silence_after_nccl_starts_is_a_hang_after_three_minutes():
    watch = HangWatch()
    watch.feed(stamped(*START + [(25, NCCL_LINE)]))
    assert watch.hang(T0 + 25 + 179) is None, "NCCL may still be setting up"
    found = watch.hang(T0 + 25 + 181)
    assert found.startswith("vLLM started NCCL 2.28.9 for the instance's GPUs and has logged nothing for 181s since")
    assert "waiting longer will not help" in found


def test_a_start_that_goes_on_after_nccl_is_no_hang():
    watch = HangWatch()
    watch.feed(stamped(*START + [(25, NCCL_LINE), (27, P2P_LINE),
                                 (30, "(Worker_TP0 pid=215) INFO 12-07 04:00:30 [gpu_model_runner.py:4112] Starting to load "
                                      "model org/big-model...")]))
    # ten quiet minutes loading weights from a slow disk: no heartbeat, so not a collective that hangs
    assert watch.hang(T0 + 30 + 1200) is None


def test_heartbeats_after_a_p2p_warning_are_a_hang_after_ten_minutes():
    watch = HangWatch()
    watch.feed(stamped(*START + [(25, NCCL_LINE), (27, P2P_LINE), (28, NCCL_WARN_LINE),
                                 (40, "(Worker_TP0 pid=215) INFO 12-07 04:00:40 [default_loader.py:291] Loading weights "
                                      "took 10.02 seconds")]))
    watch.feed(stamped(*[(40 + 60 * n, HEARTBEAT_LINE) for n in range(1, 10)]))
    assert watch.hang(T0 + 40 + 599) is None
    found = watch.hang(T0 + 40 + 601)
    assert found.startswith("vLLM's engine has waited for its GPU workers with nothing logged for 601s but its 'No available "
                            "shared memory broadcast block found' heartbeat")
    assert ("Custom allreduce is disabled because your platform lacks GPU P2P capability or P2P test failed | "
            "NCCL WARN Cuda failure 'peer access is not supported between these two devices'") in found


def test_heartbeats_without_a_p2p_warning_are_a_long_compilation():
    # vLLM's own words: the heartbeat also comes while workers compile (a big model's torch.compile takes minutes)
    watch = HangWatch()
    watch.feed(stamped(*START + [(25, NCCL_LINE), (40, "(Worker_TP0 pid=215) INFO 12-07 04:00:40 [backends.py:630] Dynamo "
                                                       "bytecode transform time: 12.31 s")]))
    watch.feed(stamped(*[(40 + 60 * n, HEARTBEAT_LINE) for n in range(1, 30)]))
    assert watch.hang(T0 + 40 + 1800) is None


def test_one_gpu_has_no_nccl_and_no_hang():
    watch = HangWatch()
    watch.feed(stamped(*START + [(27, P2P_LINE)] + [(30 + 60 * n, HEARTBEAT_LINE) for n in range(1, 30)]))
    assert watch.hang(T0 + 3600) is None


def test_reads_overlap_and_streams_come_unordered():
    watch = HangWatch()
    first = stamped(*START + [(25, NCCL_LINE)])
    # stderr after stdout, as `docker logs` prints them: order comes from the timestamps
    watch.feed(first[2:] + first[:2])
    assert watch.progress == (pytest.approx(T0 + 25), "vLLM is using nccl==2.28.9")
    assert watch.last_stamp == first[2].split(" ", 1)[0]
    # the next read starts at the last line's timestamp (--since), so it comes again: counted once
    watch.feed(first[2:] + stamped((100, HEARTBEAT_LINE)))
    assert watch.heartbeats == 1 and watch.progress[0] == T0 + 25
    assert watch.hang(T0 + 25 + 181).startswith("vLLM started NCCL 2.28.9")

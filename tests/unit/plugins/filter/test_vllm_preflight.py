"""The vllm_server preflight's checks of secrets and of each model's config.json (issue 12).

GPU facts are those of llmops.vllm.nvidia_gpu_info; the H100 is the recording of the lent H100 that the
fake driver answers from (tests/doubles/nvidia/driver/dataset), the V100 and T4 are the fixtures of
tests/unit/fixtures/nvidia_smi (v100-x2-570, t4-615).
"""

import json

import pytest

from ansible_collections.llmops.vllm.plugins.filter.vllm_preflight import (
    registry_password_problems, vllm_hub_questions, vllm_model_problems, vllm_model_ref, vllm_secret_problems)
from ansible_collections.llmops.vllm.plugins.modules import serving_host_info

H100 = {"index": 0, "uuid": "GPU-h100", "name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559, "memory_used_mib": 0,
        "memory_free_mib": 81079, "compute_capability": "9.0"}
V100S = [{"index": i, "uuid": "GPU-v100-%d" % i, "name": "Tesla V100-SXM2-32GB", "memory_total_mib": 32768,
          "memory_used_mib": 0, "memory_free_mib": 32494, "compute_capability": "7.0"} for i in (0, 1)]

LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_attention_heads": 32, "num_key_value_heads": 8,
         "torch_dtype": "bfloat16", "max_position_embeddings": 8192, "auto_map": False, "rope_scaling": False}
# Qwen2.5-1.5B-Instruct's config.json: 12 heads, 2 KV heads
QWEN = dict(LLAMA, architectures=["Qwen2ForCausalLM"], model_type="qwen2", num_attention_heads=12, num_key_value_heads=2,
            max_position_embeddings=32768)


def instance(name="vllm", model="org/llama", gpus="all", options=None, env=None):
    return {"name": name, "model": model, "gpus": gpus, "options": options or {}, "env": env or {}}


def cached(model="org/llama", config=None, is_cached=True, snapshot="/data/vllm/models/hub/models--org--llama/snapshots/abc"):
    return {"model": model, "revision": "main", "cached": is_cached, "snapshot": snapshot if is_cached else "",
            "weights": is_cached, "config": config if config is not None else (LLAMA if is_cached else {}), "error": ""}


def problems(instances, models, gpus=(), running=()):
    return " ".join(vllm_model_problems(instances, models, "gpu-1", list(gpus), list(running), "/data/vllm/models/hub"))


# ---- secrets ------------------------------------------------------------------------------------

SECRET = "sk-very-secret-0123"


@pytest.mark.parametrize("value", [SECRET + "\n", "\n" + SECRET, " " + SECRET, SECRET + "\r\n", SECRET + "\t"])
def test_a_secret_with_surrounding_whitespace_is_refused_by_name(value):
    found = vllm_secret_problems({"vllm_server_api_key": value, "vllm_server_hf_token": "hf_fine"})
    assert len(found) == 1
    assert found[0].startswith("vllm_server_api_key has whitespace at its start or end (a trailing newline")
    assert "secret" not in found[0] and "0123" not in found[0]


@pytest.mark.parametrize("value", ["sk-line\nbreak", "hf_ключ", "hf_tab\tinside", "sk-bell\x07"])
def test_a_secret_no_client_can_send_is_refused_by_name(value):
    found = vllm_secret_problems({"vllm_server_hf_token": value})
    assert found == [found[0]] and found[0].startswith("vllm_server_hf_token holds a line break, another control character")
    assert value not in found[0] and value[3:] not in found[0]


@pytest.mark.parametrize("value", ['sk-"quoted"', "sk-'single'", "sk-$(touch /tmp/x)", "sk-back\\slash", "sk-`id`;&|<>", "", None])
def test_printable_ascii_secrets_pass(value):
    assert vllm_secret_problems({"vllm_server_api_key": value}) == []


def test_a_registry_password_with_a_trailing_newline_names_the_login_only():
    found = registry_password_problems([
        {"registry": "reg.example.com", "username": "ci", "password": "pass word"},  # a space inside is a password
        {"registry": "llmops-auth-registry:5000", "username": "llmops", "password": "s3cret-pw\n"},
    ])
    assert found == ["docker_registry_logins[1] (llmops@llmops-auth-registry:5000): the password has whitespace at its "
                     "start or end (a trailing newline from a file or a | block scalar?), which docker login would send "
                     "as part of it. Remove it (| trim, or a |- block scalar). The password is not shown."]


# ---- the model's config.json -----------------------------------------------------------------------


def test_a_model_that_fits_its_instance_passes():
    assert problems([instance(options={"tensor_parallel_size": 2})], [cached()], V100S) == ""


def test_heads_that_do_not_divide_by_tensor_parallel_size():
    text = problems([instance(model="Qwen/Qwen2.5-1.5B-Instruct", gpus=[0, 1, 2, 3, 4, 5, 6, 7][:8],
                              options={"tensor_parallel_size": 8})], [cached("Qwen/Qwen2.5-1.5B-Instruct", QWEN)])
    assert text == ("Instance vllm on gpu-1: Qwen/Qwen2.5-1.5B-Instruct has 12 attention heads, which do not divide evenly "
                    "by tensor_parallel_size 8, so vLLM refuses to start. Give the instance a number of GPUs that divides "
                    "12 (gpus; tensor_parallel_size follows from them), or set tensor_parallel_size (or "
                    "pipeline_parallel_size) in its options.")


def test_offline_without_the_model_in_the_cache():
    text = problems([instance(env={"HF_HUB_OFFLINE": "1"})], [cached(is_cached=False)])
    assert text.startswith("Instance vllm on gpu-1 runs offline (HF_HUB_OFFLINE in its env), but its model org/llama is "
                           "not in the host's model cache (/data/vllm/models/hub/models--org--llama), so vLLM cannot load it.")
    assert "remove HF_HUB_OFFLINE from the instance's env (vllm_server_env or its env)" in text
    assert problems([instance(env={"HF_HUB_OFFLINE": "0"})], [cached(is_cached=False)]) == ""
    assert problems([instance(env={"HF_HUB_OFFLINE": "1"})], [cached()]) == ""
    # fetched on the control node and copied in before the server starts
    assert vllm_model_problems([instance(env={"HF_HUB_OFFLINE": "1"})], [cached(is_cached=False)], "gpu-1",
                               delivered=["vllm"]) == []


def test_a_model_path_inside_the_container_is_not_looked_up():
    assert vllm_model_ref({"model": "/models/mine"}) == {"model": "/models/mine", "revision": "main"}
    assert problems([instance(model="/models/mine", env={"HF_HUB_OFFLINE": "1"})], []) == ""


def test_auto_map_needs_an_explicit_trust_remote_code():
    custom = dict(LLAMA, auto_map=True)
    text = problems([instance()], [cached(config=custom)])
    assert text == ("Instance vllm on gpu-1: org/llama ships its own code (auto_map in its config.json), which vLLM runs "
                    "only with trust_remote_code. Set trust_remote_code: true in the instance's options if you trust the "
                    "model's code, or trust_remote_code: false to serve it with the implementation built into vLLM and "
                    "transformers.")
    assert problems([instance(options={"trust_remote_code": True})], [cached(config=custom)]) == ""
    assert problems([instance(options={"trust-remote-code": False})], [cached(config=custom)]) == ""


def test_explicit_bfloat16_on_a_v100():
    text = problems([instance(gpus=[1], options={"dtype": "bfloat16"})], [cached()], V100S)
    assert text.startswith("Instance vllm on gpu-1: dtype bfloat16 needs GPUs of compute capability 8.0 or newer, but GPU 1 "
                           "(Tesla V100-SXM2-32GB) has 7.0, so vLLM refuses to start. Set dtype: half in the instance's options")
    # dtype auto: vLLM 0.32.0 falls back to float16 by itself (config/model.py _resolve_auto_dtype)
    assert problems([instance(gpus=[1])], [cached()], V100S) == ""
    assert problems([instance(gpus=[0], options={"dtype": "bfloat16"})], [cached()], [H100]) == ""


def test_max_model_len_longer_than_the_model():
    text = problems([instance(options={"max_model_len": 16384})], [cached()])
    assert text == ("Instance vllm on gpu-1: max_model_len 16384 is longer than org/llama's context (max_position_embeddings "
                    "8192 in its config.json), so vLLM refuses to start. Lower max_model_len in the instance's options "
                    "(vllm_server_options) to at most 8192, or leave it out to use the model's own.")
    assert problems([instance(options={"max_model_len": 8192})], [cached()]) == ""
    assert problems([instance(options={"max_model_len": 16384})], [cached(config=dict(LLAMA, rope_scaling=True))]) == ""
    assert problems([instance(options={"max_model_len": 16384}, env={"VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"})], [cached()]) == ""


def test_instances_sharing_a_gpu_past_its_memory():
    text = problems([instance("a", gpus=[0]), instance("b", gpus="all", options={"gpu_memory_utilization": 0.5})],
                    [cached()], [H100])
    assert text == ("gpu-1: instances a, b share GPU 0, and their gpu_memory_utilization adds up to 1.4 (a 0.9 + b 0.5), "
                    "more than the whole GPU: the one that starts last fails. Lower gpu_memory_utilization in their "
                    "options so that it adds up to at most 1.0, or give each its own GPUs (gpus).")
    assert problems([instance("a", gpus=[0], options={"gpu_memory_utilization": 0.45}),
                     instance("b", gpus=[0], options={"gpu_memory_utilization": 0.5})], [cached()], [H100]) == ""


def test_more_than_the_gpu_has_free_now():
    busy = dict(H100, memory_used_mib=40000, memory_free_mib=41079)
    text = problems([instance(gpus=[0])], [cached()], [busy])
    assert text == ("gpu-1: vllm asks for 71.7 GiB of GPU 0 (gpu_memory_utilization 0.9 of 79.6 GiB), but only 40.1 GiB are "
                    "free now: other processes use the rest (nvidia-smi lists them), and vLLM refuses to start. Lower "
                    "gpu_memory_utilization in the instance's options to at most 0.5, or free the GPU.")
    # its own running container holds that memory: not counted twice on a second run
    assert problems([instance(gpus=[0])], [cached()], [busy], running=["vllm"]) == ""


def test_cpu_hosts_have_no_gpu_checks():
    assert problems([instance(gpus="none", options={"dtype": "bfloat16"})], [cached()], []) == ""


# ---- serving_host_info reads the cache as huggingface_hub lays it out -----------------------------


def seed(tmp_path, config, weights=True, revision="main", commit="0123abcd"):
    repo = tmp_path / "models--org--llama"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / revision).write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(config))
    if weights:
        (snapshot / "model.safetensors").write_text("x")
    return snapshot


def test_the_cached_config_is_read_through_refs(tmp_path):
    snapshot = seed(tmp_path, {"architectures": ["X"], "model_type": "x", "num_attention_heads": 12, "dtype": "bfloat16",
                               "auto_map": {"AutoConfig": "configuration_x.XConfig"}, "max_position_embeddings": 4096,
                               "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    entry = serving_host_info.cached_model(str(tmp_path), "org/llama")
    assert entry["cached"] is True and entry["snapshot"] == str(snapshot) and entry["weights"] is True
    assert entry["config"] == {"architectures": ["X"], "model_type": "x", "num_attention_heads": 12, "torch_dtype": "bfloat16",
                               "auto_map": True, "max_position_embeddings": 4096, "rope_scaling": True, "quantization": ""}
    assert entry["weights_bytes"] == 1


def test_a_multimodal_config_gives_its_text_models_numbers(tmp_path):
    seed(tmp_path, {"architectures": ["Mistral3ForConditionalGeneration"], "model_type": "mistral3",
                    "text_config": {"num_attention_heads": 32, "max_position_embeddings": 131072, "torch_dtype": "bfloat16"}})
    config = serving_host_info.cached_model(str(tmp_path), "org/llama")["config"]
    assert config["num_attention_heads"] == 32 and config["max_position_embeddings"] == 131072
    assert config["model_type"] == "mistral3"


def test_a_model_without_weights_or_absent_is_not_cached(tmp_path):
    seed(tmp_path, {"num_attention_heads": 8}, weights=False)
    assert serving_host_info.cached_model(str(tmp_path), "org/llama")["cached"] is False
    absent = serving_host_info.cached_model(str(tmp_path), "org/other")
    assert absent["cached"] is False and absent["snapshot"] == "" and absent["config"] == {}
    assert serving_host_info.cached_model(str(tmp_path), "org/llama", revision="v2")["cached"] is False


def test_the_weights_are_the_safetensors_index_total_when_there_is_one(tmp_path):
    snapshot = seed(tmp_path, {"num_attention_heads": 8, "quantization_config": {"quant_method": "awq", "bits": 4}})
    (snapshot / "model-00001-of-00002.safetensors").write_text("x" * 10)
    (snapshot / "pytorch_model.bin").write_text("x" * 1000)  # vLLM loads the safetensors, not this
    entry = serving_host_info.cached_model(str(tmp_path), "org/llama")
    assert entry["weights_bytes"] == 11
    assert entry["config"]["quantization"] == "awq"
    (snapshot / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 16060522496}, "weight_map": {}}))
    assert serving_host_info.cached_model(str(tmp_path), "org/llama")["weights_bytes"] == 16060522496


# ---- a first deploy: the hub's answers for models no host has cached yet (hf_model_config) ------------

def answer(model="org/llama", problem="", config=None, status=0, error="", token=False, revision="main"):
    return {"model": model, "revision": revision, "commit": "c0ffee" if not problem else "", "config": config or {},
            "weights_bytes": 0, "problem": problem, "status": status, "error": error, "endpoint": "http://hub.test",
            "token": token}


def test_the_hub_is_asked_only_about_models_no_cache_holds_and_that_are_not_offline():
    instances = [instance(name="a", model="org/llama"), instance(name="b", model="org/new"),
                 instance(name="c", model="org/new"), instance(name="d", model="org/offline", env={"HF_HUB_OFFLINE": "1"}),
                 dict(instance(name="e", model="org/new"), revision="v2")]
    models = [cached(), cached(model="org/new", is_cached=False), cached(model="org/offline", is_cached=False)]
    assert vllm_hub_questions(instances, models) == [{"model": "org/new", "revision": "main"},
                                                     {"model": "org/new", "revision": "v2"}]
    # an offline server whose model the role downloads first (on the control node or the host) is asked about
    downloaded = dict(instance(name="f", model="org/offline", env={"HF_HUB_OFFLINE": "1"}), download=True)
    assert vllm_hub_questions([downloaded], models) == [{"model": "org/offline", "revision": "main"}]
    assert vllm_hub_questions([dict(downloaded, download=False)], models) == []
    # a local path is not in serving_host_info's models, so it is never asked about
    assert vllm_hub_questions([instance(model="/models/llama")], []) == []


def refusal(answer_, **instance_args):
    inst = instance(**dict(dict(gpus="none"), **instance_args))
    return " ".join(vllm_model_problems([inst], [cached(model=inst["model"], is_cached=False)], "gpu-1", [], [],
                                        "/data/vllm/models/hub", [], [answer_]))


def test_a_gated_model_without_a_token_is_refused_naming_the_token_variable():
    text = refusal(answer(problem="gated", status=401, error="Access to model org/llama is restricted. Please log in."))
    assert text.startswith("Instance vllm on gpu-1: org/llama is gated on Hugging Face and no token was given")
    assert "set vllm_server_hf_token (from Ansible Vault)" in text
    assert '"Access to model org/llama is restricted. Please log in."' in text and "HTTP 401" in text


def test_a_token_without_access_to_a_gated_model_is_told_apart():
    text = refusal(answer(problem="gated", status=403, token=True, error="not in the authorized list"))
    assert "vllm_server_hf_token has no access to it" in text and "HTTP 403" in text


def test_a_missing_model_or_revision_names_the_instance_field():
    text = refusal(answer(problem="not_found", status=404, error="Repository not found"))
    assert "model org/llama was not found on http://hub.test" in text and "vllm_server_instances[vllm].model" in text
    inst = dict(instance(gpus="none"), revision="v9")
    text = " ".join(vllm_model_problems([inst], [dict(cached(is_cached=False), revision="v9")], "gpu-1", [], [], "", [],
                                        [answer(problem="revision", status=404, error="Revision not found", revision="v9")]))
    assert "org/llama has no revision v9 on http://hub.test" in text and "vllm_server_instances[vllm].revision" in text


def test_a_rejected_token_is_named():
    assert "http://hub.test rejected vllm_server_hf_token" in refusal(answer(problem="token_rejected", status=401))


def test_an_unreachable_hub_refuses_nothing():
    assert refusal(answer(problem="unreachable", error="connection refused")) == ""
    assert refusal(answer(problem="unavailable", error="huggingface_hub is not installed")) == ""


def test_the_hubs_config_is_judged_as_a_cached_one_is():
    heads = refusal(answer(config=dict(LLAMA, num_attention_heads=2)), options={"tensor_parallel_size": 3})
    assert "org/llama has 2 attention heads, which do not divide evenly by tensor_parallel_size 3" in heads
    code = refusal(answer(config=dict(LLAMA, auto_map=True)))
    assert "ships its own code (auto_map in its config.json)" in code and "trust_remote_code" in code
    assert refusal(answer(config=dict(LLAMA, auto_map=True)), options={"trust_remote_code": True}) == ""
    longer = refusal(answer(config=LLAMA), options={"max_model_len": 16384})
    assert "max_model_len 16384 is longer than org/llama's context (max_position_embeddings 8192" in longer
    # an answer for another revision is not this instance's
    assert refusal(dict(answer(config=dict(LLAMA, auto_map=True)), revision="v2")) == ""


def test_a_cached_model_is_never_judged_by_the_hub():
    inst = instance(gpus="none")
    assert vllm_model_problems([inst], [cached()], "gpu-1", [], [], "", [], [answer(problem="gated", status=401)]) == []

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.llmops.vllm.plugins.filter.vllm_images import vllm_image_version, vllm_pick_option_spec
from ansible_collections.llmops.vllm.plugins.filter.vllm_instances import vllm_resolve_instances
from ansible_collections.llmops.vllm.plugins.filter.vllm_state import vllm_instance_state
from ansible_collections.llmops.vllm.plugins.filter.vllm_fit import vllm_fit_problem, vllm_parameter_count

DEFAULTS = {"served_model_name": "", "port": 8000, "bind_address": "0.0.0.0", "gpus": "all", "options": {},
            "env": {}, "image": "vllm/vllm-openai:v0.32.0", "download": False}


def resolve(instances, gpus=None):
    return vllm_resolve_instances(instances, DEFAULTS, gpus)


def test_defaults_fill_in_and_names_follow():
    (i,) = resolve([{"name": "llama", "model": "meta-llama/Meta-Llama-3-8B-Instruct", "port": "8001"}])
    assert i["served_model_name"] == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert i["port"] == 8001 and i["image"] == "vllm/vllm-openai:v0.32.0"
    assert (i["config_file"], i["secrets_file"], i["logging_file"]) == ("llama.yaml", "llama.env", "llama.logging.json")
    assert i["cache_volume"] == "llama-vllm-cache"
    assert i["local_url"] == "http://127.0.0.1:8001" and i["loopback_only"] is False
    assert list(i["config"]) == ["served-model-name"]


def test_an_address_is_used_as_given():
    (i,) = resolve([{"name": "a", "model": "m", "bind_address": "127.0.0.1"}])
    assert i["local_url"] == "http://127.0.0.1:8000" and i["loopback_only"] is True
    (i,) = resolve([{"name": "a", "model": "m", "bind_address": "10.1.2.3"}])
    assert i["local_url"] == "http://10.1.2.3:8000" and i["loopback_only"] is False


@pytest.mark.parametrize("gpus, host_gpus, expected", [
    ([0, 1], None, 2), ("all", 4, 4), (2, None, 2), ([3], None, None), ("all", None, None), ("none", 8, None),
])
def test_tensor_parallel_size_follows_the_gpus(gpus, host_gpus, expected):
    (i,) = resolve([{"name": "a", "model": "m", "gpus": gpus}], host_gpus)
    assert i["options"].get("tensor_parallel_size") == expected
    if expected:
        assert i["config"]["tensor-parallel-size"] == expected


def test_a_given_parallelism_is_kept():
    (i,) = resolve([{"name": "a", "model": "m", "gpus": [0, 1, 2, 3], "options": {"pipeline-parallel-size": 4}}])
    assert "tensor_parallel_size" not in i["options"]
    (i,) = resolve([{"name": "a", "model": "m", "gpus": [0, 1], "options": {"tensor_parallel_size": 1}}])
    assert i["options"]["tensor_parallel_size"] == 1


def test_instances_must_be_a_list_of_dicts():
    with pytest.raises(AnsibleFilterError):
        resolve({"name": "a"})
    with pytest.raises(AnsibleFilterError):
        resolve(["a"])


@pytest.mark.parametrize("text, count", [(8e9, 8e9), ("8B", 8e9), ("1.5b", 1.5e9), ("560M", 5.6e8), ("70000000000", 7e10), ("", None)])
def test_parameter_counts(text, count):
    assert vllm_parameter_count(text) == count


def test_fit_check_refuses_a_model_too_big_for_its_gpus():
    llama70 = {"name": "llama70", "parameters": "70B", "options": {"dtype": "bfloat16"}}
    problem = vllm_fit_problem(llama70, [81559])
    assert problem.startswith("llama70 needs about 130.4 GiB of weights per GPU (an estimate from 70B parameters at 2 bytes")
    assert "offers 71.7 GiB at gpu_memory_utilization 0.9" in problem and "more GPUs" in problem
    assert vllm_fit_problem(dict(llama70, options={"tensor_parallel_size": 2}), [81559, 81559]) == ""
    assert vllm_fit_problem(dict(llama70, options={"quantization": "awq"}), [81559]) == ""


def test_fit_check_measures_files_and_skips_the_unknown():
    assert vllm_fit_problem({"name": "m"}, [24576], file_bytes=30 * 1024 ** 3).startswith("m needs about 30.0 GiB")
    assert vllm_fit_problem({"name": "m"}, [24576]) == "", "unknown size: nothing to say"
    assert vllm_fit_problem({"name": "m", "parameters": "8B"}, []) == "", "no GPUs known: nothing to say"


@pytest.mark.parametrize("image, version", [
    ("vllm/vllm-openai:v0.32.0", "0.32.0"), ("vllm/vllm-openai-cpu:v0.31.0-x86_64", "0.31.0"),
    ("registry.local:5000/vllm/vllm-openai:v0.33.1-cu129", "0.33.1"), ("vllm/vllm-openai@sha256:abc", None),
])
def test_image_versions(image, version):
    assert vllm_image_version(image) == version


def test_option_data_is_picked_by_version():
    known = ["0.30.0", "0.32.0"]
    assert vllm_pick_option_spec(known, "vllm/vllm-openai:v0.32.0") == "0.32.0"
    assert vllm_pick_option_spec(known, "vllm/vllm-openai:v0.31.0") == "0.30.0"
    assert vllm_pick_option_spec(known, "vllm/vllm-openai:v0.29.0") == "0.30.0"
    assert vllm_pick_option_spec(known, "vllm/vllm-openai:v0.40.0") == "0.32.0"
    assert vllm_pick_option_spec(known, "my/image@sha256:abc") == "0.32.0"


def test_state_keeps_what_recreates_an_instance_and_no_secret():
    (i,) = resolve([{"name": "a", "model": "m", "port": 8001}])
    state = vllm_instance_state([dict(i, api_key="secret")])
    assert state == [{"name": "a", "model": "m", "served_model_name": "m", "port": 8001, "bind_address": "0.0.0.0",
                      "gpus": "all", "options": {}, "env": {}, "image": "vllm/vllm-openai:v0.32.0", "download": False}]

"""The option check of vllm_server, against the option data of the vLLM release the role ships.
(The sentences below quote that release's options.)"""

import os

import pytest
import yaml

from ansible_collections.llmops.vllm.plugins.filter.vllm_options import vllm_option_problems

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
with open(os.path.join(ROOT, "roles", "vllm_server", "defaults", "main.yml")) as f:
    VERSION = yaml.safe_load(f)["vllm_server_version"]
with open(os.path.join(ROOT, "roles", "vllm_server", "files", "vllm_serve_options", "%s.yml" % VERSION)) as f:
    SPEC = yaml.safe_load(f)
with open(os.path.join(ROOT, "roles", "vllm_server", "vars", "main.yml")) as f:
    ADVICE = yaml.safe_load(f)["_vllm_server_option_advice"]


def problems(options):
    return vllm_option_problems(options, SPEC, ADVICE)


def test_valid_options_pass():
    assert problems({
        "max_num_seqs": 32, "gpu_memory_utilization": 0.9, "max_model_len": 8192, "dtype": "bfloat16",
        "quantization": "awq", "tensor_parallel_size": 2, "enable_prefix_caching": False, "enforce-eager": True,
        "override_generation_config": {"temperature": 0.7}, "generation_config": "vllm", "trust_remote_code": True,
    }) == []


@pytest.mark.parametrize("option, expected", [
    ("max_batch_size", "the number of sequences batched together is max_num_seqs"),
    ("max-batch-size", "max_num_seqs"),
    ("temperature", "override_generation_config: {temperature: 0.7}"),
    ("log_file", "it logs to stdout"),
    ("load_8bit", "set quantization to a method of vLLM's, such as fp8. Methods: auto_awq, auto_gptq, awq"),
    ("load_4bit", "Methods: auto_awq"),
])
def test_the_tutorials_mistakes_name_the_right_option(option, expected):
    (problem,) = problems({option: 1})
    assert problem.startswith(option + ":") and expected in problem


def test_unknown_options_get_the_closest_valid_name():
    (problem,) = problems({"max_num_seq": 8})
    assert problem.startswith("max_num_seq is not an option of vLLM %s's server. Did you mean max_num_seqs (--max-num-seqs)" % VERSION)
    (problem,) = problems({"gpu_mem_utilization": 0.9})
    assert "gpu_memory_utilization (--gpu-memory-utilization)" in problem


def test_unknown_option_without_any_close_name():
    assert problems({"frobnicate_the_widgets": 1}) == ["frobnicate_the_widgets is not an option of vLLM %s's server." % VERSION]


@pytest.mark.parametrize("option", ["port", "host", "model", "served_model_name", "api_key", "hf_token", "config"])
def test_options_the_role_sets_itself_are_refused(option):
    (problem,) = problems({option: "x"})
    assert "set it through" in problem


def test_choices_flags_and_quantization_methods():
    assert problems({"dtype": "fp16"}) == ["dtype: 'fp16' is not one of auto, bfloat16, float, float16, float32, half."]
    assert problems({"enforce_eager": "yes"}) == ["enforce_eager is a flag of vLLM: give true or false, not 'yes'."]
    (problem,) = problems({"quantization": "bitsandbytes"})
    assert "'bitsandbytes' is not a quantization method of vLLM %s" % VERSION in problem


def test_dotted_options_check_their_base_name():
    assert problems({"compilation_config.level": 3}) == []
    assert problems({"compilaton_config.level": 3})[0].startswith("compilaton_config.level is not an option")


def test_the_data_names_its_vllm_version():
    assert SPEC["vllm_version"] == VERSION
    assert "max-num-seqs" in SPEC["options"] and SPEC["options"]["enable-prefix-caching"]["negatable"] is True

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.llmops.vllm.plugins.filter.vllm_instances import vllm_device_requests, vllm_gpu_count
from ansible_collections.llmops.vllm.plugins.filter.vllm_options import vllm_config

GPU = [["gpu"]]


@pytest.mark.parametrize(
    "gpus, expected",
    [
        ("all", [{"driver": "nvidia", "count": -1, "capabilities": GPU}]),
        (2, [{"driver": "nvidia", "count": 2, "capabilities": GPU}]),
        ("2", [{"driver": "nvidia", "count": 2, "capabilities": GPU}]),
        ([0, 1], [{"driver": "nvidia", "device_ids": ["0", "1"], "capabilities": GPU}]),
        ("0,1", [{"driver": "nvidia", "device_ids": ["0", "1"], "capabilities": GPU}]),
        (["GPU-4f1c"], [{"driver": "nvidia", "device_ids": ["GPU-4f1c"], "capabilities": GPU}]),
        ("none", []),
        ([], []),
        (0, []),
        (None, []),
    ],
)
def test_device_requests_match_docker_run_gpus(gpus, expected):
    assert vllm_device_requests(gpus) == expected


def test_device_requests_refuse_booleans():
    with pytest.raises(AnsibleFilterError, match="GPU selection"):
        vllm_device_requests(True)


def test_gpu_count():
    assert vllm_gpu_count([0, 1, 2]) == 3
    assert vllm_gpu_count("all", 8) == 8
    assert vllm_gpu_count("all") == -1
    assert vllm_gpu_count("none") == 0


def test_config_uses_long_option_names_and_json_for_dicts():
    rendered = vllm_config(
        {
            "max_num_seqs": 32,
            "enable-prefix-caching": True,
            "override_generation_config": {"temperature": 0.7, "top_p": 0.9},
            "quantization": None,
        }
    )
    assert rendered == {
        "max-num-seqs": 32,
        "enable-prefix-caching": True,
        "override-generation-config": '{"temperature": 0.7, "top_p": 0.9}',
    }


def test_config_refuses_a_list():
    with pytest.raises(AnsibleFilterError, match="dictionary"):
        vllm_config(["max_num_seqs"])

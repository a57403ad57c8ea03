"""A catalogue of wrong input: every case stops site.yml with a message a person can act on, and
leaves the bare host exactly as it was (no package installed, no file written)."""

import pytest

from llmops_testlib import run_playbook

TINY = {"name": "vllm", "model": "llmops-test/tiny-chat", "served_model_name": "tiny-chat", "port": 8000}

CASES = [
    ("tutorial max-batch-size", {"vllm_server_options": {"max_batch_size": 32}},
     "max_batch_size: vLLM has no max_batch_size: the number of sequences batched together is max_num_seqs"),
    ("tutorial temperature", {"vllm_server_options": {"temperature": 0.7}},
     "temperature is a request parameter, not a server option"),
    ("tutorial log-file", {"vllm_server_options": {"log_file": "/var/log/vllm/vllm.log"}},
     "vLLM has no log_file option: it logs to stdout"),
    ("tutorial load-8bit", {"vllm_server_options": {"load_8bit": True}},
     "vLLM has no load_8bit: serve a pre-quantized 8-bit model"),
    ("misspelt option", {"vllm_server_options": {"gpu_memory_utilisation": 0.9}},
     "Did you mean gpu_memory_utilization (--gpu-memory-utilization)"),
    ("value outside the choices", {"vllm_server_options": {"dtype": "fp16"}},
     "dtype: 'fp16' is not one of auto, bfloat16, float, float16, float32, half."),
    ("an option the role sets", {"vllm_server_options": {"port": 9000}},
     "port: set it through the instance's port"),
    ("latest image", {"vllm_server_image": "vllm/vllm-openai-cpu:latest"},
     "Instance vllm on llmops-bad-input: the image must name a pinned tag or digest, not latest (it is vllm/vllm-openai-cpu:latest)"),
    ("two instances on one port", {"vllm_server_instances": [TINY, dict(TINY, name="vllm-2")]},
     "no two sharing a name or a port"),
    ("instance without a model", {"vllm_server_instances": [{"name": "vllm"}]},
     "each a dictionary with a name and a model"),
    ("open port without an API key", {"vllm_server_api_key": ""},
     "without an API key: anyone who reaches the port could use"),
    ("GPUs on a CPU-only host", {"vllm_server_instances": [dict(TINY, gpus=[0])]},
     "is marked CPU-only (llmops_cpu_only / vllm_server_cpu_only), but vllm asks for GPUs"),
    ("unknown mode", {"vllm_server_mode": "swarm"},
     "vllm_server_mode must be container or compose (it is swarm)"),
    ("mirror with a path", {"docker_registry_mirrors": ["https://mirror.example.com/v2/"]},
     "llmops-bad-input: docker_registry_mirrors must be null or a list of http(s)://host[:port] URLs with no path "
     "(it is ['https://mirror.example.com/v2/'])"),
]


def host_state(host):
    """What the play could change: installed packages, /etc/docker, /data, running units."""
    return (
        host.check_output("dpkg-query -W -f '${Package} ${Version}\\n' | sort"),
        host.run("ls -laR /etc/docker /data").stdout,
        host.check_output("systemctl list-units --type=service --state=running --no-legend --plain | sort"),
    )


@pytest.mark.parametrize("extra_vars, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_stops_before_anything_changes(host, extra_vars, expected):
    before = host_state(host)
    result = run_playbook("site.yml", extra_vars)
    assert result.returncode != 0
    assert expected in " ".join(result.output.split()), result.output[-3000:]
    assert "llmops-bad-input" in result.output
    # the message names what is wrong, not every rule of the role
    assert "docker_install_source must be" not in result.output
    assert host_state(host) == before, "the failed run changed the host"


def test_the_host_is_bare(host):
    assert host.run("dpkg-query -W docker.io").rc != 0
    assert not host.file("/data").exists

"""The preflight role's failures, each with what to do, before anything changes (runs on the converged gpu-host)."""

import json
import os

import pytest
from llmops_daemon import run_molecule_playbook
from llmops_testlib import VLLM_VERSION
from test_gpu_host import FAKE_GPUS

DRIVER = FAKE_GPUS[0]["driver_version"]
NAMES = ", ".join(sorted(set(gpu["name"] for gpu in FAKE_GPUS), key=[gpu["name"] for gpu in FAKE_GPUS].index))
PLAYBOOK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "preflight.yml")
TINY = "llmops-test/tiny:bookworm"


def preflight(**variables):
    """Run the preflight role; return its exit code and its output with the callback's line wrapping undone."""
    rc, output = run_molecule_playbook(PLAYBOOK, "-e", json.dumps(variables))
    return rc, " ".join(output.split())


def test_the_converged_host_passes():
    rc, output = preflight()
    assert rc == 0, output[-3000:]
    assert "%d GPU(s) (%s), driver %s" % (len(FAKE_GPUS), NAMES, DRIVER) in output
    assert "needs CUDA 13.0, driver 580 or newer" in output


def test_the_cuda_version_comes_from_the_image_tag():
    rc, output = preflight(preflight_image="vllm/vllm-openai:v%s-cu129" % VLLM_VERSION)
    assert rc == 0, output[-3000:]
    assert "needs CUDA 12.9, driver 525 or newer" in output


def test_a_driver_too_old_for_the_image_stops_the_play():
    rc, output = preflight(preflight_cuda_min_driver={"13": "999"})
    assert rc != 0
    assert "llmops-gpu-host runs NVIDIA driver %s, too old for vllm/vllm-openai:v%s" % (DRIVER, VLLM_VERSION) in output
    assert "CUDA 13.0 needs driver 999" in output and "Upgrade the driver" in output


def test_no_working_driver_stops_the_play_and_names_the_cause(host):
    host.check_output("mv /usr/share/llmops-nvidia-double/query.csv /usr/share/llmops-nvidia-double/query.csv.away")
    try:
        rc, output = preflight()
    finally:
        host.check_output("mv /usr/share/llmops-nvidia-double/query.csv.away /usr/share/llmops-nvidia-double/query.csv")
    assert rc != 0
    assert "llmops-gpu-host has no usable NVIDIA GPU" in output
    assert "couldn't communicate with the NVIDIA driver" in output and "Install the driver" in output
    assert "llmops_cpu_only: true" in output


def test_not_enough_disk_names_the_file_system_and_what_needs_it():
    rc, output = preflight(preflight_model_space_gb=1000000)
    assert rc != 0
    assert "GiB free, and needs" in output and "the models (/data/vllm/models" in output
    assert "preflight_model_space_gb" in output


@pytest.fixture
def squatter(host):
    host.run("docker rm -f llmops-squatter")
    host.check_output("docker run -d --name llmops-squatter -p 8000:8080 %s sleep 600", TINY)
    yield "llmops-squatter"
    host.run("docker rm -f llmops-squatter")


def test_a_port_held_by_another_container_stops_the_play(squatter):
    rc, output = preflight(preflight_ports=[{"port": 8000, "container": "vllm"}])
    assert rc != 0
    assert "port 8000, which the vLLM container vllm is to publish, is held by the container(s) llmops-squatter" in output
    assert "give the vLLM instance another port" in output


def test_a_port_held_by_its_own_container_passes(squatter):
    rc, output = preflight(preflight_ports=[{"port": 8000, "container": squatter}])
    assert rc == 0, output[-3000:]


def test_a_port_held_by_a_process_names_it(host):
    pid = host.check_output("nohup python3 -c 'import socket,time; s=socket.socket(); s.bind((\"0.0.0.0\", 8001)); s.listen(); "
                            "time.sleep(600)' >/dev/null 2>&1 & echo $!")
    try:
        assert host.run("for i in $(seq 50); do ss -Hltn 'sport = :8001' | grep -q . && exit 0; sleep 0.1; done; exit 1").rc == 0
        rc, output = preflight(preflight_ports=[{"port": 8001, "container": "vllm"}])
    finally:
        host.run("kill %s", pid)
    assert rc != 0
    assert "port 8001" in output and "python3 (pid %s)" % pid in output

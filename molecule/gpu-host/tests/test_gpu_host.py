"""gpu-host: Docker and the NVIDIA Container Toolkit from (double) repositories, wired as NVIDIA documents."""

import csv
import json
import os
import re

import pytest
from llmops_daemon import daemon_json, docker_info, run_molecule_playbook_in_check_mode

SCENARIO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "llmops-test/tiny:bookworm"
PRIVATE = "llmops-auth-registry:5000"
PASSWORD = "i4-registry-pass-7Qw"  # what group_vars/gpu_hosts/vault.yml holds; a test secret
# The GPUs the fake driver reports: its recorded dataset, read here on its own (not with the
# collection's parser, which the tests must not trust to check itself).
with open(os.path.join(SCENARIO, "..", "..", "tests", "doubles", "nvidia", "driver", "dataset", "query.csv")) as f:
    _rows = list(csv.reader(f.read().splitlines(), skipinitialspace=True))
FAKE_GPUS = [dict(zip([h.split(" [")[0] for h in _rows[0]], row)) for row in _rows[1:]]
HOST_UUIDS = [gpu["uuid"] for gpu in FAKE_GPUS]


def package(host, name):
    return host.check_output("dpkg-query -W -f '${Version} ${Status}' %s", name)


# --- Docker from Docker's repository (a mirror of it) --------------------------------------


def test_docker_comes_from_the_repository_at_the_pinned_version(host):
    # "hold": the pinned packages are held against `apt upgrade`.
    assert package(host, "docker-ce") == "5:26.1.4-1~debian.12~bookworm hold ok installed"
    assert package(host, "docker-ce-cli") == "5:26.1.4-1~debian.12~bookworm hold ok installed"
    # 26.1.5 is in the repository too: the pin, not the repository, chose the version.
    assert "5:26.1.5-1~debian.12~bookworm" in host.check_output("apt-cache madison docker-ce")


def test_the_repository_is_configured_as_docker_documents(host):
    sources = host.file("/etc/apt/sources.list.d/docker.sources").content_string
    assert "URIs: http://llmops-pkg-repos/docker/linux/debian" in sources
    assert "Suites: bookworm" in sources and "Components: stable" in sources
    assert "Signed-By: /etc/apt/keyrings/docker.asc" in sources
    assert host.file("/etc/apt/keyrings/docker.asc").content_string.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert not host.file("/etc/apt/sources.list.d/docker.list").exists


def test_the_compose_plugin_answers(host):
    assert host.check_output("docker compose version").startswith("Docker Compose version v2.29.7")


def test_the_daemon_answers_with_mirror_and_insecure_registry(host):
    info = docker_info(host)
    # the engine inside the docker-ce double: Debian 13's build of Docker Engine 26.1.5
    assert info["ServerVersion"] == "26.1.5+dfsg1" and info["LiveRestoreEnabled"] is True
    assert info["RegistryConfig"]["Mirrors"] == ["http://llmops-registry:5000/"]
    assert info["RegistryConfig"]["IndexConfigs"][PRIVATE]["Secure"] is False


def test_the_installed_dockerd_validates_what_the_collection_would_write(host):
    """validate: auto (the roles' setting) meets a dockerd that has --validate: a misspelt key is refused
    with dockerd's words, in check mode and for real, and daemon.json stays byte for byte."""
    before = host.file("/etc/docker/daemon.json").content_string
    for check in (True, False):
        result = host.backend.run_ansible("llmops.vllm.docker_daemon_config",
                                          json.dumps({"settings": {"max-concurrent-download": 6}}), check=check)
        assert result.get("msg") == ("dockerd rejected the merged configuration, so /etc/docker/daemon.json was not "
                                     "changed: the following directives don't match any configuration option: "
                                     "max-concurrent-download"), result
    assert host.file("/etc/docker/daemon.json").content_string == before
    accepted = host.backend.run_ansible("llmops.vllm.docker_daemon_config",
                                        json.dumps({"settings": {"max-concurrent-downloads": 6}}), check=True)
    assert accepted["changed"] is True and accepted["validated"] is True, accepted


# --- NVIDIA Container Toolkit --------------------------------------------------------------


@pytest.mark.parametrize("name", ["nvidia-container-toolkit", "nvidia-container-toolkit-base",
                                  "libnvidia-container-tools", "libnvidia-container1"])
def test_toolkit_packages_are_pinned_together(host, name):
    assert package(host, name) == "1.18.0-1 hold ok installed"
    assert "1.18.1-1" in host.check_output("apt-cache madison %s", name)


def test_the_toolkit_repository_is_nvidias_line(host):
    line = host.file("/etc/apt/sources.list.d/nvidia-container-toolkit.list").content_string
    assert ("deb [signed-by=/etc/apt/keyrings/nvidia-container-toolkit.asc] "
            "http://llmops-pkg-repos/nvidia/libnvidia-container/stable/deb/$(ARCH) /") in line


def test_daemon_json_has_the_runtime_and_the_cgroupfs_workaround(host):
    config = daemon_json(host)
    assert config["runtimes"]["nvidia"] == {"path": "nvidia-container-runtime", "args": []}
    assert "default-runtime" not in config
    assert config["exec-opts"] == ["native.cgroupdriver=cgroupfs"]
    info = docker_info(host)
    assert {"nvidia", "runc"} <= set(info["Runtimes"]) and info["DefaultRuntime"] == "runc"
    assert info["CgroupDriver"] == "cgroupfs"


def gpus_in_container(host, *docker_args):
    out = host.check_output("docker run --rm " + " ".join(["%s"] * len(docker_args)) + " %s nvidia-smi --query-gpu=uuid --format=csv,noheader",
                            *(docker_args + (TINY,)))
    return sorted(line.strip() for line in out.splitlines() if line.strip())


def test_gpus_all_gives_the_container_the_hosts_gpus(host):
    host_uuids = sorted(host.check_output("nvidia-smi --query-gpu=uuid --format=csv,noheader").split())
    assert host_uuids == sorted(HOST_UUIDS)
    assert gpus_in_container(host, "--gpus", "all") == host_uuids


def test_a_device_request_selects_one_gpu(host):
    last = len(HOST_UUIDS) - 1
    assert gpus_in_container(host, "--gpus", "device=%d" % last) == [HOST_UUIDS[last]]


def test_the_nvidia_runtime_injects_gpus_too(host):
    assert gpus_in_container(host, "--runtime=nvidia", "-e", "NVIDIA_VISIBLE_DEVICES=all") == sorted(HOST_UUIDS)


def test_a_container_without_gpus_gets_none(host):
    assert host.run("docker run --rm %s sh -c 'command -v nvidia-smi'", TINY).rc != 0


def test_cdi_spec_is_generated_by_nvidia_cdi_refresh(host):
    assert host.service("nvidia-cdi-refresh.path").is_enabled
    spec = host.file("/var/run/cdi/nvidia.yaml")
    assert spec.exists and "kind: nvidia.com/gpu" in spec.content_string
    devices = host.check_output("nvidia-ctk cdi list").split()
    assert "nvidia.com/gpu=all" in devices
    assert {"nvidia.com/gpu=" + u for u in HOST_UUIDS} <= set(devices)


def test_docker_26_reads_the_cdi_specs(host):
    # Docker 25.0 to 28.1 read CDI specs only with features.cdi, which the toolkit role sets there
    assert daemon_json(host)["features"] == {"cdi": True}
    assert docker_info(host)["CDISpecDirs"] == ["/etc/cdi", "/var/run/cdi"]


# --- containers keep their GPUs through `systemctl daemon-reload` -------------------------

GPU_JOB = "llmops-gpu-job"


def emulates_device_cgroups(host):
    # The double's hook grants a stand-in GPU device through the cgroup v1 devices controller.
    return host.file("/sys/fs/cgroup/devices").is_directory and host.file("/dev/fuse").exists


def gpu_job_after_daemon_reload(host):
    """Start a container with --gpus all, run `systemctl daemon-reload`; return nvidia-smi's results before and after."""
    host.run("docker rm -f %s", GPU_JOB)
    try:
        host.check_output("docker run -d --name %s --gpus all %s sleep 600", GPU_JOB, TINY)
        before = host.run("docker exec %s nvidia-smi -L", GPU_JOB)
        host.check_output("systemctl daemon-reload")
        after = host.run("docker exec %s nvidia-smi -L", GPU_JOB)
        scope = host.check_output("docker exec %s cat /proc/self/cgroup", GPU_JOB)
        return before, after, scope
    finally:
        host.run("docker rm -f %s", GPU_JOB)


def test_gpu_containers_keep_their_gpus_through_daemon_reload(host):
    if not emulates_device_cgroups(host):
        pytest.skip("cgroup v2 host or no /dev/fuse: the double cannot emulate the device rules of a GPU")
    before, after, scope = gpu_job_after_daemon_reload(host)
    assert before.rc == 0 and "GPU 0:" in before.stdout
    assert after.rc == 0, after.stdout
    assert ".scope" not in scope  # cgroupfs: the container is no systemd unit daemon-reload could reset


def test_without_the_workaround_daemon_reload_takes_the_gpus_away(host):
    # The control: the same job under the systemd cgroup driver loses its GPU on daemon-reload,
    # as NVIDIA/nvidia-container-toolkit#1227 reports. daemon.json is put back afterwards.
    if not emulates_device_cgroups(host):
        pytest.skip("cgroup v2 host or no /dev/fuse: the double cannot emulate the device rules of a GPU")
    original = host.file("/etc/docker/daemon.json").content_string
    config = json.loads(original)
    config["exec-opts"] = ["native.cgroupdriver=systemd"]
    host.check_output("printf '%%s' %s > /etc/docker/daemon.json && systemctl restart docker", json.dumps(config))
    try:
        assert docker_info(host)["CgroupDriver"] == "systemd"
        before, after, scope = gpu_job_after_daemon_reload(host)
        assert before.rc == 0 and ".scope" in scope
        assert after.rc != 0 and "Failed to initialize NVML: Unknown Error" in after.stdout
    finally:
        host.check_output("printf '%%s' %s > /etc/docker/daemon.json && systemctl restart docker", original)
    assert docker_info(host)["CgroupDriver"] == "cgroupfs"


# --- the private registry -----------------------------------------------------------------


def test_the_private_registry_wants_a_login(host):
    status = host.check_output("curl -s -o /dev/null -w '%%{http_code}' http://%s/v2/", PRIVATE)
    assert status == "401"


def test_the_stored_login_pushes_and_pulls(host):
    config = json.loads(host.file("/root/.docker/config.json").content_string)
    assert PRIVATE in config["auths"]
    private_image = PRIVATE + "/llmops-test/private:1"
    host.check_output("docker pull %s && docker tag %s %s && docker push %s", TINY, TINY, private_image, private_image)
    host.check_output("docker rmi %s && docker pull %s", private_image, private_image)


def test_the_password_never_reaches_ansibles_output():
    log = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "ansible.log")
    with open(log) as f:
        text = f.read()
    assert "Log in to each private registry" in text, "the converge log does not show the login task"
    assert PASSWORD not in text


# --- a converged host ---------------------------------------------------------------------


def test_check_mode_on_the_converged_host_changes_nothing():
    rc, output = run_molecule_playbook_in_check_mode(os.path.join(SCENARIO, "converge.yml"))
    assert rc == 0, output[-3000:]
    recap = re.search(r"llmops-gpu-host\s*:\s*ok=\d+\s+changed=(\d+).*failed=(\d+)", output)
    assert recap and recap.group(1) == "0" and recap.group(2) == "0", output[-3000:]

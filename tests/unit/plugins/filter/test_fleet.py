import os

import pytest
import yaml

from ansible_collections.llmops.vllm.plugins.filter import fleet

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))


@pytest.mark.parametrize(
    "image, registry",
    [
        ("vllm/vllm-openai:v0.32.0", "docker.io"),
        ("registry:2.8.3", "docker.io"),
        ("docker.io/vllm/vllm-openai:v0.32.0", "docker.io"),
        ("vllm/vllm-openai@sha256:" + "a" * 64, "docker.io"),
        ("nvcr.io/nvidia/k8s/dcgm-exporter:4.2.3", "nvcr.io"),
        ("ghcr.io/org/image:1", "ghcr.io"),
        ("localhost:5000/vllm/x:1", "localhost:5000"),
        ("localhost/x:1", "localhost"),
    ],
)
def test_image_registry(image, registry):
    assert fleet.image_registry(image) == registry


def test_mirrors_come_from_each_cache_host_and_leave_out_the_host_itself():
    hostvars = {
        "cache-a": {"ansible_host": "10.0.0.5"},
        "cache-b": {"registry_cache_advertise_address": "cache-b.lan", "registry_cache_port": 5443,
                    "registry_cache_tls_certificate": "files/cache.pem"},
        "cache-c": {},
        "cache-d": {"ansible_host": "fd00::7"},
    }
    hosts = ["cache-a", "cache-b", "cache-c", "cache-d"]
    assert fleet.registry_cache_mirrors(hosts, hostvars, "gpu-1") == [
        "http://10.0.0.5:5000", "https://cache-b.lan:5443", "http://cache-c:5000", "http://[fd00::7]:5000"]
    assert fleet.registry_cache_mirrors(hosts, hostvars, "cache-a")[0] == "https://cache-b.lan:5443"
    assert fleet.registry_cache_mirrors([], hostvars, "gpu-1") == []


def test_the_mirror_default_port_is_the_roles_default():
    with open(os.path.join(ROOT, "roles", "registry_cache", "defaults", "main.yml")) as f:
        assert yaml.safe_load(f)["registry_cache_port"] == fleet.REGISTRY_CACHE_DEFAULT_PORT


def test_fleet_images_are_listed_once_and_hub_only_on_request():
    hostvars = {"a": {"llmops_vllm_images": ["vllm/vllm-openai:v1", "nvcr.io/x/y:1"]},
                "b": {"llmops_vllm_images": ["vllm/vllm-openai:v1", "vllm/vllm-openai:v2"]}, "c": {}}
    assert fleet.fleet_images(["a", "b", "c"], hostvars) == ["vllm/vllm-openai:v1", "nvcr.io/x/y:1", "vllm/vllm-openai:v2"]
    assert fleet.fleet_images(["a", "b", "c"], hostvars, hub_only=True) == ["vllm/vllm-openai:v1", "vllm/vllm-openai:v2"]


def test_not_from_docker_hub():
    instances = [{"name": "a", "image": "vllm/vllm-openai:v1"}, {"name": "b", "image": "nvcr.io/x/y:1"}]
    assert fleet.not_from_docker_hub(instances) == [instances[1]]


def test_fleet_report_names_each_host_and_why():
    hostvars = {
        "gpu-1": {"llmops_site_done": True},
        "gpu-2": {"llmops_site_failure": {"step": "Check the ports", "reason": "port 8000 is taken by nginx"}},
        "gpu-3": {},
    }
    rows = fleet.fleet_report(["gpu-1", "gpu-2", "gpu-3"], hostvars)
    assert [r["status"] for r in rows] == ["ok", "failed", "not reached"]
    lines = [fleet.fleet_report_line(r) for r in rows]
    assert lines[0] == "gpu-1: ok"
    assert lines[1] == "gpu-2: FAILED at 'Check the ports': port 8000 is taken by nginx"
    assert lines[2] == "gpu-3: NOT REACHED (the run left it before it finished: see its last task above)"
    stopped = fleet.fleet_report(["gpu-3"], hostvars, stopped=True)
    assert fleet.fleet_report_line(stopped[0]) == (
        "gpu-3: NOT REACHED (stopped by llmops_any_errors_fatal / llmops_max_fail_percentage before it finished)")


def test_fleet_report_gives_the_connection_error_of_a_host_the_run_lost():
    """The report play pings the hosts that neither finished nor failed (ignore_unreachable, ignore_errors):
    an SSH host that is down is unreachable; a Docker connection to a container that is gone fails the
    module with the daemon's answer in module_stderr. Both become the host's reason."""
    probe = {"results": [
        {"item": "gpu-3", "unreachable": True, "msg": "Failed to connect to the host via ssh: Connection refused\n"},
        {"item": "gpu-4", "failed": True, "msg": "Module result deserialization failed: No start of json char found",
         "module_stderr": "Error response from daemon: No such container: gpu-4\n"},
        {"item": "gpu-5", "ping": "pong"},
    ]}
    reasons = fleet.unreachable_reasons(probe)
    assert reasons == {"gpu-3": "Failed to connect to the host via ssh: Connection refused",
                       "gpu-4": "Module result deserialization failed: No start of json char found: "
                                "Error response from daemon: No such container: gpu-4"}
    assert fleet.unreachable_reasons({"skipped": True}) == {}
    rows = fleet.fleet_report(["gpu-3", "gpu-4", "gpu-5"], {}, reasons)
    assert [r["status"] for r in rows] == ["unreachable", "unreachable", "not reached"]
    assert fleet.fleet_report_line(rows[0]) == "gpu-3: UNREACHABLE (Failed to connect to the host via ssh: Connection refused)"


def test_failure_reason_of_a_task_and_of_a_loop():
    assert fleet.failure_reason({"msg": "port 8000 is taken"}) == "port 8000 is taken"
    loop = {"msg": "One or more items failed", "results": [
        {"failed": False, "item": "a"}, {"failed": True, "item": ["org/m", "main"], "msg": "rsync is missing"}]}
    assert fleet.failure_reason(loop) == "(['org/m', 'main']) rsync is missing"
    labelled = {"results": [{"failed": True, "_ansible_item_label": "org/m@main", "msg": "gated"}]}
    assert fleet.failure_reason(labelled) == "(org/m@main) gated"
    assert fleet.failure_reason({"censored": "the output has been hidden"}) == ""
    # gathered facts that failed: the failed module's result; a module whose output was not JSON: what the remote said
    gone = {"msg": "The following modules failed to execute: ansible.legacy.setup.", "failed_modules": {
        "ansible.legacy.setup": {"failed": True, "msg": "Module result deserialization failed: No start of json char found",
                                 "module_stderr": "Error response from daemon: No such container: gpu-9"}}}
    assert fleet.failure_reason(gone) == ("Module result deserialization failed: No start of json char found: "
                                          "Error response from daemon: No such container: gpu-9")


def test_failed_percentage():
    hostvars = {"a": {"llmops_site_failure": {"step": "x", "reason": "y"}}, "b": {}, "c": {}, "d": {}}
    assert fleet.failed_percentage(["a", "b", "c", "d"], hostvars) == 25.0
    assert fleet.failed_percentage([], hostvars) == 0.0

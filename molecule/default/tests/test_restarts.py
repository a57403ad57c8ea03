"""The vLLM container comes back after it crashes and after the host reboots.

(A restart of the Docker daemon leaves it running: live-restore, see test_live_restore.py.)"""

import subprocess
import time

from llmops_testlib import MODEL, TEST_API_KEY, inspect_container, verify


def wait_for(predicate, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(1)
    return False


def test_the_container_comes_back_after_a_crash(host):
    before = inspect_container(host, "vllm")
    # SIGKILL from outside the container: Docker sees the server die, as in a crash.
    host.run("kill -9 %s", str(before["State"]["Pid"]))
    assert wait_for(lambda: inspect_container(host, "vllm")["RestartCount"] > before["RestartCount"])
    result = verify(host, model=MODEL, api_key=TEST_API_KEY, container="vllm", timeout=300)
    assert result["failed"] is False, result.get("msg")


def test_the_container_comes_back_after_the_host_reboots(host):
    name = host.backend.get_hostname()
    # The molecule host is a container running systemd: restarting it is its reboot.
    subprocess.run(["docker", "restart", name], check=True, capture_output=True)
    assert wait_for(lambda: host.run("systemctl is-active docker").stdout.strip() == "active", 120)
    result = verify(host, model=MODEL, api_key=TEST_API_KEY, container="vllm", timeout=300)
    assert result["failed"] is False, result.get("msg")
    assert inspect_container(host, "vllm")["State"]["Running"] is True

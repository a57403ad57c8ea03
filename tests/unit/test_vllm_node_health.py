"""The multi-node health agent's container check (roles/vllm_server/files/vllm-node-health): a container whose
main process has exited is down, even while Docker still calls it running."""

import json
import os
import subprocess
import time
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader

import pytest

AGENT = os.path.join(os.path.dirname(__file__), "..", "..", "roles", "vllm_server", "files", "vllm-node-health")
# the agent is a script without .py: loaded through its own loader (SourceFileLoader.load_module is deprecated)
_loader = SourceFileLoader("vllm_node_health", AGENT)
health = module_from_spec(spec_from_loader("vllm_node_health", _loader))
_loader.exec_module(health)


class FakeDocker(object):
    """Docker's answer to GET /containers/NAME/json, for container_problem()."""
    state = {}

    def __init__(self, timeout):
        pass

    def request(self, method, path):
        pass

    def getresponse(self):
        body = json.dumps({"State": FakeDocker.state}).encode()
        return type("Response", (), {"status": 200, "read": lambda self: body})()

    def close(self):
        pass


@pytest.fixture
def zombie():
    """The PID of a child that has exited and is not reaped yet (a zombie), reaped after the test."""
    child = subprocess.Popen(["true"])
    deadline = time.time() + 10
    while not health.main_process_exited(child.pid) and time.time() < deadline:
        time.sleep(0.05)
    yield child.pid
    child.wait()


def test_a_zombie_is_seen_and_a_live_process_is_not(zombie):
    assert health.main_process_exited(zombie)
    assert not health.main_process_exited(os.getpid())
    assert not health.main_process_exited(None)
    assert not health.main_process_exited(2 ** 22 + 1)  # beyond pid_max: no such process


def test_a_running_container_whose_main_process_exited_is_down(monkeypatch, zombie):
    monkeypatch.setattr(health, "DockerConnection", FakeDocker)
    FakeDocker.state = {"Running": True, "Restarting": False, "Status": "running", "Pid": zombie}
    assert "its main process has exited" in health.container_problem("tiny-dp")
    FakeDocker.state = dict(FakeDocker.state, Pid=os.getpid())
    assert health.container_problem("tiny-dp") == ""
    FakeDocker.state = {"Running": False, "Status": "exited", "Pid": 0}
    assert health.container_problem("tiny-dp") == "container tiny-dp is exited"

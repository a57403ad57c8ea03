"""The vllm_server role's preflight on this machine (connection local, read-only): LoRA adapters judged from
their real adapter_config.json files (tests/tooling/tiny-lora's, `make models`) inside a real play.

No container is started and nothing is written outside a temporary directory: the preflight only reads.
The host is CPU-only on paper, its model cache the tiny models (.cache/models, linked). Hub adapters that
no cache holds are described by the hub stand-in (tests/doubles/hf-hub) serving .cache/lora/hub, asked
from the control node as on a first deploy.
"""

import json
import os
import socket
import subprocess

import pytest

from vllm_testbed import BIN, MODELS, ROOT

ADAPTERS = os.path.abspath(os.environ.get("LLMOPS_IT_ADAPTERS", os.path.join(ROOT, ".cache", "lora")))
PLAYBOOK = """
- hosts: gpu_hosts
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: llmops.vllm.vllm_server
        tasks_from: preflight.yml
"""


HF_HUB = os.path.join(ROOT, "tests", "doubles", "hf-hub")


def commit(repo):
    with open(os.path.join(ADAPTERS, "hub", "models--" + repo.replace("/", "--"), "refs", "main")) as f:
        return f.read().strip()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The stand-in serving tests/tooling/tiny-lora's hub adapters on a port of its own."""
    config = tmp_path_factory.mktemp("lora-hub") / "config.json"
    config.write_text(json.dumps({"tokens": []}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, LLMOPS_HF_HUB_PORT=str(port), LLMOPS_HF_HUB_MODELS=os.path.join(ADAPTERS, "hub"),
               LLMOPS_HF_HUB_CONFIG=str(config))
    subprocess.run([HF_HUB, "up"], env=env, check=True, timeout=60, capture_output=True)
    yield "http://127.0.0.1:%d" % port
    subprocess.run([HF_HUB, "down"], env=env, check=True, timeout=60, capture_output=True)


@pytest.fixture(scope="module")
def preflight(tmp_path_factory):
    if not os.path.isfile(os.path.join(ADAPTERS, "tiny-chat-sql", "adapter_config.json")):
        pytest.fail("the tiny adapters are missing in %s: run make models" % ADAPTERS)
    directory = tmp_path_factory.mktemp("lora-preflight")
    (directory / "data").mkdir()
    os.symlink(MODELS, str(directory / "data" / "models"))
    (directory / "inventory.yml").write_text(json.dumps({"gpu_hosts": {"hosts": {"lora-it-host": {
        "ansible_connection": "local", "ansible_python_interpreter": os.path.join(BIN, "python")}}}}))
    (directory / "preflight.yml").write_text(PLAYBOOK)

    def run(adapters, hub=None, **lora):
        instance = {"name": "lora-it", "model": "llmops-test/tiny-chat", "served_model_name": "tiny-chat", "port": 18999,
                    "bind_address": lora.pop("bind_address", "127.0.0.1"), "download": hub is not None,
                    "lora": dict({"adapters": [a if isinstance(a, dict) else {"name": a[0], "path": os.path.join(ADAPTERS, a[1])}
                                               for a in adapters], "max_lora_rank": 8}, **lora)}
        extra = {"llmops_cpu_only": True, "vllm_server_api_key": "lora-it-key", "vllm_server_check_models_on_hub": hub is not None,
                 "vllm_server_hf_endpoint": hub or "", "vllm_server_base_dir": str(directory / "data"),
                 "vllm_server_env": {"HF_HUB_OFFLINE": "1"}, "vllm_server_image": "llmops-test/vllm-openai-cpu:v0.32.0",
                 "vllm_server_instances": [instance]}
        env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
        result = subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", str(directory / "inventory.yml"),
                                 str(directory / "preflight.yml"), "-e", json.dumps(extra)],
                                capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
        result.output = " ".join((result.stdout + result.stderr).split())
        return result

    return run


def test_adapters_of_the_instances_model_pass(preflight):
    result = preflight([("sql", "tiny-chat-sql"), ("runtime-copy", "tiny-chat-runtime")], runtime=True)
    assert result.returncode == 0, result.output[-3000:]
    assert "Check each instance's LoRA adapters" in result.output


def test_an_adapter_of_another_base_model_is_refused(preflight):
    result = preflight([("sql", "tiny-chat-sql"), ("nochat", "tiny-nochat-sql")])
    assert result.returncode != 0
    assert ("Instance lora-it on lora-it-host: adapter nochat (lora.adapters, %s/tiny-nochat-sql) was trained for "
            "llmops-test/tiny-nochat (base_model_name_or_path in its adapter_config.json), but the instance serves "
            "llmops-test/tiny-chat" % ADAPTERS) in result.output, result.output[-3000:]
    assert "adapter sql " not in result.output


def test_runtime_adapters_on_an_open_port_are_refused(preflight):
    result = preflight([("sql", "tiny-chat-sql")], runtime=True, bind_address="0.0.0.0")
    assert result.returncode != 0
    assert ("Instance lora-it on lora-it-host: lora.runtime opens vLLM's adapter loading, and vLLM 0.32.0 then serves "
            "POST /adapters and DELETE /adapters/<name> without asking for its API key") in result.output, result.output[-3000:]


def test_hub_adapters_no_cache_holds_are_judged_from_the_hub_before_anything_changes(preflight, hub):
    good = {"name": "sql", "source": "llmops-test/tiny-chat-sql", "revision": commit("llmops-test/tiny-chat-sql")}
    result = preflight([good], hub=hub)
    assert result.returncode == 0, result.output[-3000:]
    assert "Ask the hub about those models, once for the whole run" in result.output
    wrong = {"name": "nochat", "source": "llmops-test/tiny-nochat-sql", "revision": commit("llmops-test/tiny-nochat-sql")}
    result = preflight([good, wrong], hub=hub)
    assert result.returncode != 0
    assert ("Instance lora-it on lora-it-host: adapter nochat (lora.adapters, llmops-test/tiny-nochat-sql@%s) was trained "
            "for llmops-test/tiny-nochat" % wrong["revision"]) in result.output, result.output[-3000:]

"""The real vLLM server for the integration tests, and the module run the way users run it.

vLLM is the CPU build of 0.32.0 (llmops-test/vllm-openai-cpu, `make images`) serving the tiny test
models (`make models`) from .cache/models, offline, on ports published on 127.0.0.1 only. A vLLM
start costs about a minute of both cores, so one healthy server is shared by every test of the
session; the test that kills it runs last.

The module runs through `ansible localhost -m llmops.vllm.verify_endpoint` with the json stdout
callback, and playbooks through `ansible-playbook`, from this checkout (ansible.cfg finds the
collection through collections/).

Environment:
  LLMOPS_IT_PREFIX   prefix of the containers' names (default llmops-it-), followed by a random
                     token per session, so that parallel sessions never share a name
  LLMOPS_IT_IMAGE    the vLLM image (default llmops-test/vllm-openai-cpu:v0.32.0)
  LLMOPS_IT_MODELS   the Hugging Face home holding the tiny models (default .cache/models)
"""

import os

import pytest

from vllm_testbed import API_KEY, MODELS, ModuleRun, VllmContainer


@pytest.fixture(scope="session")
def containers():
    """Every container the session starts, removed at its end (also after a failure)."""
    started = []
    if not os.path.isdir(os.path.join(MODELS, "hub", "models--llmops-test--tiny-chat")):
        pytest.fail("the tiny models are missing in %s: run make models" % MODELS)
    yield started
    for container in started:
        container.remove()


@pytest.fixture(scope="session")
def run_module():
    """Run the module to its end; returns (result, ModuleRun)."""

    def run(args, check_mode=False, timeout=900):
        run = ModuleRun(args, check_mode=check_mode)
        return run.result(timeout=timeout), run

    return run


@pytest.fixture(scope="session")
def chat_server(request, containers):
    """The shared healthy server: tiny-chat behind an API key, verified by the module started right
    after `docker run`, so that the first verification waits through the real model load."""
    server = VllmContainer("chat", "llmops-test/tiny-chat", served_model_name="tiny-chat", api_key=API_KEY)
    containers.append(server)
    server.start()
    # When the session also needs the server without chat template, it loads at the same time:
    # part of a start is single-threaded, so two side by side end sooner than one after the other.
    if any("nochat_server" in item.fixturenames for item in request.session.items):
        request.getfixturevalue("nochat_server")
    run = ModuleRun({"url": server.url, "model": "tiny-chat", "api_key": API_KEY, "container": server.name, "timeout": 600})
    server.first_verification = run.result()
    server.first_verification_run = run
    if server.first_verification.get("failed"):
        pytest.fail("the shared vLLM server did not become ready: " + server.first_verification["msg"])
    return server


@pytest.fixture(scope="session")
def nochat_server(containers):
    """tiny-nochat: a model whose tokenizer has no chat template."""
    server = VllmContainer("nochat", "llmops-test/tiny-nochat", served_model_name="tiny-nochat")
    containers.append(server)
    return server.start()


def pytest_collection_modifyitems(items):
    """Tests that kill the shared server run after every other test."""
    items.sort(key=lambda item: item.get_closest_marker("kills_shared_server") is not None)


def pytest_configure(config):
    config.addinivalue_line("markers", "kills_shared_server: the test kills the shared vLLM server; it runs last")

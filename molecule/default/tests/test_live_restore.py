"""live-restore under the real vLLM server: dockerd restarts, the vLLM process keeps serving.

Runs after test_default.py (file order), as it restarts the host's Docker daemon.
"""

from llmops_daemon import restart_under_container
from llmops_testlib import MODEL, TEST_API_KEY, verify


def test_vllm_keeps_serving_while_docker_restarts(host):
    report = restart_under_container(host, "vllm", 8000, "/health")
    # The same vLLM process, never stopped (without live-restore dockerd stops it on shutdown,
    # the restart policy starts a new one, and the model loads again for a minute or more).
    assert report["after"] == report["before"]
    assert report["direct_failures"] == 0, report["samples"]
    # dockerd sets up the published port's proxy and NAT rules again as it starts: new
    # connections there may be refused for a moment, and must not be for long.
    assert report["published_outage"] < 3.0, report["samples"]
    assert report["samples"][-1][1] is True
    # And it still answers a chat completion.
    result = verify(host, model=MODEL, api_key=TEST_API_KEY, container="vllm", timeout=60)
    assert result.get("failed") is not True, result.get("msg")

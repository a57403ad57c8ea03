"""The rolling upgrade of every gpu host under load through the gateway (issue 22: zero loss proven
in CI). It changes every server's settings (one more environment variable), so it runs after every
other fleet test (this file sorts last) and leaves the fleet so: the scenario's destroy follows."""

import time

from llmops_gateway import PACED_LOAD, PACED_LOAD_MAX_GAP_S, TEST_GATEWAY_KEY, Gateway, Load
from llmops_testlib import recap, run_playbook

from test_gateway import GATEWAY_HOST, GPU_HOSTS, docker_address, served, upgraded_env

testinfra_hosts = [GATEWAY_HOST]


def test_a_rolling_upgrade_under_load_loses_no_request():
    gateway = Gateway(docker_address(GATEWAY_HOST))
    # test_site_failures.py puts the gateway back to the inventory's state; should a host's servers be
    # missing all the same, put them back in before the load starts, so that the upgrade drains each of them.
    if set(s.split(":")[0] for names in served(gateway).values() for s in names) != set(GPU_HOSTS):
        rebuilt = run_playbook("playbooks/gateway.yml")
        assert rebuilt.returncode == 0, rebuilt.output[-3000:]
    deadline = time.time() + 300
    while time.time() < deadline and not all(r["status"].startswith("UP") for r in gateway.servers().values()):
        time.sleep(1)
    hosts = set(s.split(":")[0] for names in served(gateway).values() for s in names)
    assert hosts == set(GPU_HOSTS), served(gateway)

    load = Load(gateway.base_url, TEST_GATEWAY_KEY, list(served(gateway)), max_tokens=32, **PACED_LOAD).start()
    result = run_playbook("playbooks/upgrade.yml", {"vllm_server_env": upgraded_env("1")})
    summary = load.wait(stop=True)
    print("rolling upgrade under load: %s" % summary)
    assert result.returncode == 0, result.output[-4000:]
    for gpu in GPU_HOSTS:
        counts = recap(result.output, gpu)
        assert counts["failed"] == 0 and counts["changed"] > 0, (gpu, counts)
    assert "Drain this host's servers and wait for their requests to finish" in result.output
    assert summary["failed"] == 0, summary["failures"]
    assert summary["ok"] > 0
    assert summary["max_gap_s"] <= PACED_LOAD_MAX_GAP_S, summary
    # every server is back once its checks pass
    for backend, server in gateway.servers():
        gateway.wait_status(backend, server, "UP", 60)

"""Failures in a fleet run: a host that fails its preflight does not stop the others, the report
names it and why; llmops_any_errors_fatal and llmops_max_fail_percentage stop the whole run before
anything changes; a failed gateway (the only host of its play) and a host that is gone are in the
report too (issue 22, items 2 and 7).

Runs after the other fleet tests but test_upgrade.py (file order). The first case's inventory override
puts gpu3 in the gateway at port 8002, where its health checks hold it down; the test ends by running
gateway.yml with the scenario's inventory again."""

import json
import os
import re
import subprocess

from llmops_testlib import recap, run_playbook

OPS = "llmops-fleet-ops"
# The fleet report's line for gpu3 when its port is taken (YAML doubles the quotes in the output).
REPORTED = (r"llmops-fleet-gpu3: FAILED at '+Check that each serving port is free or held by its own container'+: "
            r"\(8002\) llmops-fleet-gpu3: port 8002, which the vLLM container vllm is to publish, is held by python3")


def changed_on(output, host):
    """The changed count of a host's PLAY RECAP line; 0 for a host with none, one that ran no task at all (a stopped
    run ends the later plays before their first task: since facts are gathered by a task, not by the play, a host that
    only those plays name never appears)."""
    if not re.search(r"^%s\s+:" % re.escape(host), output, re.M):
        return 0
    return recap(output, host)["changed"]


def test_a_host_that_fails_preflight_does_not_stop_the_others(tmp_path):
    """gpu3 is told to serve on a port something else holds: it fails its preflight and changes
    nothing, the other hosts run to the end, the run fails, and the report names gpu3 and why."""
    blocker = ["docker", "exec", "-d", "llmops-fleet-gpu3", "python3", "-m", "http.server", "8002"]
    subprocess.run(blocker, check=True)
    override = tmp_path / "override.yml"
    override.write_text(json.dumps({"gpu_hosts": {"hosts": {"llmops-fleet-gpu3": {"vllm_server_port": 8002}}}}))
    try:
        before = subprocess.check_output(["docker", "exec", "llmops-fleet-gpu3", "docker", "ps", "-q", "--no-trunc"], text=True)
        cmd_inventory = os.environ["MOLECULE_INVENTORY_FILE"]
        result = run_playbook("site.yml", inventory=cmd_inventory, extra_args=["-i", str(override)])
        assert result.returncode != 0, result.output[-3000:]
        assert recap(result.output, "llmops-fleet-gpu3")["failed"] >= 1
        for name in ("llmops-fleet-gpu1", "llmops-fleet-gpu2"):
            counts = recap(result.output, name)
            assert counts["failed"] == 0 and counts["changed"] == 0, (name, counts)
        # The gateway keeps the failed host (its health checks hold it down) and every other host's servers.
        assert recap(result.output, OPS)["failed"] == 0
        config = subprocess.check_output(["docker", "exec", OPS, "cat", "/etc/haproxy/haproxy.cfg"], text=True)
        servers = sorted(set(re.findall(r"^\s+server (llmops-fleet-gpu\d:\S+) ", config, re.M)))
        assert servers == ["llmops-fleet-gpu1:vllm-chat", "llmops-fleet-gpu1:vllm-chat-b", "llmops-fleet-gpu2:vllm",
                           "llmops-fleet-gpu3:vllm"], servers
        text = " ".join(result.output.split())
        assert re.search(REPORTED, text), text[-4000:]
        for name in ("llmops-fleet-gpu1", "llmops-fleet-gpu2", OPS):
            assert "%s: ok" % name in text
        after = subprocess.check_output(["docker", "exec", "llmops-fleet-gpu3", "docker", "ps", "-q", "--no-trunc"], text=True)
        assert after == before

        # llmops_any_errors_fatal: a host whose instances fail their check stops the whole run
        # before anything changes anywhere, the cache host included.
        bad = tmp_path / "bad.yml"
        bad.write_text(json.dumps({"gpu_hosts": {"hosts": {"llmops-fleet-gpu3": {"vllm_server_options": {"max_batch_size": 32}}}}}))
        result = run_playbook("site.yml", {"llmops_any_errors_fatal": True}, inventory=cmd_inventory, extra_args=["-i", str(bad)])
        assert result.returncode != 0
        text = " ".join(result.output.split())
        assert re.search(r"llmops-fleet-gpu3: FAILED at '+Check each instance'+s vLLM options against vLLM'+s own option list'+: "
                         r"\(vllm\) Instance vllm on llmops-fleet-gpu3 has options vLLM would not take: max_batch_size: .*max_num_seqs", text), text[-4000:]
        for name in ("llmops-fleet-gpu1", "llmops-fleet-gpu2", OPS):
            assert "%s: NOT REACHED" % name in text, text[-4000:]
            assert changed_on(result.output, name) == 0
        assert "Install the distribution's registry package" not in result.output

        # llmops_max_fail_percentage: more than 30 % of the GPU hosts failed their check (one of three),
        # so the run stops there, before anything changes anywhere.
        result = run_playbook("site.yml", {"llmops_max_fail_percentage": 30}, inventory=cmd_inventory, extra_args=["-i", str(bad)])
        assert result.returncode != 0
        text = " ".join(result.output.split())
        assert re.search(r"llmops-fleet-gpu3: FAILED at '+Check each instance'+s vLLM options", text), text[-4000:]
        for name in ("llmops-fleet-gpu1", "llmops-fleet-gpu2", OPS):
            assert "%s: NOT REACHED (stopped by llmops_any_errors_fatal / llmops_max_fail_percentage" % name in text, text[-4000:]
            assert changed_on(result.output, name) == 0
        assert "Install the distribution's registry package" not in result.output
    finally:
        subprocess.run(["docker", "exec", "llmops-fleet-gpu3", "pkill", "-f", "http.server 8002"], check=False)
        # The gateway followed the override (gpu3 on port 8002): back to the inventory's own state for the
        # tests after this one (test_upgrade.py drains and enables every host's servers).
        restored = run_playbook("playbooks/gateway.yml")
        assert restored.returncode == 0, restored.output[-3000:]



def test_a_gateway_failure_and_a_host_that_is_gone_are_in_the_report(tmp_path):
    """One run, two failures (issue 22, item 7): the gateway play's only host fails (a gateway_affinity HAProxy is
    not given), and a GPU host of the inventory does not exist (its container is not there). The run goes on to the
    monitoring plays and the report, which names the gateway host with the step and the reason, and the lost host as
    unreachable with the connection's own words, and fails the run; the other GPU hosts are served and change nothing,
    and the gateway keeps its configuration."""
    gone = "llmops-fleet-gone"
    config = ["docker", "exec", OPS, "cat", "/etc/haproxy/haproxy.cfg"]
    before = subprocess.check_output(config, text=True)
    override = tmp_path / "override.yml"
    # The gone host's name resolves nowhere (no container holds it), and the firewalls admit only hosts they can
    # resolve: it stays out of the fleet's hosts that they admit (llmops_fleet_hosts, as docs/fleet.md advises for a
    # host that does not resolve), as a real host that is down, whose name still resolves, needs not.
    override.write_text(json.dumps({"all": {"vars": {"llmops_fleet_hosts": "all:!%s" % gone}},
                                    "gateway": {"hosts": {OPS: {"gateway_affinity": "bogus"}}},
                                    "gpu_hosts": {"hosts": {gone: {"ansible_connection": "community.docker.docker"}}}}))
    result = run_playbook("site.yml", inventory=os.environ["MOLECULE_INVENTORY_FILE"], extra_args=["-i", str(override)])
    assert result.returncode != 0, result.output[-3000:]
    text = " ".join(result.output.split())
    assert "PLAY [Report on the fleet]" in result.output, text[-4000:]
    assert re.search(r"%s: FAILED at '+Validating arguments against arg spec '+main'+ - HAProxy in front of the fleet'+s "
                     r"vLLM instances: [^']*'+: Validation of arguments failed: value of gateway_affinity must be one of: "
                     r"none, header, user, prefix, got: bogus" % OPS, text), text[-4000:]
    assert re.search(r"%s: UNREACHABLE \([^)]*No such container: %s" % (gone, gone), text), text[-4000:]
    assert re.search(r"(%s|%s), (%s|%s) failed; the report above says where and why." % (OPS, gone, OPS, gone), text)
    for name in ("llmops-fleet-gpu1", "llmops-fleet-gpu2", "llmops-fleet-gpu3"):
        assert "%s: ok" % name in text
        counts = recap(result.output, name)
        assert counts["failed"] == 0 and counts["changed"] == 0, (name, counts)
    assert subprocess.check_output(config, text=True) == before

"""docker-merge: daemon.json written by others is merged, never clobbered; Docker serves through changes."""

import json
import os
import re

import pytest
from llmops_daemon import daemon_json, docker_info, restart_under_container, run_molecule_playbook_in_check_mode
from llmops_testlib import registry_digest

SCENARIO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(SCENARIO, "files", "daemon.foreign.json")) as f:
    FOREIGN = json.load(f)
MIRROR = "http://llmops-registry:5000"
TINY = "llmops-test/tiny:bookworm"
# The keys the docker role manages in this scenario; every other key of the seed must survive as it was.
MANAGED = {"live-restore", "log-driver", "log-opts", "registry-mirrors", "data-root"}


def test_the_daemon_answers(host):
    info = docker_info(host)
    assert info["ServerVersion"] and host.service("docker").is_running and host.service("docker").is_enabled


@pytest.mark.parametrize("key", sorted(set(FOREIGN) - MANAGED))
def test_foreign_key_survives_unchanged(host, key):
    assert daemon_json(host)[key] == FOREIGN[key]


def test_managed_keys_are_set_and_nested_foreign_keys_kept(host):
    config = daemon_json(host)
    assert config["live-restore"] is True  # the seed had false
    assert config["registry-mirrors"] == [MIRROR]
    assert config["data-root"] == "/srv/docker"
    assert config["log-driver"] == "json-file"
    # log-opts is shared: the role owns max-size and max-file, the administrator's labels stay.
    assert config["log-opts"] == {"labels": "team", "max-size": "100m", "max-file": "3"}
    assert set(config) == set(FOREIGN) | MANAGED


def test_docker_runs_with_the_merged_configuration(host):
    info = docker_info(host)
    assert info["RegistryConfig"]["Mirrors"] == [MIRROR + "/"]
    assert "10.0.0.5:5000" in info["RegistryConfig"]["IndexConfigs"]
    assert info["RegistryConfig"]["IndexConfigs"]["10.0.0.5:5000"]["Secure"] is False
    assert {"nvidia", "runc"} <= set(info["Runtimes"])
    assert "rack=r1" in info["Labels"]
    assert info["Debug"] is True
    assert info["LiveRestoreEnabled"] is True
    assert info["DockerRootDir"] == "/srv/docker"
    assert info["LoggingDriver"] == "json-file"
    assert info["CgroupDriver"] == "cgroupfs"


def test_the_user_is_in_the_docker_group_and_can_use_docker(host):
    assert "docker" in host.user("svc-vllm").groups
    assert host.run("runuser -u svc-vllm -- docker version --format '{{.Server.Version}}'").rc == 0


def test_images_come_through_the_mirror(host):
    # Docker Hub is unreachable from here: the pull can only succeed through the mirror, and the
    # digest the host records is the one the test registry holds.
    host.check_output("docker pull %s", TINY)
    digests = json.loads(host.check_output("docker image inspect --format '{{json .RepoDigests}}' %s", TINY))
    assert digests == ["llmops-test/tiny@" + registry_digest("llmops-test/tiny", "bookworm")]


# A one-line HTTP server in perl-base, which the minimal image has.
ECHO = ('$s=IO::Socket::INET->new(LocalPort=>8080,Listen=>64,ReuseAddr=>1) or die;'
        ' while($c=$s->accept){<$c>; print $c "HTTP/1.0 200 OK\r\n\r\nalive $$\n"; close $c}')


@pytest.fixture
def echo_container(host):
    host.run("docker rm -f llmops-echo")
    host.check_output("docker run -d --name llmops-echo -p 8080:8080 --restart unless-stopped %s perl -MIO::Socket::INET -e %s",
                      TINY, ECHO)
    assert host.run("for i in $(seq 50); do curl -fsS --max-time 1 http://127.0.0.1:8080/ && exit 0; sleep 0.2; done; exit 1").rc == 0
    yield "llmops-echo"
    host.run("docker rm -f llmops-echo")


def test_a_running_container_keeps_serving_while_docker_restarts(host, echo_container):
    report = restart_under_container(host, echo_container, 8080)
    # The same process, never stopped: with live-restore off dockerd stops it on shutdown and
    # the restart policy starts a new one (another pid and start time).
    assert report["after"] == report["before"]
    # It answered on its own address all along.
    assert report["direct_failures"] == 0, report["samples"]
    # The published port goes through dockerd's proxy and NAT rules, which it sets up again on
    # start: new connections there may be refused for a moment, and must not be for long.
    assert report["published_outage"] < 3.0, report["samples"]
    assert report["samples"][-1][1] is True
    print("published port refused connections for %.2f s during the restart (%d of %d probes)" % (
        report["published_outage"], report["published_failures"], len(report["samples"])))


def test_check_mode_on_the_converged_host_changes_nothing():
    rc, output = run_molecule_playbook_in_check_mode(os.path.join(SCENARIO, "converge.yml"))
    assert rc == 0, output[-3000:]
    recap = re.search(r"llmops-docker-merge\s*:\s*ok=\d+\s+changed=(\d+).*failed=(\d+)", output)
    assert recap and recap.group(1) == "0" and recap.group(2) == "0", output[-3000:]

"""Helpers for the tests of the Docker daemon on a molecule host: what daemon.json and
`docker info` say, and what a daemon restart does to a running container."""

import json
import os
import subprocess

# Runs on the host, in one go so the timing is the host's: probes a container's port every
# 50 ms, through the published port on 127.0.0.1 and directly on the container's address,
# while `systemctl restart docker` runs; prints the samples as JSON.
_PROBE = r"""
set -u
container=$1 port=$2 path=$3
ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$container")
before=$(docker inspect -f '{{.State.Pid}} {{.State.StartedAt}}' "$container")
stop=$(mktemp -u)
( while [ ! -e "$stop" ]; do
    p=0; d=0
    curl -fsS --max-time 1 -o /dev/null "http://127.0.0.1:$port$path" 2>/dev/null && p=1
    curl -fsS --max-time 1 -o /dev/null "http://$ip:$port$path" 2>/dev/null && d=1
    echo "$(date +%s.%N) $p $d"
    sleep 0.05
  done ) > "$stop.samples" &
prober=$!
sleep 1
t0=$(date +%s.%N)
systemctl restart docker
t1=$(date +%s.%N)
for _ in $(seq 300); do docker info >/dev/null 2>&1 && break; sleep 0.1; done
sleep 2
touch "$stop"; wait "$prober"
after=$(docker inspect -f '{{.State.Pid}} {{.State.StartedAt}}' "$container")
python3 - "$stop.samples" "$t0" "$t1" "$before" "$after" <<'PY'
import json, sys
samples = [line.split() for line in open(sys.argv[1]) if line.strip()]
print(json.dumps({
    "restart_started": float(sys.argv[2]), "restart_done": float(sys.argv[3]),
    "before": sys.argv[4], "after": sys.argv[5],
    "samples": [[float(t), p == "1", d == "1"] for t, p, d in samples],
}))
PY
rm -f "$stop.samples"
"""


def daemon_json(host):
    return json.loads(host.file("/etc/docker/daemon.json").content_string)


def docker_info(host):
    return json.loads(host.check_output("docker info --format '{{json .}}'"))


def restart_under_container(host, container, port, path="/"):
    """Restart the host's dockerd while probing container:port; return what happened.

    Keys: before/after ("<pid> <started at>" of the container), samples ([time, published ok,
    direct ok]), published_outage (seconds between the first and the last failed probe through
    the published port, 0 if none), direct_failures, published_failures.
    """
    result = host.run("bash -c %s probe %s %s %s", _PROBE, container, str(port), path)
    assert result.rc == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    failed = [t for t, published, direct in report["samples"] if not published]
    report["published_failures"] = len(failed)
    report["published_outage"] = (max(failed) - min(failed)) if failed else 0.0
    report["direct_failures"] = sum(1 for t, published, direct in report["samples"] if not direct)
    return report


def run_molecule_playbook(playbook, *args):
    """Run a playbook against the scenario's instances, with molecule's inventory and settings; return (rc, output)."""
    env = dict(os.environ)
    command = ["ansible-playbook", "-i", env["MOLECULE_INVENTORY_FILE"]] + list(args) + [playbook]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    return done.returncode, done.stdout + done.stderr


def run_molecule_playbook_in_check_mode(playbook):
    """Run a scenario's playbook with --check --diff against its instances; return (rc, output)."""
    return run_molecule_playbook(playbook, "--check", "--diff")

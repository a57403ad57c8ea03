#!/usr/bin/env python3
"""A cold provision of one GPU host against the sum of its unavoidable parts, in one run.

Two fresh GPU-host stand-ins (the Debian 12 systemd containers of the tests, on network llmops-test), the
upstream test registry standing in for Docker Hub as their registry mirror, the hub stand-in serving the
model to the control node (the fleet inventory's settings, inventories/local-fleet's group_vars):

  - site:  ONE `site.yml` run over the first host (bare: Docker, the NVIDIA toolkit role, the image, the
           model, vLLM started and verified with a chat completion), timed whole and per task
           (ansible.posix.profile_tasks);
  - parts: on the second host, each unavoidable part alone, by the commands a person would type:
           Docker Engine from the distribution (apt-get install docker.io, the same mirror setting in
           daemon.json), the image pull, the model copy into the host's Hugging Face cache, and vLLM
           from `docker run` to its /health answering 200 (the role's options: the tiny model,
           max_model_len 512, enforce_eager, the CPU KV cache of 1 GiB).

The rounds alternate which of the two goes first (ROUNDS, default 2), each on new hosts; it prints both
times, the ratio site / sum of parts (issue 23's goal: at most 1.1) and the breakdown: each part alone
against the same step inside the site.yml run, and the rest of the run (the role's other tasks).

Not a test: the numbers depend on the machine. Run it after `make testbed`:
    .venv/bin/python benchmarks/cold.py [--rounds 2] [--json FILE]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from statistics import median

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fleet  # noqa: E402  (the fleet benchmark's hosts, inventory and playbook runner)

ROOT = fleet.ROOT
PREFIX = "llmops-bench-cold-"
IMAGE = "%s:%s" % (fleet.IMAGE_REPOSITORY, fleet.IMAGE_TAG)
MODEL_DIR = "models--llmops-test--tiny-chat"
# The steps of the site.yml run that match the parts (profile_tasks' task names).
STEPS = {
    "Docker Engine": ["llmops.vllm.docker : Install Docker Engine"],
    "image pull": ["llmops.vllm.vllm_server : Pull the vLLM images"],
    "model copy": ["llmops.vllm.vllm_server : Fetch each model of the fleet once, on the control node",
                   "llmops.vllm.vllm_server : Copy each model from the control node"],
    "vLLM start to ready": ["llmops.vllm.vllm_server : Run the vLLM containers",
                            "llmops.vllm.vllm_server : Verify that each instance answers a chat completion"],
}


def sh(*cmd, **kw):
    return subprocess.run(list(cmd), check=True, capture_output=True, text=True, **kw).stdout


def remove_hosts():
    for name in sh("docker", "ps", "-a", "--format", "{{.Names}}").split():
        if name.startswith(PREFIX):
            subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True)


def timed(*cmd):
    start = time.monotonic()
    subprocess.run(list(cmd), check=True, capture_output=True, text=True)
    return time.monotonic() - start


def in_host(host, script):
    return ["docker", "exec", host, "sh", "-ec", script]


def parts(host):
    """Each unavoidable part alone on a bare host, in the order a provision needs them."""
    took = {}
    daemon = json.dumps({"registry-mirrors": [fleet.UPSTREAM_MIRROR]})
    took["Docker Engine"] = timed(*in_host(host, (
        "mkdir -p /etc/docker && echo '%s' > /etc/docker/daemon.json; export DEBIAN_FRONTEND=noninteractive; "
        "apt-get update -qq && apt-get install -y -qq docker.io >/dev/null; systemctl start docker; docker info >/dev/null")
        % daemon))
    took["image pull"] = timed(*in_host(host, "docker pull -q %s >/dev/null" % IMAGE))
    start = time.monotonic()
    sh(*in_host(host, "mkdir -p /data/vllm/models/hub"))
    sh("docker", "cp", os.path.join(ROOT, ".cache", "models", "hub", MODEL_DIR), "%s:/data/vllm/models/hub/" % host)
    took["model copy"] = time.monotonic() - start
    took["vLLM start to ready"] = timed(*in_host(host, (
        "docker run -d --name vllm --ipc host --cap-add SYS_NICE -p 127.0.0.1:8000:8000 "
        "-v /data/vllm/models:/root/.cache/huggingface -e HF_HUB_OFFLINE=1 -e VLLM_CPU_KVCACHE_SPACE=1 "
        "%s --model llmops-test/tiny-chat --max-model-len 512 --enforce-eager >/dev/null; "
        "i=0; until python3 -c \"import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health', timeout=2)\" "
        "2>/dev/null; do i=$((i+1)); [ $i -lt 1800 ] || exit 1; sleep 0.5; done") % IMAGE))
    return took


def profile(output):
    """profile_tasks' per-task durations, in the order the tasks ran: [(name, seconds)]."""
    entries, last = [], None
    for line in output.splitlines():
        match = re.match(r"^(?:TASK|RUNNING HANDLER) \[(.*?)\] \*+", line)
        if match:
            last = match.group(1)
            continue
        match = re.search(r"\((\d+):(\d+):([\d.]+)\)\s+\d+:\d+:[\d.]+ \*+", line)
        if match and last is not None:
            seconds = int(match.group(1)) * 3600 + int(match.group(2)) * 60 + float(match.group(3))
            if entries and entries[-1][1] is None:
                entries[-1] = (entries[-1][0], seconds)
            entries.append((last, None))
    return [(name, seconds or 0.0) for name, seconds in entries]


def site(host, tmp):
    inv = fleet.inventory(os.path.join(tmp, "inventory"), [host], None)
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               PATH=fleet.BIN + os.pathsep + os.environ.get("PATH", ""), MOLECULE_EPHEMERAL_DIRECTORY=tmp,
               ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks", PROFILE_TASKS_TASK_OUTPUT_LIMIT="1000")
    start = time.monotonic()
    result = subprocess.run([os.path.join(fleet.BIN, "ansible-playbook"), "-i", inv, os.path.join(ROOT, "site.yml")],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-2000:])
        raise SystemExit("site.yml failed (exit %d)" % result.returncode)
    # the last line of the second callback's header is the total; the per-task list comes from the headers
    tasks = profile(result.stdout.split("PLAY RECAP")[0])
    steps = dict((part, sum(s for n, s in tasks if n in names)) for part, names in STEPS.items())
    return elapsed, steps, len(tasks)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args()
    sh(fleet.HF_HUB, "up")
    rounds = []
    try:
        for number in range(args.rounds):
            remove_hosts()
            site_host, parts_host = PREFIX + "site", PREFIX + "parts"
            for name in (site_host, parts_host):
                fleet.start_host(name)
            time.sleep(2)
            with tempfile.TemporaryDirectory() as tmp:
                if number % 2 == 0:
                    whole, steps, count = site(site_host, tmp)
                    alone = parts(parts_host)
                else:
                    alone = parts(parts_host)
                    whole, steps, count = site(site_host, tmp)
            total = sum(alone.values())
            rounds.append({"site_s": round(whole, 1), "tasks": count, "parts_s": dict((k, round(v, 1)) for k, v in alone.items()),
                           "steps_in_site_s": dict((k, round(v, 1)) for k, v in steps.items()),
                           "sum_of_parts_s": round(total, 1), "ratio": round(whole / total, 2)})
            print("round %d (%s first): site.yml %.1f s (%d task entries), sum of the parts %.1f s: %.2fx" % (
                number + 1, "site.yml" if number % 2 == 0 else "parts", whole, count, total, whole / total), flush=True)
    finally:
        remove_hosts()
    print()
    print("%-22s %14s %18s" % ("part", "alone (median)", "in site.yml (median)"))
    for part in STEPS:
        print("%-22s %12.1f s %16.1f s" % (part, median(r["parts_s"][part] for r in rounds),
                                           median(r["steps_in_site_s"][part] for r in rounds)))
    site_median = median(r["site_s"] for r in rounds)
    parts_median = median(r["sum_of_parts_s"] for r in rounds)
    steps_median = median(sum(r["steps_in_site_s"].values()) for r in rounds)
    print("%-22s %12.1f s %16.1f s" % ("sum", parts_median, steps_median))
    print("%-22s %14s %16.1f s" % ("the rest of site.yml", "", site_median - steps_median))
    print("%-22s %14s %16.1f s" % ("site.yml, whole", "", site_median))
    ratio = median(r["ratio"] for r in rounds)
    print()
    print("goal: a cold provision takes at most 1.1x the sum of its unavoidable parts: %s (%.2fx)" % (
        "met" if ratio <= 1.1 else "NOT met", ratio))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rounds": rounds}, f, indent=2)


if __name__ == "__main__":
    main()

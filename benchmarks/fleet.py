#!/usr/bin/env python3
"""What a fleet costs as it grows, with the registry cache and without it.

For each fleet size N (default 1, 2 and 4 GPU-host stand-ins) and each way of fetching images:

  - cache:  the hosts pull through a registry cache on one more host (the registry_cache role),
            which pulls from the upstream once;
  - direct: every host pulls from the upstream itself (registry-mirrors pointing at it);

it creates fresh hosts (the Debian 12 systemd containers of the tests, on network llmops-test),
runs ONE `site.yml` over them (cold: Docker, the image, vLLM started and verified with a chat
completion on every host), runs it again (a no-op: it must report changed=0) and removes them.
The upstream is the test registry standing in for Docker Hub; the bytes it served come from its
own request log, per client address. The models come from the Hugging Face Hub stand-in
(tests/doubles/hf-hub) once per run, through the control node (vllm_server_download_on:
control_node, the fleet inventory's setting), into a control-node cache that is new for each run;
its own counters give the bytes it served. In both modes the model is fetched once per fleet: the
stand-in listens on the control node's loopback only, so "every host from the hub" is not run.

It prints, per run: the cold and the no-op time, the no-op time against N=1 of the same mode,
and the upstream's bytes against the image's compressed size; then the goals of issue 9:
upstream bytes with the cache 1.0x the image whatever N, no-op t(N)/t(1) <= 1.3.

Not a test: the numbers depend on the machine, and every vLLM server of the run shares it.
Run it with `make bench-fleet` (after `make testbed`); N=4 holds about 10 GiB of memory.

With --compare-docker-role DIR (a checkout of geerlingguy.docker, the most-used community Docker
role; Ansible Galaxy is out of reach here, so it is never fetched by this script), the converged
host of the first cache run also measures, alternating ROUNDS (3) times: a no-op run of that role
alone (its distribution-package path: docker_add_repo false, docker_packages [docker.io]), of this
collection's docker role alone, and of the whole site.yml; it prints the medians and the ratios.

Usage: benchmarks/fleet.py [--sizes 1,2,4] [--modes cache,direct] [--compare-docker-role DIR] [--json FILE]
"""

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from statistics import median

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "molecule", "resources", "tests"))
from llmops_testlib import cache_read_ahead, image_blob_sizes, model_snapshot_bytes, upstream_blob_bytes  # noqa: E402

BIN = os.path.dirname(sys.executable)
NETWORK = "llmops-test"
UPSTREAM = "llmops-registry"
UPSTREAM_MIRROR = "http://llmops-registry:5000"
IMAGE_SYSTEMD = "llmops-test/debian12-systemd:latest"
IMAGE_REPOSITORY, IMAGE_TAG = "vllm/vllm-openai-cpu", "v0.32.0-x86_64"
CAPS = ["SYS_ADMIN", "NET_ADMIN", "NET_RAW", "SYS_PTRACE", "MKNOD", "AUDIT_WRITE", "SETFCAP", "SYS_CHROOT",
        "DAC_READ_SEARCH", "IPC_LOCK", "SYS_MODULE", "SYS_NICE"]
PREFIX = "llmops-bench-"


def sh(*cmd, **kw):
    return subprocess.run(list(cmd), check=True, capture_output=True, text=True, **kw).stdout


def start_host(name):
    subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True)
    sh("docker", "run", "-d", "--name", name, "--hostname", name, "--network", NETWORK,
       *["--cap-add=" + c for c in CAPS], "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
       "--cgroupns", "host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "-v", "/var/lib/docker",
       "--tmpfs", "/run", "--tmpfs", "/run/lock", "--shm-size", "1g", IMAGE_SYSTEMD, "/lib/systemd/systemd")


def remove_hosts():
    names = sh("docker", "ps", "-a", "--format", "{{.Names}}").split()
    for name in names:
        if name.startswith(PREFIX):
            subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True)


def address(name):
    return json.loads(sh("docker", "inspect", "--format", "{{json .NetworkSettings.Networks}}", name))[NETWORK]["IPAddress"]


def inventory(directory, gpu_hosts, cache_host):
    """The fleet's inventory: inventories/local-fleet's group_vars, these hosts."""
    os.makedirs(os.path.join(directory, "group_vars"))
    for name in ("all.yml", "gpu_hosts.yml", "registry_cache.yml"):
        os.symlink(os.path.join(ROOT, "inventories", "local-fleet", "group_vars", name), os.path.join(directory, "group_vars", name))
    hosts = {"gpu_hosts": {"hosts": dict((h, None) for h in gpu_hosts)},
             "all": {"vars": {"ansible_connection": "community.docker.docker"}}}
    if cache_host:
        hosts["registry_cache"] = {"hosts": {cache_host: None}}
    else:
        hosts["gpu_hosts"]["vars"] = {"docker_registry_mirrors": [UPSTREAM_MIRROR]}
    with open(os.path.join(directory, "hosts.yml"), "w") as f:
        json.dump(hosts, f)
    return directory


HF_HUB = os.path.join(ROOT, "tests", "doubles", "hf-hub")


def playbook(inventory_dir, playbook_path, forks, extra=(), control_dir=None, roles_path=None, details=False):
    """Runs a playbook; returns (seconds, changed), or with details a dict that adds the control node's CPU seconds
    (the ansible-playbook process and its forks) and the per-task profile (ansible.posix.profile_tasks)."""
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    if control_dir:
        # the fleet inventory keeps the control node's model cache under $MOLECULE_EPHEMERAL_DIRECTORY/hub
        env["MOLECULE_EPHEMERAL_DIRECTORY"] = control_dir
    if roles_path:
        env["ANSIBLE_ROLES_PATH"] = roles_path
    if details:
        env.update(ANSIBLE_CALLBACKS_ENABLED="ansible.posix.profile_tasks", PROFILE_TASKS_TASK_OUTPUT_LIMIT="1000")
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    result = subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", inventory_dir, "-f", str(forks), playbook_path, *extra],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    elapsed = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-2000:])
        raise SystemExit("%s failed (exit %d)" % (playbook_path, result.returncode))
    changed = sum(int(n) for n in re.findall(r"changed=(\d+)", result.stdout.split("PLAY RECAP")[-1]))
    if not details:
        return elapsed, changed
    return {"seconds": elapsed, "changed": changed, "cpu_s": (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime),
            "tasks": task_profile(result.stdout.split("PLAY RECAP")[0])}


def task_profile(output):
    """profile_tasks' duration of each task entry, in the order they ran: [(task name, seconds, skipped)]."""
    entries, name, skipped = [], None, True
    for line in output.splitlines():
        match = re.match(r"^(?:TASK|RUNNING HANDLER) \[(.*?)\] \*+", line)
        if match:
            name, skipped = match.group(1), True
            continue
        if re.match(r"^(ok|changed|included|fatal|failed):", line):
            skipped = False
            if entries and entries[-1][0] == name:
                entries[-1] = (name, entries[-1][1], False)
        match = re.search(r"\((\d+):(\d+):([\d.]+)\)\s+\d+:\d+:[\d.]+ \*+", line)
        if match and name is not None:
            seconds = int(match.group(1)) * 3600 + int(match.group(2)) * 60 + float(match.group(3))
            if entries and entries[-1][1] is None:
                entries[-1] = (entries[-1][0], seconds, entries[-1][2])
            entries.append((name, None, skipped))
    return [(n, t or 0.0, k) for n, t, k in entries]


def by_role(tasks):
    """{role: [entries, seconds]} of a task profile; the playbooks' own tasks under "(playbooks)"."""
    roles = {}
    for name, seconds, _ in tasks:
        role = name.split(" : ")[0] if " : " in name else "(playbooks)"
        entry = roles.setdefault(role, [0, 0.0])
        entry[0] += 1
        entry[1] += seconds
    return roles


COMPARE_ROUNDS = 3
DOCKER_ONLY = """- name: This collection's docker role alone
  hosts: gpu_hosts
  become: true
  gather_facts: true
  gather_subset: [min]
  roles:
    - llmops.vllm.docker
"""
GEERLINGGUY = """- name: geerlingguy.docker alone, its distribution-package path
  hosts: gpu_hosts
  become: true
  vars:
    docker_add_repo: false
    docker_packages: [docker.io]
    docker_obsolete_packages: []
    docker_install_compose_plugin: false
  roles:
    - geerlingguy.docker
"""


def compare_docker_roles(inv, tmp, forks, role_dir):
    """No-op runs on the converged fleet, alternating: geerlingguy.docker, the docker role, site.yml."""
    roles = os.path.join(tmp, "roles")
    os.makedirs(roles)
    os.symlink(os.path.abspath(role_dir), os.path.join(roles, "geerlingguy.docker"))
    books = {}
    for name, text in (("geerlingguy.docker", GEERLINGGUY), ("docker role", DOCKER_ONLY)):
        books[name] = os.path.join(tmp, name.replace(" ", "-") + ".yml")
        with open(books[name], "w") as f:
            f.write(text)
    books["site.yml"] = os.path.join(ROOT, "site.yml")
    runs = dict((name, []) for name in books)
    for _ in range(COMPARE_ROUNDS):
        for name, book in books.items():
            runs[name].append(playbook(inv, book, forks, control_dir=tmp, roles_path=roles, details=True))
    result = {}
    for name in books:
        roles_median = {}
        for role in sorted(set(r for run in runs[name] for r in by_role(run["tasks"]))):
            per_run = [by_role(run["tasks"]).get(role, [0, 0.0]) for run in runs[name]]
            roles_median[role] = {"entries": int(median(e for e, _ in per_run)), "median_s": round(median(t for _, t in per_run), 1)}
        result[name] = {"median_s": round(median(r["seconds"] for r in runs[name]), 1),
                        "runs_s": [round(r["seconds"], 1) for r in runs[name]], "changed": [r["changed"] for r in runs[name]],
                        "cpu_s": round(median(r["cpu_s"] for r in runs[name]), 1),
                        "entries": int(median(len(r["tasks"]) for r in runs[name])),
                        "skipped": int(median(sum(1 for t in r["tasks"] if t[2]) for r in runs[name])),
                        "roles": roles_median}
    return result


def run(mode, n, compare_role=None):
    remove_hosts()
    gpu_hosts = ["%sgpu%d" % (PREFIX, i) for i in range(1, n + 1)]
    cache_host = PREFIX + "cache" if mode == "cache" else None
    for name in gpu_hosts + ([cache_host] if cache_host else []):
        start_host(name)
    since = sh("date", "-u", "+%Y-%m-%dT%H:%M:%SZ").strip()
    time.sleep(1)
    with tempfile.TemporaryDirectory() as tmp:
        inv = inventory(os.path.join(tmp, "inventory"), gpu_hosts, cache_host)
        forks = max(5, n + 1)
        playbook(inv, os.path.join(ROOT, "molecule", "resources", "prepare.yml"), forks, ["-l", "gpu_hosts"])
        sh(HF_HUB, "reset")
        cold, _ = playbook(inv, os.path.join(ROOT, "site.yml"), forks, control_dir=tmp)
        noop, changed = playbook(inv, os.path.join(ROOT, "site.yml"), forks, control_dir=tmp)
        hub = json.loads(sh(HF_HUB, "stats"))["bytes_served"]
        compared = compare_docker_roles(inv, tmp, forks, compare_role) if compare_role else None
    sent = upstream_blob_bytes(since, UPSTREAM)
    addresses = dict((address(h), h) for h in gpu_hosts + ([cache_host] if cache_host else []))
    upstream = sum(v for k, v in sent.items() if k in addresses)
    remove_hosts()
    return {"mode": mode, "n": n, "cold_s": round(cold, 1), "noop_s": round(noop, 1), "noop_changed": changed,
            "upstream_bytes": upstream, "hub_bytes": hub, "compared": compared}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,2,4")
    parser.add_argument("--modes", default="cache,direct")
    parser.add_argument("--compare-docker-role", metavar="DIR",
                        help="a checkout of geerlingguy.docker, to compare no-op runs on one converged host")
    parser.add_argument("--json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    blobs = image_blob_sizes(IMAGE_REPOSITORY, IMAGE_TAG)
    image = sum(blobs)
    # what the cache may fetch over the image's size (docs/fleet.md, test_fleet.py's upstream bytes test)
    read_ahead = cache_read_ahead(blobs)
    # the fleet's model (llmops-test/tiny-chat) as the hub stand-in serves it
    _, model = model_snapshot_bytes(os.path.join(ROOT, ".cache", "models", "hub"), "llmops-test/tiny-chat")
    sh(HF_HUB, "up")
    rows = []
    compared = None
    try:
        for mode in args.modes.split(","):
            for n in sizes:
                row = run(mode, n, args.compare_docker_role if (mode, n) == ("cache", sizes[0]) else None)
                compared = row["compared"] or compared
                rows.append(row)
                print("%-6s N=%d  cold %6.1f s  no-op %5.1f s (changed=%d)  upstream %.2f GB  hub %d B" % (
                    mode, n, row["cold_s"], row["noop_s"], row["noop_changed"], row["upstream_bytes"] / 1e9,
                    row["hub_bytes"]), flush=True)
    finally:
        remove_hosts()
    print()
    print("image: %s:%s, %.2f GB compressed; model llmops-test/tiny-chat, %d bytes" % (
        IMAGE_REPOSITORY, IMAGE_TAG, image / 1e9, model))
    print("%-6s %3s %8s %8s %12s %14s %11s" % ("mode", "N", "cold s", "no-op s", "no-op t/t(1)", "upstream/image",
                                               "hub/model"))
    for row in rows:
        base = [r for r in rows if r["mode"] == row["mode"] and r["n"] == min(sizes)][0]
        row["noop_ratio"] = round(row["noop_s"] / base["noop_s"], 2)
        row["upstream_ratio"] = round(row["upstream_bytes"] / image, 3)
        row["hub_ratio"] = round(row["hub_bytes"] / model, 2)
        print("%-6s %3d %8.1f %8.1f %12.2f %13.3fx %10.2fx" % (row["mode"], row["n"], row["cold_s"], row["noop_s"],
                                                              row["noop_ratio"], row["upstream_ratio"], row["hub_ratio"]))
    print()
    cache = [r for r in rows if r["mode"] == "cache"]
    if cache:
        print("goal: upstream bytes with the cache = 1.0x the image for every N (at most %.3fx with the read-ahead "
              "of docs/fleet.md): %s" % ((image + read_ahead) / image, "met" if all(
                  image <= r["upstream_bytes"] <= image + read_ahead for r in cache) else "NOT met"))
        worst = max(r["noop_ratio"] for r in cache)
        print("goal: no-op t(N)/t(1) <= 1.3 with the cache: %s (worst %.2f)" % ("met" if worst <= 1.3 else "NOT met", worst))
    print("goal: hub bytes = 1.0x the model for every N: %s" % (
        "met" if all(r["hub_ratio"] == 1.0 for r in rows) else "NOT met"))
    print("goal: a no-op run reports changed=0: %s" % ("met" if all(r["noop_changed"] == 0 for r in rows) else "NOT met"))
    if compared:
        print()
        print("no-op runs on one converged host (N=%d, cache), %d alternating rounds:" % (sizes[0], COMPARE_ROUNDS))
        base = compared["geerlingguy.docker"]["median_s"]
        for name, r in compared.items():
            print("  %-20s median %5.1f s  (%s)  changed=%s  %.2fx geerlingguy.docker; control node CPU %.1f s; "
                  "%d task entries (%d skipped)" % (
                      name, r["median_s"], ", ".join("%.1f" % t for t in r["runs_s"]), r["changed"], r["median_s"] / base,
                      r["cpu_s"], r["entries"], r["skipped"]))
        print("  site.yml by role (median entries and seconds, profile_tasks):")
        for role, r in sorted(compared["site.yml"]["roles"].items(), key=lambda x: -x[1]["median_s"]):
            print("    %-40s %4d %6.1f s" % (role, r["entries"], r["median_s"]))
        print("goal: a no-op site.yml costs no more than a no-op geerlingguy.docker: %s" % (
            "met" if compared["site.yml"]["median_s"] <= base else "NOT met"))
    else:
        print("no-op site.yml against geerlingguy.docker: not measured (pass --compare-docker-role DIR)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"image_bytes": image, "model_bytes": model, "runs": rows, "compared": compared}, f, indent=2)


if __name__ == "__main__":
    main()

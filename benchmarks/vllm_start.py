#!/usr/bin/env python3
"""What one vLLM start costs the test machine, with vLLM's CPU default against the tests' setting.

The tests' servers set VLLM_ENABLE_V1_MULTIPROCESSING=0 (docs/testing.md): the model runs in vLLM's engine
process instead of a worker process of its own. This starts the test image both ways in alternating rounds,
each `docker run` alone, the tiny test model as the tests serve it (VLLM_CPU_KVCACHE_SPACE=1, --max-model-len
512, --enforce-eager, --ipc host, the model cache mounted, offline), polls /health every 0.25 s, and reads the
container's cgroup once it answers: seconds to ready, CPU seconds, memory. Prints each start, the medians and
their ratios against vLLM's default (the baseline), all from this one invocation.

Not a test: the figures depend on the machine and its load (the 1-minute load average is printed).
Usage: benchmarks/vllm_start.py [--rounds N]   (after `make images models`)
"""

import argparse
import os
import statistics
import subprocess
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = "llmops-test/vllm-openai-cpu:v0.32.0"
MODELS = os.path.join(ROOT, ".cache", "models")
NAME = "llmops-bench-vllm-start"
VARIANTS = (("vLLM's default (worker process)", []),
            ("VLLM_ENABLE_V1_MULTIPROCESSING=0 (the tests')", ["-e", "VLLM_ENABLE_V1_MULTIPROCESSING=0"]))


def docker(*args):
    return subprocess.run(["docker"] + list(args), check=True, capture_output=True, text=True).stdout.strip()


def cgroup_read(cid, *candidates):
    for path in candidates:
        try:
            with open(path % cid) as f:
                return f.read()
        except OSError:
            continue
    return None


def cpu_seconds(cid):
    v2 = cgroup_read(cid, "/sys/fs/cgroup/system.slice/docker-%s.scope/cpu.stat", "/sys/fs/cgroup/docker/%s/cpu.stat",
                     "/sys/fs/cgroup/unified/docker/%s/cpu.stat")
    if v2:
        return int(dict(line.split() for line in v2.splitlines())["usage_usec"]) / 1e6
    v1 = cgroup_read(cid, "/sys/fs/cgroup/cpuacct/docker/%s/cpuacct.usage")
    return int(v1) / 1e9 if v1 else float("nan")


def memory_mib(cid):
    raw = cgroup_read(cid, "/sys/fs/cgroup/system.slice/docker-%s.scope/memory.current",
                      "/sys/fs/cgroup/docker/%s/memory.current", "/sys/fs/cgroup/memory/docker/%s/memory.usage_in_bytes")
    return int(raw) / 1048576 if raw else float("nan")


def start(extra):
    subprocess.run(["docker", "rm", "-f", NAME], capture_output=True)
    began = time.monotonic()
    docker("run", "-d", "--name", NAME, "--ipc", "host", "-p", "127.0.0.1::8000",
           "-v", MODELS + ":/root/.cache/huggingface:ro", "-e", "HF_HUB_OFFLINE=1", "-e", "VLLM_CPU_KVCACHE_SPACE=1",
           *extra, IMAGE, "llmops-test/tiny-chat", "--max-model-len", "512", "--enforce-eager")
    port = int(docker("port", NAME, "8000").splitlines()[0].rsplit(":", 1)[1])
    try:
        while True:
            try:
                if urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=2).status == 200:
                    break
            except OSError:
                pass
            if docker("inspect", "-f", "{{.State.Running}}", NAME) != "true":
                raise SystemExit("the server exited:\n" + subprocess.run(["docker", "logs", "--tail", "30", NAME],
                                                                       capture_output=True, text=True).stderr)
            time.sleep(0.25)
        ready = time.monotonic() - began
        cid = docker("inspect", "-f", "{{.Id}}", NAME)
        return ready, cpu_seconds(cid), memory_mib(cid)
    finally:
        subprocess.run(["docker", "rm", "-f", NAME], capture_output=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("load average (1 min) at the start: %.2f" % os.getloadavg()[0])
    results = {label: [] for label, _ in VARIANTS}
    for round_ in range(1, args.rounds + 1):
        for label, extra in VARIANTS:
            ready, cpu, mem = start(extra)
            results[label].append((ready, cpu, mem))
            print("round %d, %s: ready after %.1f s, %.1f s of CPU, %.0f MiB" % (round_, label, ready, cpu, mem), flush=True)
    base = [statistics.median(x[i] for x in results[VARIANTS[0][0]]) for i in range(3)]
    print("\nmedians of %d rounds (ratio against vLLM's default):" % args.rounds)
    for label, _ in VARIANTS:
        med = [statistics.median(x[i] for x in results[label]) for i in range(3)]
        print("  %-48s ready %.1f s (%.2fx), CPU %.1f s (%.2fx), memory %.0f MiB (%.2fx)"
              % (label, med[0], med[0] / base[0], med[1], med[1] / base[1], med[2], med[2] / base[2]))
    print("load average (1 min) at the end: %.2f" % os.getloadavg()[0])


if __name__ == "__main__":
    main()

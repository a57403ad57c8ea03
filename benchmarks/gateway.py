#!/usr/bin/env python3
"""Gateway overhead, in one run: the same vLLM CPU server (tiny-chat) measured directly and through
the gateway role's HAProxy on loopback, at fixed concurrencies (LLMOPS_BENCH_CONCURRENCY, default
1 and 4). Prints the p50 latency of both, the p50 the gateway adds and the throughput ratio
(through the gateway / direct).

    make bench-gateway          (runs: .venv/bin/python benchmarks/gateway.py)

On a fleet the gateway has a host of its own and takes no CPU from the servers. On a machine with
two or more cores the benchmark keeps them apart the same way: the vLLM server on CPU 0 (docker
--cpuset-cpus, VLLM_CPU_OMP_THREADS_BIND), HAProxy and the load generator on the others; without
that, vLLM's OpenMP threads spin on every core and the gateway waits for a core, which measures
the machine's scheduler rather than the gateway. LLMOPS_BENCH_PIN=0 turns the pinning off.
Rounds alternate (direct, gateway, direct, ...; LLMOPS_BENCH_ROUNDS each, default 8); the figures
are the medians over the rounds, and the added p50 is the median of the per-round differences.
Two load generators run in the same invocation (LLMOPS_BENCH_CLIENTS, default "raw,openai"): the
light one of tests/load/raw_load.py (keep-alive HTTP/1.1 in one asyncio thread), which leaves the
gateway's core to the gateway, and the real `openai` client in threads, whose own CPU time competes
with HAProxy for that core on a two-core machine. Both send the same non-streaming requests.

A second part isolates the gateway's own cost from vLLM's jitter: the same load (raw client) sent to
a static responder (a second HAProxy that answers every request with a fixed chat-completion body in
microseconds; not a vLLM stand-in, only a backend that takes no time) directly and through the
gateway rendered with each gateway_max_request_body of LLMOPS_BENCH_BUFSIZES (default 16 KiB to
1 MiB), alternating rounds. HAProxy's per-request cost grows with its buffer size (tune.bufsize),
which is what gateway_max_request_body sets.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from statistics import median

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.join(ROOT, "tests", "load"))

from openai_load import Load  # noqa: E402
import raw_load  # noqa: E402
from vllm_testbed import API_KEY, VllmContainer  # noqa: E402

# the vLLM part runs at each of these; the static part at the largest
CONCURRENCIES = [int(c) for c in os.environ.get("LLMOPS_BENCH_CONCURRENCY", "1,4").split(",")]
CONCURRENCY = max(CONCURRENCIES)
COUNT = int(os.environ.get("LLMOPS_BENCH_COUNT", "300"))
CLIENTS = os.environ.get("LLMOPS_BENCH_CLIENTS", "raw,openai").split(",")
ROUNDS = int(os.environ.get("LLMOPS_BENCH_ROUNDS", "8"))
PIN = os.environ.get("LLMOPS_BENCH_PIN", "1") == "1" and len(os.sched_getaffinity(0)) >= 2
GATEWAY_KEY = "llmops-bench-gateway-key"
STATS_PASSWORD = "llmops-bench-stats-password"  # the statistics page's (gateway_stats_password); loopback only
CLIENT_NAMES = {"raw": "raw (tests/load/raw_load.py: keep-alive HTTP/1.1 connections in one asyncio thread)",
                "openai": "openai (the openai package, one thread per connection, as tests/load/openai_load.py)"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, deadline, key=None, status=200):
    import urllib.error
    import urllib.request
    while time.time() < deadline:
        try:
            request = urllib.request.Request(url, headers={"Authorization": "Bearer " + key} if key else {})
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == status:
                    return
        except urllib.error.HTTPError as error:
            if error.code == status:
                return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError("%s did not answer in time" % url)


BUFSIZES = [int(b) for b in os.environ.get("LLMOPS_BENCH_BUFSIZES", "16384,65536,262144,1048576").split(",") if b]
STATIC_ROUNDS, STATIC_COUNT = 5, 3000
STATIC_REPLY = '{"id": "static", "object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop", ' \
    '"message": {"role": "assistant", "content": "1 2 3 4 5"}}]}'


def static_responder(port, cpu):
    """A second HAProxy answering every request (/health too) with STATIC_REPLY at once."""
    directory = tempfile.mkdtemp(prefix="llmops-bench-static-")
    config = os.path.join(directory, "static.cfg")
    with open(config, "w") as f:
        f.write("global\n    maxconn 1000\ndefaults\n    mode http\n    timeout client 30s\n    timeout server 30s\n"
                "    timeout connect 5s\nfrontend static\n    bind 127.0.0.1:%d\n"
                "    http-request return status 200 content-type application/json string '%s'\n" % (port, STATIC_REPLY))
    command = ["haproxy", "-f", config, "-db"]
    if cpu is not None:
        command = ["taskset", "-c", str(cpu)] + command
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), directory


def static_part(cpus):
    """The gateway's own per-request cost against a backend that takes no time, per buffer size."""
    backend_port = free_port()
    responder, responder_dir = static_responder(backend_port, cpus[0] if PIN else None)
    gateways, directories = {}, [responder_dir]
    try:
        for size in BUFSIZES:
            directory = tempfile.mkdtemp(prefix="llmops-bench-gateway-")
            directories.append(directory)
            port, stats = free_port(), free_port()
            config = render_gateway(directory, backend_port, port, stats, {"gateway_max_request_body": size})
            gateways[size] = (subprocess.Popen(["haproxy", "-f", config, "-db"], stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL), port)
        for size, (_, port) in gateways.items():
            wait_ready("http://127.0.0.1:%d/v1/models" % port, time.time() + 30, GATEWAY_KEY)
        time.sleep(3)
        direct_url = "http://127.0.0.1:%d/v1" % backend_port
        raw_load.run(direct_url, API_KEY, "tiny-chat", concurrency=CONCURRENCY, count=STATIC_COUNT)
        p50 = dict((name, []) for name in ["direct"] + BUFSIZES)
        rps = dict((name, []) for name in ["direct"] + BUFSIZES)
        failed = 0
        for _ in range(STATIC_ROUNDS):
            for name in ["direct"] + BUFSIZES:
                url, key = (direct_url, API_KEY) if name == "direct" else ("http://127.0.0.1:%d/v1" % gateways[name][1],
                                                                            GATEWAY_KEY)
                r = raw_load.run(url, key, "tiny-chat", concurrency=CONCURRENCY, count=STATIC_COUNT)
                failed += r["failed"]
                p50[name].append(r["p50_s"])
                rps[name].append(r["requests_per_s"])
        print()
        print("the gateway's own cost: a static responder on CPU %s (a second HAProxy answering at once), concurrency %d, "
              "%d requests per round, %d rounds, alternating; raw client" % (
                  cpus[0] if PIN else "any", CONCURRENCY, STATIC_COUNT, STATIC_ROUNDS))
        print("| path | p50 latency (median of rounds) | added p50 (median of per-round differences) | requests/s |")
        print("|---|---|---|---|")
        print("| direct | %.0f us | - | %.0f |" % (1e6 * median(p50["direct"]), median(rps["direct"])))
        for size in BUFSIZES:
            added = 1e6 * median([g - d for d, g in zip(p50["direct"], p50[size])])
            print("| gateway, gateway_max_request_body %d | %.0f us | %.0f us | %.0f |" % (
                size, 1e6 * median(p50[size]), added, median(rps[size])))
        return failed
    finally:
        for process, _ in gateways.values():
            process.terminate()
            process.wait(10)
        responder.terminate()
        responder.wait(10)
        for directory in directories:
            shutil.rmtree(directory, ignore_errors=True)


def render_gateway(directory, backend_port, port, stats_port, gateway_vars=None):
    inventory = os.path.join(directory, "inventory.json")
    with open(inventory, "w") as f:
        json.dump({"all": {"children": {
            "gpu_hosts": {"hosts": {"bench": {"ansible_host": "127.0.0.1", "vllm_server_api_key": API_KEY,
                                              "vllm_server_instances": [{"name": "chat", "model": "llmops-test/tiny-chat",
                                                                         "served_model_name": "tiny-chat",
                                                                         "port": backend_port}]}}},
            "gateway": {"hosts": {"gw": {"ansible_connection": "local",
                                         "ansible_python_interpreter": sys.executable}}}}}}, f)
    extra = {"_gateway_dir": directory, "_gateway_config": directory + "/haproxy.cfg",
             "gateway_socket": directory + "/admin.sock", "gateway_api_key": GATEWAY_KEY, "gateway_port": port,
             "gateway_stats_port": stats_port, "gateway_bind_address": "127.0.0.1",
             "gateway_stats_bind_address": "127.0.0.1", "gateway_stats_password": STATS_PASSWORD}
    # other gateway settings to compare, e.g. LLMOPS_BENCH_GATEWAY_VARS='{"gateway_http_no_delay": false}'
    extra.update(json.loads(os.environ.get("LLMOPS_BENCH_GATEWAY_VARS", "{}")))
    extra.update(gateway_vars or {})
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"))
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", inventory,
                    os.path.join(ROOT, "tests", "unit", "fixtures", "gateway", "render.yml"), "-e", json.dumps(extra)],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    return directory + "/haproxy.cfg"


def measure(client, concurrency, base_url, key):
    if client == "raw":
        return raw_load.run(base_url, key, "tiny-chat", concurrency=concurrency, count=COUNT, max_tokens=8)
    load = Load(base_url, key, ["tiny-chat"], concurrency=concurrency, count=COUNT, seconds=600, max_tokens=8,
                stream_every=0)
    return load.start().wait()


def main():
    if shutil.which("haproxy") is None:
        subprocess.run([os.path.join(ROOT, "tests", "tooling", "ensure-haproxy")], check=True)
    cpus = sorted(os.sched_getaffinity(0))
    docker_args = []
    if PIN:
        server_cpu = cpus[0]
        docker_args = ["--cpuset-cpus", str(server_cpu), "-e", "VLLM_CPU_OMP_THREADS_BIND=%d" % server_cpu]
        # this process, the load generator's threads and HAProxy (started below) on the other cores
        os.sched_setaffinity(0, set(cpus[1:]))
    server = VllmContainer("bench-gw", "llmops-test/tiny-chat", served_model_name="tiny-chat", api_key=API_KEY,
                           docker_args=docker_args)
    directory = tempfile.mkdtemp(prefix="llmops-bench-gateway-")
    haproxy = None
    try:
        server.start()
        wait_ready(server.url + "/health", time.time() + 900)
        port, stats = free_port(), free_port()
        config = render_gateway(directory, server.port, port, stats)
        haproxy = subprocess.Popen(["haproxy", "-f", config, "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready("http://127.0.0.1:%d/" % port, time.time() + 30, status=401)
        time.sleep(3)  # the first health checks pass (rise 2 x inter 2 s... servers start UP)
        # warm-up, then for each client direct and gateway alternately, ROUNDS each
        measure("raw", CONCURRENCY, server.url + "/v1", API_KEY)
        failed = 0
        print("%d non-streaming requests (max_tokens 8) per round, %d rounds each, alternating, "
              "tiny-chat on the vLLM CPU image; %s" % (
                  COUNT, ROUNDS,
                  "vLLM on CPU %d, HAProxy and the client on CPU %s" % (cpus[0], ",".join(map(str, cpus[1:])))
                  if PIN else "nothing pinned"))
        for client, concurrency in [(c, n) for c in CLIENTS for n in CONCURRENCIES]:
            rounds = {"direct": [], "gateway": []}
            for _ in range(ROUNDS):
                rounds["direct"].append(measure(client, concurrency, server.url + "/v1", API_KEY))
                rounds["gateway"].append(measure(client, concurrency, "http://127.0.0.1:%d/v1" % port, GATEWAY_KEY))
            rows = {}
            for name, results in rounds.items():
                rows[name] = {"p50_ms": 1000 * median([r["p50_s"] for r in results]),
                              "rps": median([r["requests_per_s"] for r in results]),
                              "failed": sum(r["failed"] for r in results), "sent": sum(r["sent"] for r in results)}
                failed += rows[name]["failed"]
            added = 1000 * median([g["p50_s"] - d["p50_s"] for d, g in zip(rounds["direct"], rounds["gateway"])])
            ratio = 100.0 * median([g["requests_per_s"] / d["requests_per_s"]
                                    for d, g in zip(rounds["direct"], rounds["gateway"])])
            print()
            print("client: %s; concurrency %d" % (CLIENT_NAMES[client], concurrency))
            print("| path | sent | failed | p50 latency (median of rounds) | requests/s (median of rounds) |")
            print("|---|---|---|---|---|")
            for name in ("direct", "gateway"):
                r = rows[name]
                print("| %s | %d | %d | %.1f ms | %.2f |" % (name, r["sent"], r["failed"], r["p50_ms"], r["rps"]))
            print("added p50 (median of the per-round differences): %.2f ms (goal <= 1 ms: %s); throughput through the "
                  "gateway: %.1f %% of direct (goal >= 95 %%: %s)" % (
                      added, "met" if added <= 1.0 else "NOT met", ratio, "met" if ratio >= 95.0 else "NOT met"),
                  flush=True)
        if BUFSIZES:
            failed += static_part(cpus)
        return 1 if failed else 0
    finally:
        if haproxy:
            haproxy.terminate()
            haproxy.wait(10)
        server.remove()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

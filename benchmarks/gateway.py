#!/usr/bin/env python3
"""Gateway overhead, in one run: the same vLLM CPU server (tiny-chat) measured directly and through
the gateway role's HAProxy on loopback, at a fixed concurrency. Prints the p50 latency of both,
the p50 the gateway adds and the throughput ratio (through the gateway / direct).

    make bench-gateway          (runs: .venv/bin/python benchmarks/gateway.py)
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.join(ROOT, "tests", "load"))

from openai_load import Load  # noqa: E402
from vllm_testbed import API_KEY, VllmContainer  # noqa: E402

CONCURRENCY = int(os.environ.get("LLMOPS_BENCH_CONCURRENCY", "4"))
COUNT = int(os.environ.get("LLMOPS_BENCH_COUNT", "60"))
GATEWAY_KEY = "llmops-bench-gateway-key"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, deadline):
    import urllib.request
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError("%s did not answer in time" % url)


def render_gateway(directory, backend_port, port, stats_port):
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
             "gateway_stats_bind_address": "127.0.0.1"}
    # other gateway settings to compare, e.g. LLMOPS_BENCH_GATEWAY_VARS='{"gateway_http_no_delay": false}'
    extra.update(json.loads(os.environ.get("LLMOPS_BENCH_GATEWAY_VARS", "{}")))
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"))
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", inventory,
                    os.path.join(ROOT, "tests", "unit", "fixtures", "gateway", "render.yml"), "-e", json.dumps(extra)],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    return directory + "/haproxy.cfg"


def measure(base_url, key):
    load = Load(base_url, key, ["tiny-chat"], concurrency=CONCURRENCY, count=COUNT, seconds=600, max_tokens=8,
                stream_every=0)
    return load.start().wait()


def main():
    if shutil.which("haproxy") is None:
        subprocess.run([os.path.join(ROOT, "tests", "tooling", "ensure-haproxy")], check=True)
    server = VllmContainer("bench-gw", "llmops-test/tiny-chat", served_model_name="tiny-chat", api_key=API_KEY)
    directory = tempfile.mkdtemp(prefix="llmops-bench-gateway-")
    haproxy = None
    try:
        server.start()
        wait_ready(server.url + "/health", time.time() + 900)
        port, stats = free_port(), free_port()
        config = render_gateway(directory, server.port, port, stats)
        haproxy = subprocess.Popen(["haproxy", "-f", config, "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_ready("http://127.0.0.1:%d/stats" % stats, time.time() + 30)
        time.sleep(3)  # the first health checks pass (rise 2 x inter 2 s... servers start UP)
        # warm-up, then direct and gateway alternately, twice each; the table sums both rounds
        measure(server.url + "/v1", API_KEY)
        rounds = {"direct": [], "gateway": []}
        for _ in range(2):
            rounds["direct"].append(measure(server.url + "/v1", API_KEY))
            rounds["gateway"].append(measure("http://127.0.0.1:%d/v1" % port, GATEWAY_KEY))
        rows = {}
        for name, results in rounds.items():
            failed = sum(r["failed"] for r in results)
            rows[name] = {"p50_ms": 1000 * sorted(r["p50_s"] for r in results)[0] if len(results) == 1 else
                          1000 * sum(r["p50_s"] for r in results) / len(results),
                          "rps": sum(r["requests_per_s"] for r in results) / len(results), "failed": failed,
                          "sent": sum(r["sent"] for r in results)}
        print("concurrency %d, %d non-streaming requests (max_tokens 8) per round, 2 rounds each, tiny-chat on the "
              "vLLM CPU image" % (CONCURRENCY, COUNT))
        print("| path | sent | failed | p50 latency | requests/s |")
        print("|---|---|---|---|---|")
        for name in ("direct", "gateway"):
            r = rows[name]
            print("| %s | %d | %d | %.1f ms | %.2f |" % (name, r["sent"], r["failed"], r["p50_ms"], r["rps"]))
        print("added p50: %.1f ms; throughput through the gateway: %.1f %% of direct" % (
            rows["gateway"]["p50_ms"] - rows["direct"]["p50_ms"], 100.0 * rows["gateway"]["rps"] / rows["direct"]["rps"]))
        return 1 if rows["direct"]["failed"] or rows["gateway"]["failed"] else 0
    finally:
        if haproxy:
            haproxy.terminate()
            haproxy.wait(10)
        server.remove()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

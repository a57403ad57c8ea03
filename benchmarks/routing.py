#!/usr/bin/env python3
"""Cache-aware routing, measured in one run: the same workload through the gateway role's HAProxy with
each balance policy in turn (leastconn, header affinity, prefix hash), in front of vLLM CPU servers
with prefix caching.

    make bench-routing          (runs: .venv/bin/python benchmarks/routing.py)

Servers: LLMOPS_BENCH_SERVERS (default 2) vLLM CPU containers, each pinned to a CPU of its own (docker
--cpuset-cpus, VLLM_CPU_OMP_THREADS_BIND), serving llmops-test/prefill-chat (benchmarks/prefill_model.py:
a random-weight Llama of 27 M parameters, generated locally, large enough that the prefill of a long
prompt is most of its time to first token on one core) with --enable-prefix-caching and --enforce-eager.
Each server's KV cache (--kv-cache-memory-bytes) holds LLMOPS_BENCH_CACHE_SHARE (default 0.6) of one
segment's prefixes: the fleet's cache holds the working set, no one server's does, which is the case
routing can change (a working set that fits every server costs leastconn one miss per server and prefix).

Gateways: one HAProxy per policy, each rendered from the role's own template by its own tasks
(tests/unit/fixtures/gateway/render.yml, as benchmarks/gateway.py does), on loopback; HAProxy and the
client (asyncio, one keep-alive connection per worker) are not pinned. The role's defaults hold but
gateway_affinity (none, header with X-Session-Id, prefix).

Workload: a round runs one segment per policy (their order rotates from round to round); a segment
draws LLMOPS_BENCH_PREFIXES (K, default 16) fresh shared prefixes (a system prompt of about
LLMOPS_BENCH_PREFIX_WORDS words; fresh, so no segment finds another's prefixes in a cache) and sends
LLMOPS_BENCH_REQUESTS (default 128) streamed chat completions from LLMOPS_BENCH_CONCURRENCY (default 4)
workers, each a uniformly drawn prefix with a short suffix of its own (the user message), ignore_eos and
max_tokens LLMOPS_BENCH_MAX_TOKENS (default 8). Requests of one prefix carry one X-Session-Id, as a
client that names its conversations would. Every stream is read to its end and checked: a choice with
finish_reason "length", a usage chunk with completion_tokens equal to max_tokens, then [DONE].

Figures per policy over LLMOPS_BENCH_ROUNDS (default 3) rounds: the prefix-cache hit rate of each server
from vLLM's own counters (vllm:prefix_cache_hits / vllm:prefix_cache_queries, read before and after each
segment) and of the fleet, against the ideal (every request after its prefix's first a hit on the
prefix's whole blocks: the tokens two requests of a prefix share, from vLLM's /tokenize, rounded down to
the block size vLLM reports); time to first token p50/p99 (the first streamed chunk with a choice);
throughput (median of the segments' requests/s); each server's share of the requests (HAProxy's stot)
and the most it held at once (smax) against the bound of hash-balance-factor.
"""

import asyncio
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from statistics import median

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.join(ROOT, "tests", "load"))

from openai_load import percentile  # noqa: E402
from vllm_testbed import API_KEY, IMAGE, VllmContainer  # noqa: E402

SERVERS = int(os.environ.get("LLMOPS_BENCH_SERVERS", "2"))
ROUNDS = int(os.environ.get("LLMOPS_BENCH_ROUNDS", "3"))
PREFIXES = int(os.environ.get("LLMOPS_BENCH_PREFIXES", "16"))
REQUESTS = int(os.environ.get("LLMOPS_BENCH_REQUESTS", "128"))
CONCURRENCY = int(os.environ.get("LLMOPS_BENCH_CONCURRENCY", "4"))
PREFIX_WORDS = int(os.environ.get("LLMOPS_BENCH_PREFIX_WORDS", "1200"))
SUFFIX_WORDS = 12
MAX_TOKENS = int(os.environ.get("LLMOPS_BENCH_MAX_TOKENS", "8"))
CACHE_SHARE = float(os.environ.get("LLMOPS_BENCH_CACHE_SHARE", "0.6"))
MODELS = os.path.abspath(os.environ.get("LLMOPS_BENCH_MODELS", os.path.join(ROOT, ".cache", "routing-model")))
MODEL, SERVED = "llmops-test/prefill-chat", "prefill-chat"
MAX_MODEL_LEN = 4096
GATEWAY_KEY = "llmops-bench-routing-key"
SESSION_HEADER = "X-Session-Id"
POLICIES = [("leastconn", {"gateway_affinity": "none"}),
            ("header", {"gateway_affinity": "header", "gateway_affinity_header": SESSION_HEADER}),
            ("prefix", {"gateway_affinity": "prefix"})]
# The words of the test tokenizer's corpus (make_tiny_model.py): any other character is <unk>.
WORDS = ("The quick brown fox jumps over the lazy dog. vLLM serves large language models through an OpenAI compatible "
         "API. Ansible roles install Docker, pull the image and start the inference server. Hello! How can I help you "
         "today? Please answer in one short sentence. The system says: you are a helpful assistant. The user asks a "
         "question. A tiny model for tests: random weights, deterministic output, no downloads.").split()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url, body=None, key=API_KEY, timeout=60):
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def wait_ready(url, deadline):
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    raise RuntimeError("%s did not answer in time" % url)


def ensure_model():
    if os.path.exists(os.path.join(MODELS, "hub", "models--llmops-test--prefill-chat", "refs", "main")):
        return
    os.makedirs(MODELS, exist_ok=True)
    subprocess.run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "python3",
                    "-v", os.path.join(ROOT, "benchmarks") + ":/bench:ro", "-v", MODELS + ":/out", IMAGE,
                    "/bench/prefill_model.py", "/out"], check=True)


def metrics(server):
    """vLLM's prefix-cache counters and its block size, from its /metrics (no key needed)."""
    with urllib.request.urlopen(server.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {"hits": 0.0, "queries": 0.0, "block_size": None}
    for line in text.splitlines():
        if line.startswith("vllm:prefix_cache_hits_total"):
            values["hits"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("vllm:prefix_cache_queries_total"):
            values["queries"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("vllm:cache_config_info") and 'block_size="' in line:
            values["block_size"] = int(line.split('block_size="', 1)[1].split('"', 1)[0])
    return values


def haproxy_stats(stats_port):
    """Per server of the model's backend: requests sent (stot) and the most in flight at once (smax)."""
    with urllib.request.urlopen("http://127.0.0.1:%d/stats;csv" % stats_port, timeout=10) as response:
        lines = response.read().decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(",")))
        if row.get("pxname", "").startswith("model") and row.get("svname") not in ("FRONTEND", "BACKEND"):
            rows[row["svname"]] = {"stot": int(row["stot"] or 0), "smax": int(row["smax"] or 0)}
    return rows


def render_gateways(directory, servers):
    """One gateway per policy, rendered in one ansible-playbook run (a gateway host per policy)."""
    gateways = {}
    for name, settings in POLICIES:
        path = os.path.join(directory, name)
        os.makedirs(path)
        gateways[name] = dict(settings, ansible_connection="local", ansible_python_interpreter=sys.executable,
                              gateway_port=free_port(), gateway_stats_port=free_port(), test_dir=path,
                              gateway_bind_address="127.0.0.1", gateway_stats_bind_address="127.0.0.1")
    inventory = {"all": {"children": {
        "gpu_hosts": {"hosts": dict(("srv%d" % i, {
            "ansible_host": "127.0.0.1", "vllm_server_api_key": API_KEY,
            "vllm_server_instances": [{"name": "vllm", "model": MODEL, "served_model_name": SERVED, "port": s.port}]})
            for i, s in enumerate(servers))},
        "gateway": {"hosts": gateways}}}}
    with open(os.path.join(directory, "inventory.json"), "w") as f:
        json.dump(inventory, f)
    extra = {"_gateway_dir": "{{ test_dir }}", "_gateway_config": "{{ test_dir }}/haproxy.cfg",
             "gateway_socket": "{{ test_dir }}/admin.sock", "gateway_api_key": GATEWAY_KEY}
    # other gateway settings to compare, e.g. LLMOPS_BENCH_GATEWAY_VARS='{"gateway_hash_balance_factor": 200}'
    extra.update(json.loads(os.environ.get("LLMOPS_BENCH_GATEWAY_VARS", "{}")))
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"))
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i",
                    os.path.join(directory, "inventory.json"),
                    os.path.join(ROOT, "tests", "unit", "fixtures", "gateway", "render.yml"), "-e", json.dumps(extra)],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    return gateways


def text(rng, words):
    return " ".join(rng.choice(WORDS) for _ in range(words))


async def _read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line))
    return int(lines[0].split()[1]), headers


async def _body_parts(reader, headers):
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                return
            yield data[:-2]
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        raise RuntimeError("a reply without a length")


async def one_request(connection, host, port, body, headers):
    """Sends one streamed chat completion; returns (ttft, latency, usage). Raises on any fault of the stream."""
    payload = json.dumps(body).encode()
    extra = "".join("%s: %s\r\n" % item for item in headers.items())
    request = ("POST /v1/chat/completions HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
               "Content-Type: application/json\r\n%sContent-Length: %d\r\n\r\n" % (
                   host, port, GATEWAY_KEY, extra, len(payload))).encode() + payload
    start = time.monotonic()
    if connection[0] is None:
        connection[:] = await asyncio.open_connection(host, port)
    reader, writer = connection
    writer.write(request)
    status, reply_headers = await _read_head(reader)
    ttft = finish = usage = None
    done = False
    buffer = b""
    async for part in _body_parts(reader, reply_headers):
        if status != 200:
            raise RuntimeError("HTTP %d: %s" % (status, part[:200]))
        buffer += part
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            data = event.strip()[len(b"data: "):] if event.strip().startswith(b"data: ") else None
            if data is None:
                continue
            if data == b"[DONE]":
                done = True
                continue
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError("an error in the stream: %s" % str(chunk["error"])[:200])
            if chunk.get("choices"):
                if ttft is None:
                    ttft = time.monotonic() - start
                finish = chunk["choices"][0].get("finish_reason") or finish
            if chunk.get("usage"):
                usage = chunk["usage"]
    if reply_headers.get("connection", "").lower() == "close":
        writer.close()
        connection[:] = [None, None]
    if not done or finish != "length" or not usage or usage.get("completion_tokens") != MAX_TOKENS or ttft is None:
        raise RuntimeError("an incomplete stream: done %s, finish_reason %s, usage %s" % (done, finish, usage))
    return ttft, time.monotonic() - start, usage


def run_segment(port, schedule, prefixes, suffixes, session):
    """Sends the schedule's requests from CONCURRENCY workers; returns per-request records and the wall time."""
    records, failures = [], []
    queue = list(enumerate(schedule))
    queue.reverse()

    async def worker():
        connection = [None, None]
        while queue:
            number, k = queue.pop()
            body = {"model": SERVED, "max_tokens": MAX_TOKENS, "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True},
                    "messages": [{"role": "system", "content": prefixes[k]}, {"role": "user", "content": suffixes[number]}]}
            try:
                ttft, latency, usage = await one_request(connection, "127.0.0.1", port, body,
                                                         {SESSION_HEADER: "%s-%d" % (session, k)})
                records.append({"k": k, "ttft": ttft, "latency": latency, "prompt_tokens": usage["prompt_tokens"]})
            except Exception as exc:  # every failure counts
                failures.append("%s: %s" % (type(exc).__name__, str(exc)[:200]))
                if connection[1] is not None:
                    connection[1].close()
                connection[:] = [None, None]
        if connection[1] is not None:
            connection[1].close()

    async def main():
        await asyncio.gather(*[worker() for _ in range(CONCURRENCY)])

    started = time.monotonic()
    asyncio.run(main())
    return records, failures, time.monotonic() - started


def shared_tokens(server, prefix):
    """How many leading tokens two requests of one prefix share (their suffixes differ at once)."""
    tokens = []
    for suffix in ("Hello! How can I help you today?", "Numbers 0 1 2 3"):
        reply = http_json(server.url + "/tokenize", {"model": SERVED, "add_generation_prompt": True, "messages": [
            {"role": "system", "content": prefix}, {"role": "user", "content": suffix}]})
        tokens.append(reply["tokens"])
    common = 0
    for a, b in zip(*tokens):
        if a != b:
            break
        common += 1
    return common


def bound_slots(factor, concurrency, servers):
    """The most requests HAProxy's bounded-load check (chash_server_is_eligible) lets one server hold when
    `concurrency` requests are in flight in all, servers of equal weight."""
    if not factor:
        return None
    total = (concurrency * factor + 99) // 100
    return max(1, math.ceil(total / servers))


def main():
    if shutil.which("haproxy") is None:
        subprocess.run([os.path.join(ROOT, "tests", "tooling", "ensure-haproxy")], check=True)
    ensure_model()
    cpus = sorted(os.sched_getaffinity(0))
    rng = random.Random(20261207)
    # the test tokenizer gives about 1.1 tokens a word (1,200 words: 1,311 tokens with the chat template)
    prefix_tokens_guess = int(PREFIX_WORDS * 1.1) + 40
    block_bytes = 128 * 2 * 8 * 8 * 64 * 2  # a 128-token block of the model's KV (K and V, 8 layers, 8 heads of 64, bf16)
    prefix_blocks = math.ceil(prefix_tokens_guess / 128.0)
    cache_prefixes = max(1, int(round(CACHE_SHARE * PREFIXES)))
    # the prefixes the share holds, the blocks of the requests in flight, and one request of max_model_len
    kv_bytes = max(cache_prefixes * prefix_blocks + CONCURRENCY * 2, MAX_MODEL_LEN // 128 + 1) * block_bytes
    servers = []
    for i in range(SERVERS):
        cpu = cpus[i % len(cpus)]
        servers.append(VllmContainer(
            "routing-%d" % i, MODEL, served_model_name=SERVED, api_key=API_KEY, models=MODELS, cpu_kvcache_space=None,
            docker_args=["--cpuset-cpus", str(cpu), "-e", "VLLM_CPU_OMP_THREADS_BIND=%d" % cpu],
            args=["--max-model-len", str(MAX_MODEL_LEN), "--enforce-eager", "--enable-prefix-caching",
                  "--kv-cache-memory-bytes", str(kv_bytes)]))
    directory = tempfile.mkdtemp(prefix="llmops-bench-routing-")
    processes = []
    try:
        for server in servers:
            server.start()
        for server in servers:
            wait_ready(server.url + "/health", time.time() + 900)
        gateways = render_gateways(directory, servers)
        for name, _ in POLICIES:
            processes.append(subprocess.Popen(["haproxy", "-f", os.path.join(gateways[name]["test_dir"], "haproxy.cfg"),
                                               "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for name, _ in POLICIES:
            wait_ready("http://127.0.0.1:%d/stats" % gateways[name]["gateway_stats_port"], time.time() + 30)
        config = open(os.path.join(gateways["prefix"]["test_dir"], "haproxy.cfg")).read()
        factor = int(config.split("hash-balance-factor ", 1)[1].split()[0]) if "hash-balance-factor " in config else 0
        block_size = metrics(servers[0])["block_size"] or 128
        time.sleep(3)
        # warm-up: each server answers a few requests of its own prefix through the leastconn gateway
        warm = [text(rng, PREFIX_WORDS) for _ in range(SERVERS)]
        run_segment(gateways["leastconn"]["gateway_port"], [i % SERVERS for i in range(2 * SERVERS)], warm,
                    [text(rng, SUFFIX_WORDS) for _ in range(2 * SERVERS)], "warm")
        print("%s, %d vLLM CPU servers (%s) on CPUs %s, each with KV cache for %d of a segment's %d prefixes "
              "(%d MiB, block size %d); %d rounds; per segment %d streamed requests from %d workers, max_tokens %d; "
              "hash-balance-factor %d" % (
                  time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), SERVERS, MODEL,
                  ",".join(str(cpus[i % len(cpus)]) for i in range(SERVERS)), cache_prefixes, PREFIXES,
                  kv_bytes // 2 ** 20, block_size, ROUNDS, REQUESTS, CONCURRENCY, MAX_TOKENS, factor), flush=True)
        results = dict((name, {"records": [], "failures": [], "rps": [], "hits": [0.0] * SERVERS,
                               "queries": [0.0] * SERVERS, "ideal_hits": 0, "prompt_tokens": 0, "stot": {}})
                       for name, _ in POLICIES)
        for round_number in range(ROUNDS):
            order = POLICIES[round_number % len(POLICIES):] + POLICIES[:round_number % len(POLICIES)]
            for name, _ in order:
                prefixes = [text(rng, PREFIX_WORDS) for _ in range(PREFIXES)]
                schedule = [rng.randrange(PREFIXES) for _ in range(REQUESTS)]
                suffixes = ["Question %d: %s" % (n, text(rng, SUFFIX_WORDS)) for n in range(REQUESTS)]
                shared = [shared_tokens(servers[0], p) for p in prefixes]
                before = [metrics(s) for s in servers]
                stats_before = haproxy_stats(gateways[name]["gateway_stats_port"])
                records, failures, seconds = run_segment(gateways[name]["gateway_port"], schedule, prefixes, suffixes,
                                                         "r%d-%s" % (round_number, name))
                time.sleep(1)
                after = [metrics(s) for s in servers]
                stats_after = haproxy_stats(gateways[name]["gateway_stats_port"])
                result = results[name]
                result["records"] += records
                result["failures"] += failures
                result["rps"].append(len(records) / seconds)
                for i in range(SERVERS):
                    result["hits"][i] += after[i]["hits"] - before[i]["hits"]
                    result["queries"][i] += after[i]["queries"] - before[i]["queries"]
                for server_name, row in stats_after.items():
                    result["stot"][server_name] = result["stot"].get(server_name, 0) + row["stot"] - \
                        stats_before.get(server_name, {"stot": 0})["stot"]
                seen = set()
                for k in schedule:
                    if k in seen:
                        result["ideal_hits"] += shared[k] // block_size * block_size
                    seen.add(k)
                result["prompt_tokens"] += sum(r["prompt_tokens"] for r in records)
                hits = sum(a["hits"] - b["hits"] for a, b in zip(after, before))
                queries = sum(a["queries"] - b["queries"] for a, b in zip(after, before))
                print("round %d, %-9s: %d ok, %d failed, %.1f s, %.2f requests/s, hit rate %.1f %%, TTFT p50 %.3f s" % (
                    round_number + 1, name, len(records), len(failures), seconds, len(records) / seconds,
                    100.0 * hits / queries if queries else 0, percentile([r["ttft"] for r in records], 50) or 0),
                    flush=True)
        bound = bound_slots(factor, CONCURRENCY, SERVERS)
        smax = dict((name, haproxy_stats(gateways[name]["gateway_stats_port"])) for name, _ in POLICIES)
        print()
        print("| policy | requests (failed) | hit rate (ideal) | per server hit rate | TTFT p50 | TTFT p99 | requests/s "
              "(median of rounds) | per server share of requests | most in flight per server (bound) |")
        print("|---|---|---|---|---|---|---|---|---|")
        summary = {}
        for name, _ in POLICIES:
            r = results[name]
            ttfts = [x["ttft"] for x in r["records"]]
            hit_rate = sum(r["hits"]) / sum(r["queries"]) if sum(r["queries"]) else 0.0
            ideal = r["ideal_hits"] / float(r["prompt_tokens"]) if r["prompt_tokens"] else 0.0
            total = sum(r["stot"].values()) or 1
            names = sorted(r["stot"])
            summary[name] = {"hit_rate": hit_rate, "ideal": ideal, "p50": percentile(ttfts, 50),
                             "p99": percentile(ttfts, 99), "rps": median(r["rps"]), "failed": len(r["failures"]),
                             "smax": max(smax[name][n]["smax"] for n in names)}
            print("| %s | %d (%d) | %.1f %% (%.1f %%) | %s | %.3f s | %.3f s | %.2f | %s | %s |" % (
                name, len(r["records"]) + len(r["failures"]), len(r["failures"]), 100 * hit_rate, 100 * ideal,
                ", ".join("%.1f %%" % (100.0 * h / q if q else 0) for h, q in zip(r["hits"], r["queries"])),
                summary[name]["p50"], summary[name]["p99"], summary[name]["rps"],
                ", ".join("%.0f %%" % (100.0 * r["stot"][n] / total) for n in names),
                ", ".join(str(smax[name][n]["smax"]) for n in names) + (
                    " (%d)" % bound if bound and name != "leastconn" else "")))
            for failure in r["failures"][:5]:
                print("  failure: %s" % failure)
        lc, px = summary["leastconn"], summary["prefix"]
        goals = [("prefix hit rate within 10 %% of the ideal (%.1f %% of %.1f %%)" % (100 * px["hit_rate"], 100 * px["ideal"]),
                  px["hit_rate"] >= 0.9 * px["ideal"]),
                 ("prefix TTFT p50 at least 2x lower than leastconn's (%.2fx)" % (lc["p50"] / px["p50"]),
                  lc["p50"] >= 2 * px["p50"]),
                 ("prefix throughput not lower than leastconn's (%.2f vs %.2f requests/s)" % (px["rps"], lc["rps"]),
                  px["rps"] >= lc["rps"]),
                 ("no server above the bound with prefix (most in flight %d, bound %s)" % (px["smax"], bound),
                  bound is None or px["smax"] <= bound)]
        print()
        for goal, met in goals:
            print("%s: %s" % (goal, "met" if met else "NOT met"))
        return 1 if any(s["failed"] for s in summary.values()) else 0
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)
        for server in servers:
            server.remove()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

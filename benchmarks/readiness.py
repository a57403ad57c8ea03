#!/usr/bin/env python3
"""How soon after a vLLM server becomes ready does each way of waiting for it return?

Two ways of waiting are compared, each started the way users start them:

  - llmops.vllm.verify_endpoint (`ansible localhost -m llmops.vllm.verify_endpoint`, readiness only),
    which polls inside the module with a back-off from 50 ms to 250 ms;
  - the common playbook loop: ansible.builtin.uri on /health with until/retries and delay: 5
    (benchmarks/uri-wait.yml).

A uri loop with delay: 5 notices readiness at its next poll, a moment that falls anywhere in the 5 s
between two polls, so its lag is spread over 0-5 s and a handful of starts cannot measure it. Hence
two parts:

  1. Trials against a STAND-IN for vLLM (not a test double of anything this collection ships: a
     benchmark fixture): a tiny HTTP server on 127.0.0.1 that, like vLLM, refuses connections while
     "loading" and answers /health and /v1/models once "ready". It becomes ready at a random moment,
     uniform in [--ready-min, --ready-max] seconds after both waiters started, so each trial falls at a
     random phase of the uri loop's 5 s cycle. The server notes the exact moment it began to listen.
  2. A few starts of the real vLLM server (the CPU build of 0.32.0 serving the tiny test model), where
     a tight poller (GET /health every 20 ms) notes the moment /health first answered 200.

For each trial: how long after readiness each waiter returned. Printed per part: mean, median,
standard deviation, 10th and 90th percentile, min and max of both, the ratio of the means with a
bootstrap 95% interval, and the share of trials in which the module returned within 1 s.

Not a test: the numbers depend on the machine and its load (the 1-minute load average is printed).
Run it with `make bench` (after `make images models`); docs/benchmarks.md has a measured table.

Usage: benchmarks/readiness.py [--trials N] [--starts N] [--seed S] [--json FILE]
"""

import argparse
import json
import os
import random
import secrets
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BIN = os.path.dirname(sys.executable)
IMAGE = os.environ.get("LLMOPS_BENCH_IMAGE", "llmops-test/vllm-openai-cpu:v0.32.0")
MODELS = os.path.abspath(os.environ.get("LLMOPS_BENCH_MODELS", os.path.join(ROOT, ".cache", "models")))
PREFIX = os.environ.get("LLMOPS_BENCH_PREFIX", "llmops-bench-") + secrets.token_hex(3) + "-"
POLL = 0.02


def docker(*args):
    return subprocess.run(["docker"] + list(args), check=True, capture_output=True, text=True).stdout.strip()


def ansible_env():
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_NOCOLOR="1", PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    env.pop("VLLM_API_KEY", None)
    env.pop("OPENAI_API_KEY", None)
    return env


class Watcher(threading.Thread):
    """Runs a command and notes the moment it returned."""

    def __init__(self, name, command):
        super().__init__(daemon=True)
        self.name_ = name
        self.command = command
        self.returned_at = None
        self.rc = None
        self.output = ""

    def run(self):
        process = subprocess.run(self.command, cwd=ROOT, env=ansible_env(), capture_output=True, text=True, timeout=1800)
        self.returned_at = time.monotonic()
        self.rc = process.returncode
        self.output = process.stdout + process.stderr


def waiters(url):
    module = Watcher("verify_endpoint", [
        os.path.join(BIN, "ansible"), "localhost", "-m", "llmops.vllm.verify_endpoint",
        "-a", json.dumps({"url": url, "chat": False, "stream": False, "timeout": 900})])
    uri = Watcher("uri loop", [os.path.join(BIN, "ansible-playbook"), "benchmarks/uri-wait.yml", "-e", "vllm_url=" + url])
    return module, uri


def finish(watchers):
    for watcher in watchers:
        watcher.join()
    for watcher in watchers:
        if watcher.rc != 0:
            raise SystemExit("%s failed (rc %s):\n%s" % (watcher.name_, watcher.rc, watcher.output[-3000:]))


# ---- part 1: the stand-in ---------------------------------------------------------------------------


class StandIn(object):
    """Refuses connections (nothing listens) until ready_in seconds have passed, then serves /health and
    /v1/models as vLLM does; ready_at is the moment it began to listen."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/health":
                body, kind = b"", "text/plain"
            elif self.path == "/v1/models":
                body, kind = json.dumps({"object": "list", "data": [{"id": "stand-in", "object": "model"}]}).encode(), "application/json"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    def __init__(self, ready_in):
        # a free port, given back at once: nothing listens there until the server binds it again
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.ready_in = ready_in
        self.ready_at = None
        self.server = None
        self.timer = None

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def _listen(self):
        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self.Handler)
        self.ready_at = time.monotonic()
        self.server.serve_forever(poll_interval=0.05)

    def start(self):
        self.timer = threading.Timer(self.ready_in, self._listen)
        self.timer.daemon = True
        self.timer.start()

    def stop(self):
        self.timer.cancel()
        if self.server:
            self.server.shutdown()
            self.server.server_close()


def stand_in_trial(rng, ready_min, ready_max):
    stand_in = StandIn(rng.uniform(ready_min, ready_max))
    module, uri = waiters(stand_in.url)
    try:
        stand_in.start()
        module.start()
        uri.start()
        finish((module, uri))
    finally:
        stand_in.stop()
    if stand_in.ready_at is None:
        raise SystemExit("the stand-in never began to listen")
    return dict(ready_in=stand_in.ready_in, load=os.getloadavg()[0],
                module=module.returned_at - stand_in.ready_at, uri=uri.returned_at - stand_in.ready_at)


# ---- part 2: the real vLLM server -------------------------------------------------------------------


class Poller(threading.Thread):
    """GET /health every 20 ms; notes the moment it first answered 200."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url = url
        self.ready_at = None
        self.stop = False

    def run(self):
        while not self.stop:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as response:
                    if response.status == 200:
                        self.ready_at = time.monotonic()
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(POLL)


def vllm_start(index):
    name = "%s%d" % (PREFIX, index)
    docker("run", "-d", "--name", name, "--shm-size", "512m", "-p", "127.0.0.1::8000",
           "-v", MODELS + ":/root/.cache/huggingface:ro", "-e", "HF_HUB_OFFLINE=1", "-e", "VLLM_CPU_KVCACHE_SPACE=1",
           IMAGE, "llmops-test/tiny-chat", "--served-model-name", "tiny-chat", "--max-model-len", "2048", "--enforce-eager")
    started = time.monotonic()
    try:
        port = docker("port", name, "8000").splitlines()[0].rsplit(":", 1)[1]
        url = "http://127.0.0.1:%s" % port
        poller = Poller(url)
        module, uri = waiters(url)
        for thread in (poller, module, uri):
            thread.start()
        finish((module, uri))
        poller.stop = True
        poller.join(5)
        if poller.ready_at is None:
            raise SystemExit("the poller never saw /health answer 200")
        return dict(ready_in=poller.ready_at - started, load=os.getloadavg()[0],
                    module=module.returned_at - poller.ready_at, uri=uri.returned_at - poller.ready_at)
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True)


# ---- statistics -------------------------------------------------------------------------------------


def percentile(values, q):
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def describe(values):
    return dict(n=len(values), mean=statistics.fmean(values), median=statistics.median(values),
                stdev=statistics.stdev(values) if len(values) > 1 else 0.0,
                p10=percentile(values, 0.1), p90=percentile(values, 0.9), min=min(values), max=max(values))


def bootstrap_ratio(module, uri, rng, rounds=2000):
    """95% interval of mean(uri) / mean(module), resampling the trials (pairs) with replacement."""
    pairs = list(zip(module, uri))
    ratios = []
    for dummy in range(rounds):
        sample = [rng.choice(pairs) for dummy2 in pairs]
        m = statistics.fmean(p[0] for p in sample)
        ratios.append(statistics.fmean(p[1] for p in sample) / m if m > 0 else float("inf"))
    return percentile(ratios, 0.025), percentile(ratios, 0.975)


def report(title, runs, rng):
    module = [r["module"] for r in runs]
    uri = [r["uri"] for r in runs]
    stats = dict(module=describe(module), uri=describe(uri))
    stats["ratio_of_means"] = stats["uri"]["mean"] / stats["module"]["mean"]
    stats["ratio_ci95"] = bootstrap_ratio(module, uri, rng) if len(runs) > 1 else (stats["ratio_of_means"],) * 2
    stats["module_within_1s"] = sum(1 for m in module if m <= 1.0) / float(len(module))
    stats["uri_slower_in"] = sum(1 for m, u in zip(module, uri) if u > m) / float(len(module))
    stats["load_median"] = statistics.median(r["load"] for r in runs)
    print()
    print("%s: %d trials, seconds from readiness until the waiter returned (1-min load median %.1f)"
          % (title, len(runs), stats["load_median"]))
    print("%-16s %6s %7s %7s %7s %7s %7s %7s" % ("", "mean", "median", "stdev", "p10", "p90", "min", "max"))
    for key, label in (("module", "verify_endpoint"), ("uri", "uri loop")):
        s = stats[key]
        print("%-16s %5.2fs %6.2fs %6.2fs %6.2fs %6.2fs %6.2fs %6.2fs"
              % (label, s["mean"], s["median"], s["stdev"], s["p10"], s["p90"], s["min"], s["max"]))
    print("uri loop / verify_endpoint, ratio of the means: %.1fx (bootstrap 95%% interval %.1fx-%.1fx)"
          % (stats["ratio_of_means"], stats["ratio_ci95"][0], stats["ratio_ci95"][1]))
    print("verify_endpoint returned within 1 s of readiness in %.0f%% of the trials; the uri loop returned later in %.0f%%"
          % (100 * stats["module_within_1s"], 100 * stats["uri_slower_in"]))
    return stats


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30, help="trials against the stand-in (default 30)")
    parser.add_argument("--starts", type=int, default=3, help="starts of the real vLLM server (default 3; 0 skips them)")
    parser.add_argument("--ready-min", type=float, default=4.0, help="earliest moment the stand-in becomes ready (s)")
    parser.add_argument("--ready-max", type=float, default=9.0,
                        help="latest moment the stand-in becomes ready (s); keep it at least 5 s above --ready-min so "
                             "that readiness falls at every phase of the uri loop's 5 s cycle")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the ready moments and the bootstrap")
    parser.add_argument("--json", help="also write the measurements to this file")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    result = dict(seed=seed, image=IMAGE)

    if args.trials > 0:
        print("Part 1: %d trials against a stand-in that becomes ready %.0f-%.0f s after both waiters started (seed %d)"
              % (args.trials, args.ready_min, args.ready_max, seed))
        print("%-6s %9s %16s %10s %6s" % ("trial", "ready in", "verify_endpoint", "uri loop", "load"))
        runs = []
        for index in range(1, args.trials + 1):
            run = stand_in_trial(rng, args.ready_min, args.ready_max)
            runs.append(run)
            print("%-6d %8.2fs %15.2fs %9.2fs %6.1f" % (index, run["ready_in"], run["module"], run["uri"], run["load"]), flush=True)
        result["stand_in"] = dict(report("Stand-in", runs, rng), runs=runs)

    if args.starts > 0:
        if not os.path.isdir(os.path.join(MODELS, "hub", "models--llmops-test--tiny-chat")):
            raise SystemExit("the tiny models are missing in %s: run make models" % MODELS)
        print()
        print("Part 2: %d starts of the real vLLM server (%s, tiny-chat)" % (args.starts, IMAGE))
        print("%-6s %9s %16s %10s %6s" % ("start", "ready in", "verify_endpoint", "uri loop", "load"))
        runs = []
        for index in range(1, args.starts + 1):
            run = vllm_start(index)
            runs.append(run)
            print("%-6d %8.1fs %15.2fs %9.2fs %6.1f" % (index, run["ready_in"], run["module"], run["uri"], run["load"]), flush=True)
        result["vllm"] = dict(report("Real vLLM", runs, rng), runs=runs)

    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

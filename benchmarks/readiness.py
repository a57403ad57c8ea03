#!/usr/bin/env python3
"""How soon after vLLM becomes ready does each way of waiting for it return?

Starts the real vLLM server (the CPU build of 0.32.0 serving the tiny test model) several times.
Right after each `docker run`, three watchers start side by side:

  - a tight poller: GET /health every 20 ms; the moment it first answers 200 is "ready";
  - llmops.vllm.verify_endpoint, as users run it (`ansible localhost -m ...`, readiness only);
  - the common playbook loop: ansible.builtin.uri on /health with until/retries and delay: 5
    (benchmarks/uri-wait.yml);
  - for the breakdown only, the module's own code run without Ansible (python verify_endpoint.py
    ARGS_FILE, as ansible-test and module developers run a module), to show how much of the
    module's lateness is polling and how much Ansible's own exit.

For each start it records how long after "ready" each process returned, and prints the median and
the maximum of each, and the ratio of the two Ansible ways. The 1-minute load average at readiness
says how busy the machine was. The goal: the module returns within 1 s of
readiness, and at least 3x sooner than the uri loop.

Not a test: the numbers depend on the machine. Run it with `make bench` (after `make images models`).

Usage: benchmarks/readiness.py [--starts N] [--json FILE]
"""

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BIN = os.path.dirname(sys.executable)
IMAGE = os.environ.get("LLMOPS_BENCH_IMAGE", "llmops-test/vllm-openai-cpu:v0.32.0")
MODELS = os.path.abspath(os.environ.get("LLMOPS_BENCH_MODELS", os.path.join(ROOT, ".cache", "models")))
PREFIX = os.environ.get("LLMOPS_BENCH_PREFIX", "llmops-bench-") + secrets.token_hex(3) + "-"
POLL = 0.02


def docker(*args):
    return subprocess.run(["docker"] + list(args), check=True, capture_output=True, text=True).stdout.strip()


def module_alone_command(url, directory):
    """The module run as a script, outside Ansible: its argument file and command line."""
    args_file = os.path.join(directory, "verify-args.json")
    with open(args_file, "w") as f:
        json.dump({"ANSIBLE_MODULE_ARGS": {"url": url, "chat": False, "stream": False, "timeout": 900}}, f)
    return [sys.executable, os.path.join(ROOT, "plugins", "modules", "verify_endpoint.py"), args_file]


def ansible_env():
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_NOCOLOR="1", PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    env.pop("VLLM_API_KEY", None)
    # the module alone imports the collection from the checkout
    env["PYTHONPATH"] = os.path.join(ROOT, "collections") + os.pathsep + env.get("PYTHONPATH", "")
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


class Poller(threading.Thread):
    """GET /health every 20 ms; notes the moment it first answered 200."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url = url
        self.ready_at = None
        self.load = None
        self.stop = False

    def run(self):
        while not self.stop:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as response:
                    if response.status == 200:
                        self.ready_at = time.monotonic()
                        self.load = os.getloadavg()[0]
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(POLL)


def one_start(index, directory):
    name = "%s%d" % (PREFIX, index)
    docker("run", "-d", "--name", name, "--shm-size", "512m", "-p", "127.0.0.1::8000",
           "-v", MODELS + ":/root/.cache/huggingface:ro", "-e", "HF_HUB_OFFLINE=1", "-e", "VLLM_CPU_KVCACHE_SPACE=1",
           IMAGE, "llmops-test/tiny-chat", "--served-model-name", "tiny-chat", "--max-model-len", "2048")
    started = time.monotonic()
    try:
        port = docker("port", name, "8000").splitlines()[0].rsplit(":", 1)[1]
        url = "http://127.0.0.1:%s" % port
        poller = Poller(url)
        module = Watcher("verify_endpoint", [
            os.path.join(BIN, "ansible"), "localhost", "-m", "llmops.vllm.verify_endpoint",
            "-a", json.dumps({"url": url, "chat": False, "stream": False, "timeout": 900})])
        uri = Watcher("uri loop", [os.path.join(BIN, "ansible-playbook"), "benchmarks/uri-wait.yml", "-e", "vllm_url=" + url])
        alone = Watcher("module alone", module_alone_command(url, directory))
        for thread in (poller, module, uri, alone):
            thread.start()
        for thread in (module, uri, alone):
            thread.join()
        poller.stop = True
        poller.join(5)
        for watcher in (module, uri, alone):
            if watcher.rc != 0:
                raise SystemExit("%s failed (rc %s):\n%s" % (watcher.name_, watcher.rc, watcher.output[-3000:]))
        if poller.ready_at is None:
            raise SystemExit("the poller never saw /health answer 200")
        return dict(ready_after_start=poller.ready_at - started, load=poller.load,
                    module=module.returned_at - poller.ready_at,
                    uri=uri.returned_at - poller.ready_at,
                    module_alone=alone.returned_at - poller.ready_at)
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=5, help="how many times to start vLLM (default 5)")
    parser.add_argument("--json", help="also write the measurements to this file")
    args = parser.parse_args()
    if not os.path.isdir(os.path.join(MODELS, "hub", "models--llmops-test--tiny-chat")):
        raise SystemExit("the tiny models are missing in %s: run make models" % MODELS)

    print("Starting vLLM %d times (%s, tiny-chat); seconds after /health first answered 200:" % (args.starts, IMAGE))
    print("%-6s %12s %16s %10s %14s %6s" % ("start", "ready after", "verify_endpoint", "uri loop", "module alone", "load"))
    runs = []
    with tempfile.TemporaryDirectory() as directory:
        for index in range(1, args.starts + 1):
            run = one_start(index, directory)
            runs.append(run)
            print("%-6d %11.1fs %15.2fs %9.2fs %13.2fs %6.1f" % (
                index, run["ready_after_start"], run["module"], run["uri"], run["module_alone"], run["load"]), flush=True)

    module = [r["module"] for r in runs]
    uri = [r["uri"] for r in runs]
    alone = [r["module_alone"] for r in runs]
    summary = dict(
        starts=len(runs),
        module_median=statistics.median(module), module_max=max(module),
        uri_median=statistics.median(uri), uri_max=max(uri),
        alone_median=statistics.median(alone), alone_max=max(alone),
        load_median=statistics.median(r["load"] for r in runs),
    )
    summary["ratio_median"] = summary["uri_median"] / summary["module_median"]
    summary["ratio_max"] = summary["uri_max"] / summary["module_max"]
    print()
    print("%-16s %8s %8s" % ("", "median", "max"))
    print("%-16s %7.2fs %7.2fs" % ("verify_endpoint", summary["module_median"], summary["module_max"]))
    print("%-16s %7.2fs %7.2fs" % ("uri loop", summary["uri_median"], summary["uri_max"]))
    print("%-16s %7.1fx %7.1fx" % ("uri / module", summary["ratio_median"], summary["ratio_max"]))
    print("%-16s %7.2fs %7.2fs" % ("module alone", summary["alone_median"], summary["alone_max"]))
    within = summary["module_max"] <= 1.0
    sooner = summary["ratio_median"] >= 3.0
    print()
    print("Goal: the module returns within 1 s of readiness: %s (max %.2fs)" % ("met" if within else "NOT met", summary["module_max"]))
    print("Goal: at least 3x sooner than the uri loop: %s (median %.1fx)" % ("met" if sooner else "NOT met", summary["ratio_median"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(summary, runs=runs, image=IMAGE), f, indent=2)
    return 0 if within and sooner else 1


if __name__ == "__main__":
    sys.exit(main())

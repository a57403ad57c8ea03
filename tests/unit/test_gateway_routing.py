"""The gateway's affinity policies (gateway_affinity), rendered by the role's own tasks for two gateways
in one run (prefix hash with its load bound, header hash), checked by haproxy -c
(the template task's validate) and run on loopback in front of four small HTTP servers that say who they
are: requests sharing a prompt's start reach one server, different starts spread, a server taken out
moves only its own share, and the bound spills a burst of one prefix onto other servers."""

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RENDER = os.path.join(ROOT, "tests", "unit", "fixtures", "gateway", "render.yml")
KEY = "sk-gateway-routing-test"
SERVERS = 4
BACKEND = "model0_tiny-chat"
GATEWAYS = {
    "gw-prefix": {"gateway_affinity": "prefix", "gateway_affinity_prefix_length": 64},
    "gw-header": {"gateway_affinity": "header", "gateway_affinity_header": "X-Conversation"},
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Backend(object):
    """A stand-in vLLM server: /health answers 200, a POST answers its own name, after `hold` is set
    when the test holds requests open; it counts the requests it holds at once."""

    def __init__(self, name):
        self.name, self.lock = name, threading.Lock()
        self.hold = None
        self.in_flight = self.most = 0
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def _reply(self, body):
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._reply({"ok": True})

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with backend.lock:
                    backend.in_flight += 1
                    backend.most = max(backend.most, backend.in_flight)
                hold = backend.hold
                if hold is not None:
                    hold.wait(20)
                with backend.lock:
                    backend.in_flight -= 1
                self._reply({"server": backend.name})

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # HAProxy's health checks hang up without a word

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def haproxy():
    if shutil.which("haproxy") is None:
        subprocess.run([os.path.join(ROOT, "tests", "tooling", "ensure-haproxy")], check=True)
    return shutil.which("haproxy")


@pytest.fixture(scope="module")
def fleet(haproxy, tmp_path_factory):
    directory = tmp_path_factory.mktemp("routing")
    backends = [Backend("vllm%d" % i) for i in range(SERVERS)]
    gateways = {}
    for name, settings in GATEWAYS.items():
        (directory / name).mkdir()
        gateways[name] = dict(settings, ansible_connection="local", ansible_python_interpreter=sys.executable,
                              gateway_port=free_port(), gateway_stats_port=free_port(), test_dir=str(directory / name),
                              gateway_bind_address="127.0.0.1", gateway_stats_bind_address="127.0.0.1")
    # One vLLM host with four instances: four servers of one backend, rendered quicker than four hosts.
    inventory = {"all": {"children": {
        "gpu_hosts": {"hosts": {"gpu": {
            "ansible_host": "127.0.0.1", "vllm_server_api_key": "backend-key",
            "vllm_server_instances": [{"name": b.name, "model": "/models/tiny-chat", "served_model_name": "tiny-chat",
                                       "port": b.port} for b in backends]}}},
        "gateway": {"hosts": gateways}}}}
    (directory / "inventory.json").write_text(json.dumps(inventory))
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    # Each gateway host writes into its own directory: the role's private paths follow a host variable.
    extra = {"_gateway_dir": "{{ test_dir }}", "_gateway_config": "{{ test_dir }}/haproxy.cfg",
             "gateway_socket": "{{ test_dir }}/admin.sock", "gateway_api_key": KEY,
             "gateway_stats_password": "llmops-routing-test-stats"}
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i",
                             str(directory / "inventory.json"), RENDER, "-e", json.dumps(extra)],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    processes = []
    for name, settings in gateways.items():
        processes.append(subprocess.Popen([haproxy, "-f", os.path.join(settings["test_dir"], "haproxy.cfg"), "-db"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for settings in gateways.values():
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", settings["gateway_port"]), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
    yield {"gateways": gateways, "backends": backends}
    for process in processes:
        process.terminate()
        process.wait(10)
    for backend in backends:
        backend.server.shutdown()


CONNECTIONS = threading.local()


def ask(fleet, gateway, body, headers=None):
    """The server that answered; each thread keeps one connection to each gateway, as a client with
    keep-alive does (a request then starts only after HAProxy ended the one before)."""
    port = fleet["gateways"][gateway]["gateway_port"]
    connections = CONNECTIONS.__dict__.setdefault("by_port", {})
    connection = connections.get(port)
    if connection is None:
        connection = connections[port] = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.connect()
        # headers and body leave in two writes: without this, each request waits for a delayed ACK
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connection.request("POST", "/v1/chat/completions", json.dumps(body),
                       dict({"Authorization": "Bearer " + KEY, "Content-Type": "application/json"}, **(headers or {})))
    response = connection.getresponse()
    data = response.read()
    assert response.status == 200, data
    return json.loads(data)["server"]


def chat(prefix, suffix):
    return {"model": "tiny-chat", "max_tokens": 8,
            "messages": [{"role": "system", "content": prefix}, {"role": "user", "content": suffix}]}


PREFIXES = ["System prompt %d: you answer questions about document %d, which begins here. " % (i, i * 7919)
            for i in range(48)]


def admin(fleet, gateway, command):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(os.path.join(fleet["gateways"][gateway]["test_dir"], "admin.sock"))
        s.sendall(command.encode() + b"\n")
        return s.recv(65536).decode()


def placement(fleet, gateway, prefixes):
    """The servers each prefix reached, over three requests that differ after the prefix."""
    return dict((p, set(ask(fleet, gateway, chat(p, "Question %d about it?" % n)) for n in range(3))) for p in prefixes)


def test_the_policies_are_rendered(fleet):
    for name, settings in fleet["gateways"].items():
        config = open(os.path.join(settings["test_dir"], "haproxy.cfg")).read()
        assert "hash-type consistent" in config and "balance leastconn" not in config
        assert "hash-balance-factor 200" in config, name
    prefix = open(os.path.join(fleet["gateways"]["gw-prefix"]["test_dir"], "haproxy.cfg")).read()
    assert "balance hash var(txn.llmops_prefix)" in prefix and "bytes(0,64)" in prefix
    header = open(os.path.join(fleet["gateways"]["gw-header"]["test_dir"], "haproxy.cfg")).read()
    assert "balance hdr(X-Conversation)" in header and "llmops_prefix" not in header


def test_requests_sharing_a_prefix_reach_one_server_and_prefixes_spread(fleet):
    places = placement(fleet, "gw-prefix", PREFIXES)
    assert all(len(servers) == 1 for servers in places.values()), places
    shares = Counter(next(iter(servers)) for servers in places.values())
    # every server holds some prefixes, none more than half of them
    assert len(shares) == SERVERS and max(shares.values()) <= len(PREFIXES) // 2, shares
    # only the first 64 bytes count: a difference after them keeps the server
    long_prefix = PREFIXES[0] + "x" * 64
    assert ask(fleet, "gw-prefix", chat(long_prefix + "A", "q")) == ask(fleet, "gw-prefix", chat(long_prefix + "B", "q"))


def test_the_prompt_of_a_completion_and_a_message_of_parts_are_hashed_too(fleet):
    completions = set(ask(fleet, "gw-prefix", {"model": "tiny-chat", "prompt": PREFIXES[3] + str(n)}) for n in range(4))
    parts = set(ask(fleet, "gw-prefix", {"model": "tiny-chat", "messages": [
        {"role": "user", "content": [{"type": "text", "text": PREFIXES[5] + str(n)}]}]}) for n in range(4))
    assert len(completions) == 1 and len(parts) == 1
    # no text to hash: balanced round-robin instead of all on one server
    assert len(set(ask(fleet, "gw-prefix", {"model": "tiny-chat", "messages": []}) for _ in range(8))) > 1


def test_a_server_taken_out_moves_only_its_own_prefixes(fleet):
    before = dict((p, next(iter(s))) for p, s in placement(fleet, "gw-prefix", PREFIXES).items())
    gone = Counter(before.values()).most_common(1)[0][0]
    assert admin(fleet, "gw-prefix", "disable server %s/gpu:%s" % (BACKEND, gone)).strip() == ""
    try:
        after = dict((p, next(iter(s))) for p, s in placement(fleet, "gw-prefix", PREFIXES).items())
    finally:
        admin(fleet, "gw-prefix", "enable server %s/gpu:%s" % (BACKEND, gone))
    assert gone not in after.values()
    assert dict((p, s) for p, s in before.items() if s != gone) == dict((p, s) for p, s in after.items() if before[p] != gone)
    moved = [p for p in PREFIXES if before[p] == gone]
    assert len(set(after[p] for p in moved)) > 1, "the removed server's prefixes all went to one server"


def test_a_burst_of_one_prefix_is_bounded(fleet):
    backends = fleet["backends"]
    hold = threading.Event()
    for backend in backends:
        backend.most, backend.hold = 0, hold
    burst = 8
    try:
        with ThreadPoolExecutor(burst) as pool:
            futures = []
            for n in range(burst):
                futures.append(pool.submit(ask, fleet, "gw-prefix", chat(PREFIXES[7], "question %d" % n)))
                time.sleep(0.05)  # each request is placed while the earlier ones are held
            time.sleep(0.3)
            hold.set()
            servers = Counter(f.result() for f in futures)
    finally:
        for backend in backends:
            backend.hold = None
    # Without the bound all eight would wait on the prefix's server. hash-balance-factor 200: no server
    # holds more than twice the average in-flight requests (8 x 2 / 4 = 4).
    assert max(b.most for b in backends) <= 4 and len(servers) > 1, servers


def test_header_affinity_keeps_a_conversation_on_one_server(fleet):
    places = dict((c, set(ask(fleet, "gw-header", chat("p%d" % n, "q"), {"X-Conversation": c}) for n in range(3)))
                  for c in ("conversation-%d" % i for i in range(24)))
    assert all(len(servers) == 1 for servers in places.values()), places
    assert len(set(next(iter(s)) for s in places.values())) > 1


def test_bad_routing_settings_are_refused_before_any_file_is_written(haproxy, tmp_path):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    fixtures = os.path.join(ROOT, "tests", "unit", "fixtures", "gateway")
    extra = {"_gateway_dir": str(tmp_path), "_gateway_config": "%s/haproxy.cfg" % tmp_path, "gateway_api_key": KEY,
             "gateway_stats_password": "llmops-routing-test-stats", "gateway_affinity": "prefix", "gateway_affinity_header": "X-Session) ", "gateway_affinity_prefix_length": 0,
             "gateway_hash_balance_factor": 100}
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i",
                             os.path.join(fixtures, "inventory.yml"), RENDER, "-e", json.dumps(extra)],
                            capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode != 0
    output = " ".join(result.stdout.split())
    for message in ("gw: gateway_affinity_header must be a header name of letters, digits, '-', '_' and '.' "
                    '(it is "X-Session) ").',
                    "gateway_affinity_prefix_length must be a number of bytes above 0 (it is 0).",
                    "gateway_hash_balance_factor must be 0 (no bound) or a percentage above 100, such as 150 (it is 100)."):
        assert message in output, output
    assert os.listdir(tmp_path) == []

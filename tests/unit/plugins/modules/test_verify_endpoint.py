"""verify_endpoint with its HTTP layer replaced by a scripted fake server."""

import io
import json
import socket
import ssl
from urllib.error import HTTPError, URLError

import pytest

from ansible_collections.llmops.vllm.plugins.module_utils import _openai_endpoint
from ansible_collections.llmops.vllm.plugins.modules import verify_endpoint as mod

KEY = "sk-very-secret-key-123"


class FakeClock(object):
    """time.monotonic/time.sleep stand-ins: sleeping advances the clock, and so does each request."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


class Response(object):
    def __init__(self, status=200, body=b"", lines=None):
        self.status = status
        self._body = body if isinstance(body, bytes) else json.dumps(body).encode()
        self._lines = list(lines or [])

    def getcode(self):
        return self.status

    def read(self):
        return self._body

    def readline(self):
        if not self._lines:
            return b""
        item = self._lines.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


def http_error(url, code, body):
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HTTPError(url, code, "error", {}, io.BytesIO(payload))


def refused():
    return URLError(ConnectionRefusedError(111, "Connection refused"))


def chat_body(content="Hello there!", usage=(12, 4, 16), obj="chat.completion", role="assistant", finish="stop"):
    return {
        "id": "chatcmpl-1",
        "object": obj,
        "model": "tiny-chat",
        "choices": [{"index": 0, "message": {"role": role, "content": content}, "finish_reason": finish}],
        "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": usage[2]},
    }


def sse(*pieces, done=True, usage=True):
    lines = []
    for i, piece in enumerate(pieces):
        chunk = {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
        if i == 0:
            chunk["choices"][0]["delta"]["role"] = "assistant"
        lines += [("data: " + json.dumps(chunk) + "\n").encode(), b"\n"]
    final = {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    lines += [("data: " + json.dumps(final) + "\n").encode(), b"\n"]
    if usage:
        u = {"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": len(pieces), "total_tokens": 12 + len(pieces)}}
        lines += [("data: " + json.dumps(u) + "\n").encode(), b"\n"]
    if done:
        lines += [b"data: [DONE]\n", b"\n"]
    return lines


class FakeServer(object):
    """Routes (method, path) to scripted answers; a list is consumed one answer per request, its last item repeats."""

    def __init__(self, clock, routes, request_cost=0.01):
        self.clock = clock
        self.routes = routes
        self.calls = []
        self.request_cost = request_cost

    def __call__(self, url, data=None, method=None, headers=None, timeout=None, **kwargs):
        path = "/" + url.split("/", 3)[3] if url.count("/") >= 3 else "/"
        body = json.loads(data) if data else None
        self.calls.append(dict(method=method, path=path, headers=headers, body=body, timeout=timeout, kwargs=kwargs))
        self.clock.now += self.request_cost
        answer = self.routes.get((method, path))
        if answer is None:
            raise http_error(url, 404, {"detail": "Not Found"})
        if isinstance(answer, list):
            answer = answer.pop(0) if len(answer) > 1 else answer[0]
        if callable(answer):
            answer = answer(body)
        if isinstance(answer, Exception):
            raise answer
        return answer


def ready_routes(models=("tiny-chat",), chat=None, stream=None):
    def chat_route(body):
        if body.get("stream"):
            return Response(lines=stream if stream is not None else sse("Hello", " there", "!"))
        return chat if chat is not None else Response(body=chat_body())

    return {
        ("GET", "/health"): Response(),
        ("GET", "/v1/models"): Response(body={"object": "list", "data": [{"id": m, "object": "model"} for m in models]}),
        ("GET", "/version"): Response(body={"version": "0.32.0"}),
        ("POST", "/v1/chat/completions"): chat_route,
    }


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(mod.time, "monotonic", c.monotonic)
    monkeypatch.setattr(mod.time, "sleep", c.sleep)
    monkeypatch.setattr(_openai_endpoint.time, "monotonic", c.monotonic)
    return c


@pytest.fixture
def server(monkeypatch, clock):
    def install(routes, request_cost=0.01):
        fake = FakeServer(clock, routes, request_cost)
        monkeypatch.setattr(_openai_endpoint, "open_url", fake)
        return fake

    return install


ARGS = {"url": "http://127.0.0.1:8000", "model": "tiny-chat", "timeout": 5}


def test_success_reports_ready_reply_and_numbers(run_module, server):
    fake = server(ready_routes())
    kind, result = run_module(mod.main, dict(ARGS, api_key=KEY))
    assert kind == "exit", result
    assert result["changed"] is False and result["ready"] is True
    assert result["models"] == ["tiny-chat"] and result["model"] == "tiny-chat"
    assert result["version"] == "0.32.0"
    assert result["reply"] == "Hello there!"
    assert result["chat"]["usage"] == {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}
    assert result["completion_tokens"] == 4 and result["tokens_per_second"] > 0
    assert result["stream"]["content"] == "Hello there!" and result["stream"]["chunks"] == 5
    assert result["time_to_first_token"] is not None
    chat = [c for c in fake.calls if c["method"] == "POST"][0]
    assert chat["headers"]["Authorization"] == "Bearer " + KEY
    assert chat["body"]["model"] == "tiny-chat" and chat["body"]["max_tokens"] == 16
    assert "stream" not in chat["body"]


def test_without_model_the_first_listed_is_used(run_module, server):
    server(ready_routes(models=("a", "b")))
    kind, result = run_module(mod.main, {"url": "http://127.0.0.1:8000", "stream": False})
    assert kind == "exit" and result["model"] == "a"


def test_check_mode_sends_the_same_requests_and_changes_nothing(run_module, server):
    server(ready_routes())
    kind, result = run_module(mod.main, ARGS, check_mode=True)
    assert kind == "exit" and result["changed"] is False and result["reply"] == "Hello there!"


def test_waits_through_refused_connections_with_backoff(run_module, server, clock):
    routes = ready_routes()
    routes[("GET", "/health")] = [refused()] * 30 + [Response()]
    server(routes)
    kind, result = run_module(mod.main, dict(ARGS, timeout=60))
    assert kind == "exit", result
    assert clock.sleeps[0] == pytest.approx(0.05)
    assert max(clock.sleeps) == pytest.approx(mod.Verifier.MAX_INTERVAL)
    assert all(b >= a for a, b in zip(clock.sleeps, clock.sleeps[1:]))


def test_never_ready_says_how_long_and_what_it_last_saw(run_module, server):
    server({("GET", "/health"): refused()})
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail" and result["ready"] is False
    assert "did not become ready within 5s" in result["msg"]
    assert "last seen: connection refused" in result["msg"]
    assert "container exited" in result["msg"] and "port" in result["msg"]
    assert result["last_seen"].startswith("connection refused")


def test_engine_dead_503(run_module, server):
    server({("GET", "/health"): http_error("http://127.0.0.1:8000/health", 503, b"")})
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail"
    assert "HTTP 503" in result["msg"] and "engine is not healthy" in result["msg"]


def test_wrong_key_is_refused_without_printing_it(run_module, server):
    routes = ready_routes()
    routes[("GET", "/v1/models")] = http_error("http://127.0.0.1:8000/v1/models", 401, {"error": "Unauthorized"})
    server(routes)
    kind, result = run_module(mod.main, dict(ARGS, api_key=KEY))
    assert kind == "fail"
    assert "refused the API key" in result["msg"] and "401" in result["msg"]
    assert KEY not in json.dumps(result)


def test_missing_key_says_one_is_needed(run_module, server, monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    routes = ready_routes()
    routes[("GET", "/v1/models")] = http_error("http://127.0.0.1:8000/v1/models", 401, {"error": "Unauthorized"})
    server(routes)
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail" and "requires an API key" in result["msg"]


def test_model_not_served_lists_what_is(run_module, server):
    server(ready_routes(models=("llama-3-8b", "qwen2.5")))
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail"
    assert "does not serve the model 'tiny-chat'" in result["msg"]
    assert "It serves: llama-3-8b, qwen2.5" in result["msg"]


def test_chat_404_names_the_model(run_module, server):
    routes = ready_routes()
    routes[("POST", "/v1/chat/completions")] = http_error(
        "u", 404, {"error": {"message": "The model `tiny-chat` does not exist.", "type": "NotFoundError", "code": 404}})
    server(routes)
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail" and "answered 404" in result["msg"] and "does not exist" in result["msg"]


def test_missing_chat_template(run_module, server):
    message = ("As of transformers v4.44, default chat template is no longer allowed, so you must provide a chat "
               "template if the tokenizer does not define one.")
    routes = ready_routes()
    routes[("POST", "/v1/chat/completions")] = http_error("u", 400, {"error": {"message": message, "type": "BadRequestError", "code": 400}})
    server(routes)
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail"
    assert "has no chat template" in result["msg"] and "/v1/completions" in result["msg"]


@pytest.mark.parametrize(
    "body, problem",
    [
        (chat_body(usage=(12, 4, 17)), "usage does not add up: 12 + 4 != 17"),
        (chat_body(content=""), "choices[0].message.content is empty"),
        (chat_body(obj="text_completion"), "object is 'text_completion'"),
        (chat_body(role="user"), "role is 'user'"),
        ({"object": "chat.completion", "choices": []}, "choices is empty"),
    ],
)
def test_reply_without_openai_shape(run_module, server, body, problem):
    server(ready_routes(chat=Response(body=body)))
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail" and "does not have the OpenAI shape" in result["msg"] and problem in result["msg"]


def test_content_regex(run_module, server):
    server(ready_routes())
    kind, result = run_module(mod.main, dict(ARGS, content_regex="^Hello"))
    assert kind == "exit"
    kind, result = run_module(mod.main, dict(ARGS, content_regex="(?i)goodbye"))
    assert kind == "fail" and "does not match" in result["msg"]


def test_stream_that_stops_before_done(run_module, server):
    server(ready_routes(stream=sse("Hel", "lo", done=False)))
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail" and "without 'data: [DONE]'" in result["msg"]


def test_stream_broken_off(run_module, server):
    lines = sse("Hel", "lo")[:2] + [ConnectionResetError(104, "Connection reset by peer")]
    server(ready_routes(stream=lines))
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail" and "broke off" in result["msg"]


def test_stream_with_foreign_events(run_module, server):
    server(ready_routes(stream=[b'data: {"object": "text_completion"}\n', b"data: [DONE]\n"]))
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail" and "not a chat.completion.chunk" in result["msg"]


def test_tls_failure_gives_ca_advice(run_module, server):
    error = URLError(ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"))
    server({("GET", "/health"): error})
    kind, result = run_module(mod.main, dict(ARGS, url="https://llm.example.com"))
    assert kind == "fail" and "ca_path" in result["msg"] and "validate_certs" in result["msg"]


def test_chat_timeout(run_module, server):
    routes = ready_routes()
    routes[("POST", "/v1/chat/completions")] = URLError(socket.timeout("timed out"))
    server(routes)
    kind, result = run_module(mod.main, dict(ARGS, request_timeout=7))
    assert kind == "fail" and "did not finish within 7s" in result["msg"]


def test_bad_url_is_refused_before_any_request(run_module, server):
    fake = server(ready_routes())
    kind, result = run_module(mod.main, dict(ARGS, url="127.0.0.1:8000"))
    assert kind == "fail" and "must start with http://" in result["msg"] and fake.calls == []


SHM_LOG = """INFO 11-24 21:51:30 [api_server.py:1] vLLM API server version 0.32.0
ERROR 11-24 21:51:38 [core.py:1510]     raise RuntimeError(
ERROR 11-24 21:51:38 [core.py:1510] RuntimeError: Insufficient space in /dev/shm for shared-memory allocation: 160 MiB required, 64 MiB free.
Traceback (most recent call last):
  File "/opt/venv/lib/python3.11/site-packages/vllm/v1/engine/utils.py", line 1431, in wait_for_engine_startup
    raise RuntimeError(
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""


@pytest.fixture
def docker_cli(monkeypatch):
    """A docker CLI whose `inspect` answers from a script of states and whose `logs` prints SHM_LOG."""

    def install(states):
        states = list(states)
        monkeypatch.setattr(mod.AnsibleModule, "get_bin_path", lambda self, name, *a, **k: "/usr/bin/docker")

        def run_command(self, args, **kwargs):
            if args[1] == "inspect":
                state = states.pop(0) if len(states) > 1 else states[0]
                return 0, state + "\n", ""
            return 0, SHM_LOG, ""

        monkeypatch.setattr(mod.AnsibleModule, "run_command", run_command)

    return install


def test_container_state_errors_and_log_are_attached_to_failures(run_module, server, docker_cli):
    server({("GET", "/health"): refused()})
    docker_cli(["running 0 0"])
    kind, result = run_module(mod.main, dict(ARGS, container="vllm", container_log_lines=3))
    assert kind == "fail"
    assert "Container vllm: running (exit code 0, restarted 0 times)" in result["msg"]
    assert ("Errors in its log: RuntimeError: Insufficient space in /dev/shm for shared-memory allocation: 160 MiB required, "
            "64 MiB free. | RuntimeError: Engine core initialization failed.") in result["msg"]
    assert result["container_log"][-1].startswith("RuntimeError: Engine core initialization failed")
    assert len(result["container_log"]) == 3


def test_an_exited_container_fails_at_once(run_module, server, docker_cli, clock):
    server({("GET", "/health"): refused()})
    docker_cli(["running 0 0", "exited 1 0"])
    kind, result = run_module(mod.main, dict(ARGS, container="vllm", timeout=600))
    assert kind == "fail"
    assert "The container vllm exited with exit code 1" in result["msg"]
    assert clock.now - 1000.0 < 30, "must not wait for the whole timeout"


def test_a_crash_looping_container_fails_early(run_module, server, docker_cli, clock):
    server({("GET", "/health"): URLError(ConnectionResetError(104, "reset"))})
    docker_cli(["restarting 1 5", "running 0 6", "running 0 7", "restarting 1 8"])
    kind, result = run_module(mod.main, dict(ARGS, container="vllm", timeout=600))
    assert kind == "fail"
    assert "restarted 3 times" in result["msg"] and "crashes at start" in result["msg"]
    assert clock.now - 1000.0 < 60


def test_proxy_without_server_behind_it(run_module, server):
    from http.client import RemoteDisconnected

    server({("GET", "/health"): RemoteDisconnected("Remote end closed connection without response")})
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail"
    assert "closes them without answering" in result["msg"] and "port proxy" in result["msg"]


@pytest.mark.parametrize("ready_after", [0.3, 7.77, 95.0, 599.0])
def test_readiness_is_noticed_within_a_second(run_module, server, clock, ready_after):
    ready_at = clock.now + ready_after
    routes = ready_routes()
    routes[("GET", "/health")] = lambda body: Response() if clock.now >= ready_at else refused()
    fake = server(routes)
    kind, result = run_module(mod.main, dict(ARGS, timeout=900, chat=False))
    assert kind == "exit", result
    noticed = 1000.0 + result["time_to_ready"]
    assert 0 <= noticed - ready_at < 1.0
    polls = len([c for c in fake.calls if c["path"] == "/health"])
    assert polls <= ready_after / mod.Verifier.MAX_INTERVAL + 12, "polling must back off, not spin"

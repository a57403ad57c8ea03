"""verify_endpoint with its HTTP layer replaced by a scripted fake server.

One test per failure class and per success path. A failure test asserts the message a person
reads (what went wrong, what to do), not only that the module failed. The bodies of the fake
answers are those vLLM 0.32.0 sends (read in its source and seen from the real server, see
tests/integration for the same cases against it).
"""

import io
import json
import socket
import ssl
from http.client import RemoteDisconnected
from urllib.error import HTTPError, URLError

import pytest

from ansible_collections.llmops.vllm.plugins.module_utils import _openai_endpoint, _verify_endpoint
from ansible_collections.llmops.vllm.plugins.modules import verify_endpoint as mod

KEY = "sk-very-secret-key-123"
URL = "http://127.0.0.1:8000"
ARGS = {"url": URL, "model": "tiny-chat", "timeout": 5}

# vLLM 0.32.0's own answers (vllm/entrypoints/serve/middleware/authenticate.py, serve/engine/serving.py,
# renderers/hf.py), as the real server sent them.
VLLM_401 = {"error": "Unauthorized"}
VLLM_404_MODEL = {"error": {"message": "The model `tiny-chat` does not exist. Valid aliases: llama-3-8b.",
                            "type": "NotFoundError", "param": "model", "code": 404}}
VLLM_NO_TEMPLATE = ("As of transformers v4.44, default chat template is no longer allowed, so you must provide a chat "
                    "template if the tokenizer does not define one.")
VLLM_400_TEMPLATE = {"error": {"message": VLLM_NO_TEMPLATE, "type": "BadRequestError", "param": None, "code": 400}}


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
        self.closed = False

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

    def close(self):
        self.closed = True


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


def event(data):
    return [("data: " + (data if isinstance(data, str) else json.dumps(data)) + "\n").encode(), b"\n"]


def sse(*pieces, done=True, usage=True):
    """A vLLM-like stream: a role chunk with empty content, one chunk per piece, a finish chunk, usage, [DONE]."""
    lines = event({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    for piece in pieces:
        lines += event({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
    lines += event({"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if usage:
        counts = {"prompt_tokens": 12, "completion_tokens": len(pieces), "total_tokens": 12 + len(pieces)}
        lines += event({"id": "c", "object": "chat.completion.chunk", "choices": [], "usage": counts})
    if done:
        lines += event("[DONE]")
    return lines


class FakeServer(object):
    """Routes (method, path) to scripted answers; a list is consumed one answer per request, its last item repeats."""

    def __init__(self, clock, routes, request_cost=0.01):
        self.clock = clock
        self.routes = routes
        self.calls = []
        self.request_cost = request_cost
        self.responses = []

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
        self.responses.append(answer)
        return answer

    def posts(self):
        return [c for c in self.calls if c["method"] == "POST"]


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
    monkeypatch.setattr(_verify_endpoint.time, "monotonic", c.monotonic)
    monkeypatch.setattr(_verify_endpoint.time, "sleep", c.sleep)
    monkeypatch.setattr(_openai_endpoint.time, "monotonic", c.monotonic)
    return c


@pytest.fixture
def server(monkeypatch, clock):
    def install(routes, request_cost=0.01):
        fake = FakeServer(clock, routes, request_cost)
        monkeypatch.setattr(_openai_endpoint, "open_url", fake)
        return fake

    return install


@pytest.fixture(autouse=True)
def no_key_in_environment(monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


# ---- success paths ---------------------------------------------------------------------------------


def test_success_reports_ready_reply_and_numbers(run_module, server, clock):
    fake = server(ready_routes(), request_cost=0.25)
    kind, result = run_module(mod.main, dict(ARGS, api_key=KEY))
    assert kind == "exit", result
    assert result["changed"] is False and result["ready"] is True
    assert result["models"] == ["tiny-chat"] and result["model"] == "tiny-chat"
    assert result["version"] == "0.32.0"
    assert result["time_to_ready"] == pytest.approx(0.5)  # /health and /v1/models, 0.25 s each
    assert result["reply"] == "Hello there!"
    assert result["chat"]["usage"] == {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}
    assert result["chat"]["id"] == "chatcmpl-1" and result["chat"]["finish_reason"] == "stop"
    assert result["latency"] == pytest.approx(0.25)
    assert result["completion_tokens"] == 4 and result["tokens_per_second"] == pytest.approx(16.0)
    assert result["stream"]["content"] == "Hello there!" and result["stream"]["chunks"] == 6
    assert result["stream"]["finish_reason"] == "stop"
    assert result["stream"]["usage"]["completion_tokens"] == 3
    assert result["time_to_first_token"] == result["stream"]["time_to_first_token"] == pytest.approx(0.25)
    chat, streamed = fake.posts()
    assert chat["headers"]["Authorization"] == "Bearer " + KEY
    assert chat["body"] == {"model": "tiny-chat", "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
                            "max_tokens": 16, "temperature": 0.0}
    assert streamed["body"]["stream"] is True and streamed["body"]["stream_options"] == {"include_usage": True}
    assert KEY not in json.dumps(result)


def test_http_options_reach_every_request(run_module, server):
    fake = server(ready_routes())
    kind, result = run_module(mod.main, dict(ARGS, validate_certs=False, ca_path="/etc/ca.pem", client_cert="/c.pem",
                                             client_key="/k.pem", use_proxy=False, http_agent="fleet-check/1",
                                             headers={"X-Team": "ml"}, request_timeout=9))
    assert kind == "exit", result
    for call in fake.calls:
        assert call["kwargs"]["validate_certs"] is False and call["kwargs"]["ca_path"] == "/etc/ca.pem"
        assert call["kwargs"]["client_cert"] == "/c.pem" and call["kwargs"]["client_key"] == "/k.pem"
        assert call["kwargs"]["use_proxy"] is False and call["kwargs"]["http_agent"] == "fleet-check/1"
        assert call["headers"]["X-Team"] == "ml"
    assert all(c["timeout"] == 9 for c in fake.posts())


def test_without_model_the_first_listed_is_used(run_module, server):
    fake = server(ready_routes(models=("a", "b")))
    kind, result = run_module(mod.main, {"url": URL, "stream": False})
    assert kind == "exit" and result["model"] == "a" and result["models"] == ["a", "b"]
    assert fake.posts()[0]["body"]["model"] == "a"


def test_check_mode_sends_the_same_requests_and_changes_nothing(run_module, server):
    fake = server(ready_routes())
    kind, result = run_module(mod.main, ARGS, check_mode=True)
    assert kind == "exit" and result["changed"] is False and result["reply"] == "Hello there!"
    assert len(fake.posts()) == 2


def test_stream_only_reports_the_streamed_numbers(run_module, server):
    fake = server(ready_routes(stream=sse("a", "b", "c", "d")))
    kind, result = run_module(mod.main, dict(ARGS, chat=False))
    assert kind == "exit", result
    assert [c["body"].get("stream") for c in fake.posts()] == [True]
    assert "chat" not in result and result["reply"] == "abcd"
    assert result["completion_tokens"] == 4 and result["latency"] == result["stream"]["latency"]
    assert result["tokens_per_second"] == result["stream"]["tokens_per_second"] > 0


def test_readiness_only_sends_no_completion(run_module, server):
    fake = server(ready_routes())
    kind, result = run_module(mod.main, dict(ARGS, chat=False, stream=False))
    assert kind == "exit" and result["ready"] is True and fake.posts() == []
    assert "reply" not in result and "latency" not in result


def test_extra_body_reaches_both_requests(run_module, server):
    fake = server(ready_routes())
    extra = {"ignore_eos": True, "chat_template_kwargs": {"enable_thinking": False}, "temperature": 0.7}
    kind, result = run_module(mod.main, dict(ARGS, extra_body=extra, max_tokens=3))
    assert kind == "exit", result
    for call in fake.posts():
        assert call["body"]["ignore_eos"] is True and call["body"]["chat_template_kwargs"] == {"enable_thinking": False}
        assert call["body"]["temperature"] == 0.7 and call["body"]["max_tokens"] == 3


def test_api_key_from_the_environment(run_module, server, monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", KEY)
    fake = server(ready_routes())
    kind, result = run_module(mod.main, ARGS)
    assert kind == "exit" and fake.posts()[0]["headers"]["Authorization"] == "Bearer " + KEY


def test_empty_health_path_waits_on_the_model_list_alone(run_module, server):
    routes = ready_routes()
    del routes[("GET", "/health")]
    fake = server(routes)
    kind, result = run_module(mod.main, dict(ARGS, health_path=""))
    assert kind == "exit" and "/health" not in [c["path"] for c in fake.calls]


def test_health_answered_with_text_counts_as_healthy(run_module, server):
    routes = ready_routes()
    routes[("GET", "/health")] = Response(body=b"OK")
    server(routes)
    kind, result = run_module(mod.main, ARGS)
    assert kind == "exit", result


def test_a_server_without_version_endpoint(run_module, server):
    routes = ready_routes()
    del routes[("GET", "/version")]
    server(routes)
    kind, result = run_module(mod.main, ARGS)
    assert kind == "exit" and result["version"] is None


def test_content_regex_that_matches(run_module, server):
    server(ready_routes())
    kind, result = run_module(mod.main, dict(ARGS, content_regex="^Hello"))
    assert kind == "exit", result


def test_waits_through_refused_connections_with_backoff(run_module, server, clock):
    routes = ready_routes()
    routes[("GET", "/health")] = [refused()] * 30 + [Response()]
    server(routes)
    kind, result = run_module(mod.main, dict(ARGS, timeout=60))
    assert kind == "exit", result
    assert clock.sleeps[0] == pytest.approx(0.05)
    assert max(clock.sleeps) == pytest.approx(_verify_endpoint.Verifier.MAX_INTERVAL)
    assert all(b >= a for a, b in zip(clock.sleeps, clock.sleeps[1:]))


@pytest.mark.parametrize("ready_after", [0.3, 7.77, 95.0, 599.0])
def test_readiness_is_noticed_within_a_second(run_module, server, clock, ready_after):
    ready_at = clock.now + ready_after
    routes = ready_routes()
    routes[("GET", "/health")] = lambda body: Response() if clock.now >= ready_at else refused()
    fake = server(routes)
    kind, result = run_module(mod.main, dict(ARGS, timeout=900, chat=False, stream=False))
    assert kind == "exit", result
    noticed = 1000.0 + result["time_to_ready"]
    assert 0 <= noticed - ready_at < 1.0
    polls = len([c for c in fake.calls if c["path"] == "/health"])
    assert polls <= ready_after / _verify_endpoint.Verifier.MAX_INTERVAL + 12, "polling must back off, not spin"


# ---- the server never becomes ready ----------------------------------------------------------------


def test_never_ready_connection_refused(run_module, server):
    server({("GET", "/health"): refused()})
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail" and result["ready"] is False
    assert result["msg"] == (
        "http://127.0.0.1:8000 did not become ready within 5s (waited 5s); last seen: connection refused "
        "([Errno 111] Connection refused). Nothing accepts connections there. vLLM only listens once the model is "
        "loaded, so either the model is still loading (raise timeout), or the container exited or restarts in a loop "
        "(docker ps -a, docker logs), or the port is not published on this address (check the port mapping).")
    assert result["last_seen"] == "connection refused ([Errno 111] Connection refused)"


def test_never_ready_docker_proxy_without_server_behind_it(run_module, server):
    server({("GET", "/health"): RemoteDisconnected("Remote end closed connection without response")})
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail"
    assert "did not become ready within 5s (waited 5s); last seen: connection broken (Remote end closed connection" in result["msg"]
    assert ("Something accepts connections but closes them without answering: Docker's port proxy is up while vLLM inside "
            "the container does not listen yet (still loading the model: raise timeout) or keeps crashing") in result["msg"]


def test_never_ready_connections_hang(run_module, server):
    server({("GET", "/health"): URLError(socket.timeout("timed out"))})
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail"
    assert "last seen: timed out (timed out). Connections hang: a firewall may drop them" in result["msg"]
    assert "Check that the port is reachable from where this module runs." in result["msg"]


def test_never_ready_engine_dead_503(run_module, server):
    server({("GET", "/health"): http_error(URL + "/health", 503, b"")})
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail"
    assert result["msg"].endswith(
        "last seen: HTTP 503. The server answers but is not healthy (503): vLLM's engine died or is restarting (the "
        "container log says why, often out of GPU memory), or a proxy in front has no server behind it.")
    assert result["last_seen"] == "HTTP 503"


def test_never_ready_proxy_502(run_module, server):
    server({("GET", "/health"): lambda body: http_error(URL + "/health", 502, b"<html>Bad Gateway</html>")})
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail"
    assert "last seen: HTTP 502: <html>Bad Gateway</html>. A proxy in front of vLLM answers, but cannot reach vLLM" in result["msg"]


def test_health_404_fails_at_once(run_module, server, clock):
    fake = server({})
    kind, result = run_module(mod.main, dict(ARGS, timeout=600))
    assert kind == "fail"
    assert ("http://127.0.0.1:8000/health answered 404: is this a vLLM server, and does the URL carry a path prefix it "
            "should not? Set health_path to '' for servers without /health.") in result["msg"]
    assert "waiting would not help" in result["msg"]
    assert len(fake.calls) == 1 and clock.sleeps == [], "a server that answers 404 does not heal by waiting"
    assert result["last_seen"] == "HTTP 404: Not Found"


def test_never_ready_unknown_host(run_module, server):
    server({("GET", "/health"): URLError(socket.gaierror(-2, "Name or service not known"))})
    kind, result = run_module(mod.main, dict(ARGS, url="http://gpu-17.invalid:8000"))
    assert kind == "fail"
    assert result["msg"].startswith("http://gpu-17.invalid:8000 did not become ready within 5s")
    assert result["msg"].endswith("The host name does not resolve from where this module runs: check the URL.")


def test_tls_failure_gives_ca_advice_at_once(run_module, server, clock):
    error = URLError(ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"))
    fake = server({("GET", "/health"): error})
    kind, result = run_module(mod.main, dict(ARGS, url="https://llm.example.com", timeout=600))
    assert kind == "fail"
    assert result["msg"].startswith("https://llm.example.com: TLS error ([SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    assert result["msg"].endswith(
        "The server's certificate could not be verified: set ca_path to the CA that signed it, client_cert/client_key if "
        "it asks for a client certificate, or validate_certs: false for a test endpoint only.")
    assert len(fake.calls) == 1, "a certificate problem does not go away by waiting"


def test_https_url_for_a_plain_http_server(run_module, server):
    error = URLError(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)"))
    server({("GET", "/health"): error})
    kind, result = run_module(mod.main, dict(ARGS, url="https://127.0.0.1:8000"))
    assert kind == "fail"
    assert result["msg"].startswith("https://127.0.0.1:8000: TLS error (")
    assert result["msg"].endswith("The server does not speak TLS on this port: use an http:// URL.")


# ---- the server is ready but refuses or does not serve the model ----------------------------------


def test_wrong_key_is_refused_without_printing_it(run_module, server):
    routes = ready_routes()
    routes[("GET", "/v1/models")] = lambda body: http_error(URL + "/v1/models", 401, VLLM_401)
    server(routes)
    kind, result = run_module(mod.main, dict(ARGS, api_key=KEY, timeout=600))
    assert kind == "fail"
    assert result["msg"] == (
        "http://127.0.0.1:8000 refused the API key (HTTP 401 at http://127.0.0.1:8000/v1/models). Give the key the server "
        "was started with (vLLM's --api-key or VLLM_API_KEY); the key itself is not shown here.")
    assert result["last_seen"] == "HTTP 401: Unauthorized"
    assert KEY not in json.dumps(result)


def test_missing_key_says_one_is_needed(run_module, server):
    routes = ready_routes()
    routes[("GET", "/v1/models")] = http_error(URL + "/v1/models", 401, VLLM_401)
    server(routes)
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail"
    assert result["msg"] == (
        "http://127.0.0.1:8000 requires an API key (HTTP 401 at http://127.0.0.1:8000/v1/models), and none was given. "
        "Set api_key (or VLLM_API_KEY) to the key the server was started with.")


def test_model_not_served_lists_what_is(run_module, server):
    fake = server(ready_routes(models=("llama-3-8b", "qwen2.5")))
    kind, result = run_module(mod.main, dict(ARGS, timeout=600))
    assert kind == "fail"
    assert result["msg"] == (
        "http://127.0.0.1:8000 is ready but does not serve the model 'tiny-chat'. It serves: llama-3-8b, qwen2.5. Use one "
        "of these names (vLLM names a model by --served-model-name, or by the model id when that is not set).")
    assert result["ready"] is True and result["models"] == ["llama-3-8b", "qwen2.5"]
    assert fake.posts() == []


def test_model_list_that_is_not_openai(run_module, server):
    routes = ready_routes()
    routes[("GET", "/v1/models")] = Response(body={"models": ["x"]})
    server(routes)
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail"
    assert result["msg"] == 'http://127.0.0.1:8000/v1/models answered, but not with an OpenAI model list: {"models": ["x"]}'


def test_server_that_lists_no_models(run_module, server):
    server(ready_routes(models=()))
    kind, result = run_module(mod.main, {"url": URL})
    assert kind == "fail" and result["msg"] == "http://127.0.0.1:8000 is ready but lists no models at /v1/models."


# ---- chat completion failures ----------------------------------------------------------------------


def test_chat_404_names_the_served_models(run_module, server):
    routes = ready_routes(models=("tiny-chat", "llama-3-8b"))
    routes[("POST", "/v1/chat/completions")] = http_error(URL + "/v1/chat/completions", 404, VLLM_404_MODEL)
    server(routes)
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail"
    assert result["msg"] == (
        "http://127.0.0.1:8000: the chat completion for model 'tiny-chat' answered 404 (The model `tiny-chat` does not "
        "exist. Valid aliases: llama-3-8b.). The server does not serve that name; it serves: tiny-chat, llama-3-8b.")


def test_missing_chat_template(run_module, server):
    routes = ready_routes()
    routes[("POST", "/v1/chat/completions")] = http_error(URL + "/v1/chat/completions", 400, VLLM_400_TEMPLATE)
    server(routes)
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail"
    assert result["msg"] == (
        "http://127.0.0.1:8000: the model 'tiny-chat' has no chat template, so vLLM cannot answer /v1/chat/completions "
        "(" + VLLM_NO_TEMPLATE + "). Give vLLM a template with its chat-template option, serve a chat/instruct variant "
        "of the model, or use the completions API (/v1/completions) with it instead.")
    assert result["ready"] is True and result["last_seen"] == "HTTP 400: " + VLLM_NO_TEMPLATE


def test_missing_chat_template_on_the_streamed_request(run_module, server):
    routes = ready_routes()
    routes[("POST", "/v1/chat/completions")] = http_error(URL + "/v1/chat/completions", 400, VLLM_400_TEMPLATE)
    server(routes)
    kind, result = run_module(mod.main, dict(ARGS, chat=False))
    assert kind == "fail" and "has no chat template" in result["msg"] and "/v1/completions" in result["msg"]


def test_other_http_error_shows_the_servers_message(run_module, server):
    routes = ready_routes()
    body = {"error": {"message": "max_tokens must be at most 496", "type": "BadRequestError", "code": 400}}
    routes[("POST", "/v1/chat/completions")] = http_error(URL + "/v1/chat/completions", 400, body)
    server(routes)
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail"
    assert result["msg"] == "http://127.0.0.1:8000: the chat completion failed with HTTP 400: max_tokens must be at most 496"


def test_chat_timeout(run_module, server):
    routes = ready_routes()
    routes[("POST", "/v1/chat/completions")] = URLError(socket.timeout("timed out"))
    server(routes)
    kind, result = run_module(mod.main, dict(ARGS, request_timeout=7))
    assert kind == "fail"
    assert result["msg"] == (
        "http://127.0.0.1:8000: the chat completion did not finish within 7s. The server is up but slow (overloaded, or "
        "a long max_tokens); raise request_timeout or lower max_tokens.")


def test_chat_broken_off(run_module, server):
    routes = ready_routes()
    routes[("POST", "/v1/chat/completions")] = RemoteDisconnected("Remote end closed connection without response")
    server(routes)
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail"
    assert result["msg"] == (
        "http://127.0.0.1:8000: the chat completion broke off (connection broken (Remote end closed connection without "
        "response)). The server went away in the middle of the request: the container may have crashed, been killed or "
        "restarted (see its log).")


@pytest.mark.parametrize(
    "body, problem",
    [
        (chat_body(usage=(12, 4, 17)), "usage does not add up: 12 + 4 != 17"),
        (chat_body(usage=(12, 0, 12)), "usage counts no completion tokens"),
        (chat_body(content=""), "choices[0].message.content is empty"),
        (chat_body(content=None), "choices[0].message.content is empty"),
        (chat_body(obj="text_completion"), "object is 'text_completion', not 'chat.completion'"),
        (chat_body(role="user"), "choices[0].message.role is 'user', not 'assistant'"),
        (chat_body(finish=None), "choices[0].finish_reason is missing"),
        ({"object": "chat.completion", "choices": [], "usage": {}}, "choices is empty or missing"),
        (dict(chat_body(), usage=None), "usage is missing"),
    ],
)
def test_reply_without_openai_shape(run_module, server, body, problem):
    server(ready_routes(chat=Response(body=body)))
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail"
    assert result["msg"].startswith("http://127.0.0.1:8000: the chat completion does not have the OpenAI shape: ")
    assert problem in result["msg"] and ". Answer: {" in result["msg"]


def test_content_regex_mismatch(run_module, server):
    server(ready_routes())
    kind, result = run_module(mod.main, dict(ARGS, content_regex="(?i)goodbye"))
    assert kind == "fail"
    assert result["msg"] == ("http://127.0.0.1:8000: the chat completion's content does not match '(?i)goodbye'. "
                             "Content: 'Hello there!'")


# ---- streamed chat completion failures -------------------------------------------------------------


def test_stream_that_ends_before_done(run_module, server):
    server(ready_routes(stream=sse("Hel", "lo", done=False)))
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail"
    assert result["msg"] == (
        "http://127.0.0.1:8000: the streamed chat completion broke off after 5 chunks (5 characters of content) without "
        "'data: [DONE]' (the server closed the connection). The server went away in the middle of the reply: the "
        "container may have crashed, been killed or restarted (see its log).")


def test_stream_reset_in_the_middle(run_module, server):
    lines = sse("Hel", "lo")[:4] + [ConnectionResetError(104, "Connection reset by peer")]
    server(ready_routes(stream=lines))
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail"
    assert result["msg"].startswith(
        "http://127.0.0.1:8000: the streamed chat completion broke off after 2 chunks (3 characters of content) without "
        "'data: [DONE]' (the stream from http://127.0.0.1:8000/v1/chat/completions broke off ([Errno 104] Connection "
        "reset by peer)). The server went away in the middle of the reply")


def test_stream_with_an_error_event(run_module, server):
    error = {"error": {"message": "The engine died unexpectedly.", "type": "InternalServerError", "code": 500}}
    fake = server(ready_routes(stream=sse("Hel")[:4] + event(error) + event("[DONE]")))
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail"
    assert result["msg"] == ("http://127.0.0.1:8000: the server reported an error in the middle of the streamed chat "
                             "completion, after 2 chunks: The engine died unexpectedly.")
    assert fake.responses[-1].closed, "the abandoned stream's connection is closed"


def test_stream_with_foreign_events(run_module, server):
    server(ready_routes(stream=event({"object": "text_completion"}) + event("[DONE]")))
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail"
    assert result["msg"] == 'http://127.0.0.1:8000: a streamed event is not a chat.completion.chunk: {"object": "text_completion"}'


def test_stream_with_empty_content(run_module, server):
    server(ready_routes(stream=sse("", " ")))
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail"
    assert result["msg"] == "http://127.0.0.1:8000: the streamed chat completion assembled into empty content (5 chunks)."


def test_stream_regex_mismatch(run_module, server):
    server(ready_routes(stream=sse("Bye")))
    kind, result = run_module(mod.main, dict(ARGS, chat=False, content_regex="^Hello"))
    assert kind == "fail"
    assert result["msg"] == ("http://127.0.0.1:8000: the streamed chat completion's content does not match '^Hello'. "
                             "Content: 'Bye'")


# ---- bad input, refused before any request ----------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (dict(ARGS, url="127.0.0.1:8000"), "url must start with http:// or https:// and name a host, not '127.0.0.1:8000'"),
        (dict(ARGS, content_regex="(unclosed"), "content_regex is not a valid regular expression: missing ), unterminated "
                                                 "subpattern at position 0"),
        (dict(ARGS, timeout=0), "timeout and request_timeout must be positive numbers of seconds"),
        (dict(ARGS, max_tokens=0), "max_tokens must be at least 1, not 0"),
    ],
)
def test_bad_input_is_refused_before_any_request(run_module, server, args, message):
    fake = server(ready_routes())
    kind, result = run_module(mod.main, args)
    assert kind == "fail" and result["msg"] == message and fake.calls == []


# ---- the container behind the endpoint ---------------------------------------------------------------


SHM_LOG = """INFO 11-24 21:51:30 [api_server.py:1] vLLM API server version 0.32.0
ERROR 11-24 21:51:38 [core.py:1510]     raise RuntimeError(
ERROR 11-24 21:51:38 [core.py:1510] RuntimeError: Insufficient space in /dev/shm for shared-memory allocation: 160 MiB required, 64 MiB free.
Traceback (most recent call last):
  File "/opt/venv/lib/python3.11/site-packages/vllm/v1/engine/utils.py", line 1431, in wait_for_engine_startup
    raise RuntimeError(
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""


def test_only_exceptions_count_as_errors_in_the_log():
    log = [
        "(APIServer pid=1) WARNING 11-24 22:18:24 [system_utils.py:255] Found ulimit of 20000 and failed to automatically "
        "increase with error current limit exceeds maximum limit. This can cause fd limit errors like `OSError: [Errno 24] "
        "Too many open files`. Consider increasing with ulimit -n",
        "(EngineCore_DP0 pid=24) ERROR 11-24 22:18:39 [core.py:1510] ValueError: Bfloat16 is only supported on GPUs",
        "    raise HFValidationError(",
        "huggingface_hub.errors.HFValidationError: Repo id must be in the form 'repo_name' or 'namespace/repo_name': "
        "'/models/does-not-exist'. Use `repo_type` argument if needed.",
        "(EngineCore_DP0 pid=24) ERROR 11-24 22:18:39 [core.py:1510] ValueError: Bfloat16 is only supported on GPUs",
    ]
    assert _verify_endpoint.error_lines(log) == [
        "huggingface_hub.errors.HFValidationError: Repo id must be in the form 'repo_name' or 'namespace/repo_name': "
        "'/models/does-not-exist'. Use `repo_type` argument if needed.",
        "ValueError: Bfloat16 is only supported on GPUs",
    ]


@pytest.fixture
def docker_cli(monkeypatch):
    """A docker CLI whose `inspect` answers from a script of states and whose `logs` prints SHM_LOG."""

    def install(states, present=True):
        states = list(states)
        calls = []
        monkeypatch.setattr(mod.AnsibleModule, "get_bin_path", lambda self, name, *a, **k: "/usr/bin/docker" if present else None)

        def run_command(self, args, **kwargs):
            calls.append(args)
            if args[1] == "inspect":
                state = states.pop(0) if len(states) > 1 else states[0]
                return (0, state + "\n", "") if state else (1, "", "Error: No such object: vllm")
            return 0, SHM_LOG, ""

        monkeypatch.setattr(mod.AnsibleModule, "run_command", run_command)
        return calls

    return install


def test_container_state_errors_and_log_are_attached_to_failures(run_module, server, docker_cli):
    server({("GET", "/health"): refused()})
    docker_cli(["running 0 0"])
    kind, result = run_module(mod.main, dict(ARGS, container="vllm", container_log_lines=3))
    assert kind == "fail"
    assert "Container vllm: running (exit code 0, restarted 0 times)." in result["msg"]
    assert ("Errors in its log: RuntimeError: Insufficient space in /dev/shm for shared-memory allocation: 160 MiB required, "
            "64 MiB free. | RuntimeError: Engine core initialization failed.") in result["msg"]
    assert result["msg"].endswith("\nLast log lines:\n" + "\n".join(SHM_LOG.splitlines()[-3:]))
    assert result["container_state"] == "running (exit code 0, restarted 0 times)"
    assert result["container_log"] == SHM_LOG.splitlines()[-3:]


def test_an_exited_container_ends_the_wait_at_once(run_module, server, docker_cli, clock):
    server({("GET", "/health"): refused()})
    docker_cli(["running 0 0", "exited 1 0"])
    kind, result = run_module(mod.main, dict(ARGS, container="vllm", timeout=600))
    assert kind == "fail"
    assert result["msg"].startswith("The container vllm exited with exit code 1 after 2s, so the endpoint cannot become ready. "
                                    "Container vllm: exited (exit code 1, restarted 0 times). Errors in its log: RuntimeError")
    assert clock.now - 1000.0 < 5, "must not wait for the whole timeout"


def test_a_crash_looping_container_ends_the_wait_early(run_module, server, docker_cli, clock):
    server({("GET", "/health"): URLError(ConnectionResetError(104, "reset"))})
    docker_cli(["restarting 1 5", "running 0 6", "running 0 7", "restarting 1 8"])
    kind, result = run_module(mod.main, dict(ARGS, container="vllm", timeout=600))
    assert kind == "fail"
    assert result["msg"].startswith("The container vllm restarted 3 times in 6s: vLLM crashes at start, so waiting longer "
                                    "will not help. Container vllm: restarting (exit code 1, restarted 8 times).")
    assert clock.now - 1000.0 < 10


class GrowingLog(object):
    """A running container whose log grows with the fake clock: `docker logs --timestamps` answers the lines
    logged by now (after --since, or the last --tail), as Docker does; the wall clock is the fake one."""

    WALL0 = 1796616000.0   # 2026-12-07T04:00:00Z, when the module starts (clock 1000)

    def __init__(self, monkeypatch, clock, entries):
        import datetime

        self.clock = clock
        self.calls = []
        self.entries = []
        for offset, line in entries:
            when = datetime.datetime.fromtimestamp(self.WALL0 + offset, datetime.timezone.utc)
            self.entries.append((self.WALL0 + offset, when.strftime("%Y-%m-%dT%H:%M:%S.") + "%09dZ" % (when.microsecond * 1000), line))
        monkeypatch.setattr(mod.AnsibleModule, "get_bin_path", lambda self_, name, *a, **k: "/usr/bin/docker")
        monkeypatch.setattr(mod.AnsibleModule, "run_command", lambda self_, args, **kw: self.run(args))
        monkeypatch.setattr(_verify_endpoint.time, "time", self.wall)

    def wall(self):
        return self.WALL0 + self.clock.now - 1000.0

    def run(self, args):
        self.calls.append(args)
        if args[1] == "inspect":
            return 0, "running 0 0\n", ""
        logged = [(when, stamp, line) for when, stamp, line in self.entries if when <= self.wall()]
        if "--timestamps" not in args:
            return 0, "".join(line + "\n" for dummy, dummy, line in logged), ""
        if "--since" in args:
            since = args[args.index("--since") + 1]
            logged = [entry for entry in logged if entry[1] >= since]
        elif "--tail" in args:
            logged = logged[-int(args[args.index("--tail") + 1]):]
        # vLLM's INFO lines go to stdout, tracebacks and NCCL to stderr: docker prints them as two streams
        out = "".join("%s %s\n" % (stamp, line) for dummy, stamp, line in logged if "NCCL WARN" not in line)
        err = "".join("%s %s\n" % (stamp, line) for dummy, stamp, line in logged if "NCCL WARN" in line)
        return 0, out, err


TP2_START = [
    (1, "(APIServer pid=1) INFO 12-07 04:00:01 [api_server.py:1839] vLLM API server version 0.32.0"),
    (20, "(Worker_TP0 pid=215) INFO 12-07 04:00:20 [parallel_state.py:1906] world_size=2 rank=0 local_rank=0 backend=nccl"),
    (25, "gpu-1:215:230 [0] NCCL WARN Cuda failure 'peer access is not supported between these two devices'"),
    (25, "(Worker_TP0 pid=215) INFO 12-07 04:00:25 [pynccl.py:148] vLLM is using nccl==2.28.9"),
]


def test_a_start_that_hangs_in_nccl_ends_the_wait_in_minutes(monkeypatch, run_module, server, clock):
    server({("GET", "/health"): refused()})
    docker = GrowingLog(monkeypatch, clock, TP2_START)
    kind, result = run_module(mod.main, dict(ARGS, container="vllm", timeout=1800))
    assert kind == "fail"
    waited = clock.now - 1000.0
    # three quiet minutes after the NCCL line (at 25s), seen at the next read (every 15s)
    assert 205 <= waited <= 221, waited
    assert result["msg"].startswith("The container vllm runs, but its start hangs after %.0fs: vLLM started NCCL 2.28.9 for "
                                    "the instance's GPUs and has logged nothing for " % waited)
    assert "NCCL_P2P_DISABLE: \"1\" in vllm_server_env" in result["advice"][0]
    assert "disable_custom_all_reduce: true" in result["advice"][0]
    assert "What to change: The instance's GPUs hang in their collective communication" in result["msg"]
    assert result["container_state"] == "running (exit code 0, restarted 0 times)"
    # cheap: one docker logs every 15s, its last 1000 lines until it has logged something (at 1s, seen at 15s),
    # then only what is new (from the last line's timestamp: 1s, then 25s)
    reads = [c for c in docker.calls if c[1] == "logs" and "--timestamps" in c]
    assert reads[:2] == [["/usr/bin/docker", "logs", "--timestamps", "--tail", "1000", "vllm"]] * 2
    assert reads[2][3:5] == ["--since", "2026-12-07T04:00:01.000000000Z"]
    assert all(c[3:5] == ["--since", "2026-12-07T04:00:25.000000000Z"] for c in reads[3:])
    assert len(reads) <= waited / 15 + 2


def test_a_start_that_goes_on_is_waited_for(monkeypatch, run_module, server, clock):
    server({("GET", "/health"): refused()})
    # after NCCL, the start goes on: a line every 100s (weights from a slow disk), never ready
    GrowingLog(monkeypatch, clock, TP2_START + [(25 + 100 * n, "(Worker_TP0 pid=215) INFO [default_loader.py:291] still loading")
                                                for n in range(1, 20)])
    kind, result = run_module(mod.main, dict(ARGS, container="vllm", timeout=1200))
    assert kind == "fail" and clock.now - 1000.0 >= 1200
    assert result["msg"].startswith("http://127.0.0.1:8000 did not become ready within 1200s")
    assert not any("collective communication" in a for a in result["advice"])


def test_a_container_that_is_not_there(run_module, server, docker_cli):
    server({("GET", "/health"): refused()})
    docker_cli([""])
    kind, result = run_module(mod.main, dict(ARGS, container="vllm"))
    assert kind == "fail"
    assert ("Container vllm: not found where this module runs (a module delegated to another machine cannot see it: "
            "leave container unset there).") in result["msg"]


def test_without_docker_the_failure_says_so(run_module, server, docker_cli):
    server({("GET", "/health"): refused()})
    calls = docker_cli(["running 0 0"], present=False)
    kind, result = run_module(mod.main, dict(ARGS, container="vllm"))
    assert kind == "fail" and calls == []
    assert "Container vllm: unknown: there is no docker command where this module runs." in result["msg"]


@pytest.mark.parametrize("states, seen", [
    # the connection closes as the server dies, a moment before Docker reports the container exited
    (["running 0 0", "running 0 0", "running 0 0", "exited 137 0"], "exited (exit code 137, restarted 0 times)"),
    (["running 0 0", "restarting 137 1"], "restarting (exit code 137, restarted 1 times)"),
    # a container that stays up is reported as it is, after a short wait
    (["running 0 0"], "running (exit code 0, restarted 0 times)"),
])
def test_the_container_explains_a_broken_stream(run_module, server, docker_cli, clock, states, seen):
    lines = sse("Hel", "lo")[:4] + [ConnectionResetError(104, "Connection reset by peer")]
    server(ready_routes(stream=lines))
    docker_cli(states)
    kind, result = run_module(mod.main, dict(ARGS, container="vllm"))
    assert kind == "fail"
    assert "the streamed chat completion broke off after 2 chunks" in result["msg"]
    assert "Container vllm: %s." % seen in result["msg"] and result["container_state"] == seen


# ---- the OpenAI base URL, unreachable hosts (issue 12) -------------------------------------------


@pytest.mark.parametrize("url, base, paths", [
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000", ["/health", "/v1/models"]),
    ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000", ["/health", "/v1/models"]),
    ("http://127.0.0.1:8000/", "http://127.0.0.1:8000", ["/health", "/v1/models"]),
    ("https://gw.example.com/llm/v1", "https://gw.example.com/llm", ["/llm/health", "/llm/v1/models"]),
])
def test_the_openai_base_url_form_is_the_same_server(run_module, server, url, base, paths):
    fake = server(dict(((method, "/llm" + path if "/llm" in base else path), answer)
                       for (method, path), answer in ready_routes().items()))
    kind, result = run_module(mod.main, dict(ARGS, url=url))
    assert kind == "exit", result
    assert result["url"] == base
    assert [c["path"] for c in fake.calls[:2]] == paths
    assert all("/v1/v1" not in c["path"] for c in fake.calls)


@pytest.mark.parametrize("error", [
    OSError(113, "No route to host"),  # EHOSTUNREACH: a firewall's icmp-host-prohibited, a host that is down
    OSError(101, "Network is unreachable"),  # ENETUNREACH: no route to the network
])
def test_unreachable_host_is_a_network_problem(run_module, server, error):
    server({("GET", "/health"): URLError(error)})
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail"
    assert "last seen: host unreachable (" in result["msg"]
    assert "There is no route to that address: a firewall rejects the connection" in result["msg"]
    assert "port proxy" not in result["msg"] and "still loading" not in result["msg"]


def test_unreachable_from_a_bare_socket_error(run_module, server):
    server({("GET", "/health"): OSError(113, "No route to host")})
    kind, result = run_module(mod.main, ARGS)
    assert kind == "fail" and "a firewall rejects the connection" in result["msg"]


# ---- secrets: whitespace around a key, and no path that prints one (issue 12) -------------------

ODD_KEYS = [
    'sk-"quoted"-\'single\'',
    "sk-$(touch /tmp/pwned)-`id`",
    "sk-back\\slash\\n",
    "sk-semi;colon&amp|pipe",
]


@pytest.mark.parametrize("raw, sent", [
    (KEY + "\n", KEY),  # slurp + b64decode, echo | ansible-vault encrypt_string, a | block scalar
    (KEY + "\r\n", KEY),
    ("  " + KEY + "\t", KEY),
] + [(k, k) for k in ODD_KEYS])
def test_keys_are_sent_as_clients_send_them(run_module, server, raw, sent):
    fake = server(ready_routes())
    kind, result = run_module(mod.main, dict(ARGS, api_key=raw))
    assert kind == "exit", result
    assert {c["headers"]["Authorization"] for c in fake.calls} == {"Bearer " + sent}
    assert sent not in json.dumps(result)


@pytest.mark.parametrize("raw", ["sk-line\nbreak-inside", "sk-ключ-123456", "sk-tab\tinside", "sk-nul\x00inside"])
def test_keys_no_client_can_send_are_refused_without_printing_them(run_module, server, raw):
    fake = server(ready_routes())
    kind, result = run_module(mod.main, dict(ARGS, api_key=raw))
    assert kind == "fail" and fake.calls == []
    assert result["msg"].startswith("api_key holds a line break, another control character or a non-ASCII character")
    for part in ("line", "break-inside", "ключ", "123456", "inside"):
        assert ("sk-" + part) not in json.dumps(result)
    assert raw not in json.dumps(result, ensure_ascii=False)


@pytest.mark.parametrize("secret", ["sk-leak\nme-0123", "sk-ключ-leak-0123"] + ODD_KEYS)
def test_real_http_client_errors_never_carry_the_key(secret):
    """The bug of issue 12: http.client refuses a header value with a newline by an exception that quotes it.
    Here the real open_url and http.client run (nothing listens on port 9; they fail before connecting)."""
    endpoint = _openai_endpoint.Endpoint("http://127.0.0.1:9", api_key=secret, request_timeout=2)
    with pytest.raises(_openai_endpoint.EndpointError) as raised:
        endpoint.request("GET", "/v1/models")
    text = raised.value.message + " " + raised.value.summary()
    assert secret not in text and repr(secret)[1:-1] not in text and "leak" not in text
    if "\n" in secret or "ключ" in secret:
        assert raised.value.kind == "protocol" and "a request header cannot be sent" in text


def test_a_credential_header_is_scrubbed_too():
    endpoint = _openai_endpoint.Endpoint("http://127.0.0.1:9", headers={"X-Gateway-Token": "gw-secret\nvalue"})
    with pytest.raises(_openai_endpoint.EndpointError) as raised:
        endpoint.request("GET", "/health")
    assert "gw-secret" not in raised.value.message and "********" in raised.value.message


def test_an_unexpected_exception_is_scrubbed_and_has_no_bare_traceback(run_module, server):
    def boom(body):
        raise RuntimeError("something quoted the header Bearer %s and %r" % (KEY, KEY + "\n"))

    routes = ready_routes()
    routes[("GET", "/v1/models")] = boom
    server(routes)
    kind, result = run_module(mod.main, dict(ARGS, api_key=KEY))
    assert kind == "fail"
    assert result["msg"].startswith("verify_endpoint failed unexpectedly at http://127.0.0.1:8000: RuntimeError:")
    assert KEY not in json.dumps(result) and "********" in result["msg"] and "********" in result["exception"]


def test_key_option_is_no_log():
    from ansible_collections.llmops.vllm.plugins.modules import verify_endpoint

    source = open(verify_endpoint.__file__).read()
    assert 'api_key=dict(type="str", no_log=True' in source


# ---- LoRA adapters (docs/lora.md) ------------------------------------------------------------------


def adapter_routes(parents):
    routes = ready_routes()
    routes[("GET", "/v1/models")] = Response(body={"object": "list", "data": [
        {"id": m, "object": "model", "parent": parent} for m, parent in parents]})
    return routes


def test_each_adapter_is_listed_under_its_base_and_answers_under_its_own_name(run_module, server):
    fake = server(adapter_routes([("tiny-chat", None), ("sql", "tiny-chat"), ("docs", "tiny-chat")]))
    kind, result = run_module(mod.main, dict(ARGS, adapters=["sql", "docs"], stream=False))
    assert kind == "exit", result
    assert [(a["name"], a["parent"], a["reply"]) for a in result["adapters"]] == [
        ("sql", "tiny-chat", "Hello there!"), ("docs", "tiny-chat", "Hello there!")]
    assert [c["body"]["model"] for c in fake.posts()] == ["tiny-chat", "sql", "docs"]


def test_an_adapter_the_server_does_not_list_is_named(run_module, server):
    server(adapter_routes([("tiny-chat", None), ("sql", "tiny-chat")]))
    kind, result = run_module(mod.main, dict(ARGS, adapters=["sql", "docs"], stream=False))
    assert kind == "fail"
    assert result["msg"].startswith("%s does not serve the LoRA adapter 'docs': /v1/models lists tiny-chat, sql." % URL)


def test_an_adapter_on_another_base_is_named(run_module, server):
    server(adapter_routes([("tiny-chat", None), ("other", None), ("sql", "other")]))
    kind, result = run_module(mod.main, dict(ARGS, adapters=["sql"], stream=False))
    assert kind == "fail"
    assert result["msg"].startswith("%s lists the LoRA adapter 'sql' with the parent 'other', not the base model 'tiny-chat'" % URL)

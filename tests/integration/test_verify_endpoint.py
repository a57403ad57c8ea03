"""llmops.vllm.verify_endpoint against the real vLLM 0.32.0 server (CPU build, tiny models).

Each failure test asserts the sentence a person reads. The server answers with its own bodies
(401 Unauthorized, 404 for an unknown model, 400 for a missing chat template), dies on its own
(a model that does not exist) and is killed in the middle of a streamed reply.
"""

import re
import time

import pytest

from vllm_testbed import API_KEY, ModuleRun, TlsProxy, VllmContainer

WRONG_KEY = "sk-wrong-key-8f2e11"


def test_waits_through_the_model_load(chat_server):
    """The module started right after `docker run` waits until vLLM has loaded the model, then proves it."""
    result = chat_server.first_verification
    assert result["changed"] is False and result["ready"] is True
    # the wait was real: vLLM's start takes tens of seconds, and the module was there before it listened
    assert result["time_to_ready"] > 5
    assert result["models"] == ["tiny-chat"] and result["model"] == "tiny-chat"
    assert result["version"] == "0.32.0"
    assert result["reply"].strip() and result["stream"]["content"].strip()
    assert 1 <= result["completion_tokens"] <= 16
    assert result["tokens_per_second"] > 0 and result["latency"] > 0 and result["time_to_first_token"] > 0


def test_chat_round_trip_and_numbers(chat_server, run_module):
    result, run = run_module({"url": chat_server.url, "model": "tiny-chat", "api_key": API_KEY, "max_tokens": 8,
                              "temperature": 0.0, "prompt": "Write one word.", "content_regex": r"\S"})
    assert result["changed"] is False and result["ready"] is True, result.get("msg")
    assert result["time_to_ready"] < 2, "the server was ready already"
    chat = result["chat"]
    assert chat["finish_reason"] in ("stop", "length") and chat["id"].startswith("chatcmpl-")
    usage = chat["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] == usage["total_tokens"]
    assert 1 <= usage["completion_tokens"] <= 8 and result["completion_tokens"] == usage["completion_tokens"]
    assert result["tokens_per_second"] == pytest.approx(usage["completion_tokens"] / chat["latency"], rel=0.05)
    assert API_KEY not in run.stdout


def test_streaming(chat_server, run_module):
    result, run = run_module({"url": chat_server.url, "model": "tiny-chat", "api_key": API_KEY, "chat": False,
                              "max_tokens": 64, "extra_body": {"ignore_eos": True}})
    assert result["ready"] is True, result.get("msg")
    stream = result["stream"]
    assert "chat" not in result and result["reply"] == stream["content"] and stream["content"].strip()
    # vLLM's chunks: one opening the assistant's message, then deltas; the usage chunk at the end
    assert stream["chunks"] > 2 and stream["finish_reason"] == "length"
    assert stream["usage"]["completion_tokens"] == 64 == result["completion_tokens"]
    assert 0 < stream["time_to_first_token"] <= stream["latency"] == result["latency"]
    assert stream["tokens_per_second"] == pytest.approx(64 / stream["latency"], rel=0.05)


def test_check_mode_changes_nothing_and_still_proves_the_endpoint(chat_server, run_module):
    result, run = run_module({"url": chat_server.url, "model": "tiny-chat", "api_key": API_KEY}, check_mode=True)
    assert result["changed"] is False and result["ready"] is True and result["reply"].strip()


def test_wrong_key(chat_server, run_module):
    result, run = run_module({"url": chat_server.url, "model": "tiny-chat", "api_key": WRONG_KEY, "timeout": 60})
    assert result["failed"] and result["ready"] is False
    assert result["msg"] == (
        "%s refused the API key (HTTP 401 at %s/v1/models). Give the key the server was started with (vLLM's "
        "--api-key or VLLM_API_KEY); the key itself is not shown here." % (chat_server.url, chat_server.url))
    assert result["last_seen"] == "HTTP 401: Unauthorized"
    assert WRONG_KEY not in run.stdout, "the key must not be printed anywhere"
    assert run.elapsed < 30, "a refused key does not get better by waiting"


def test_missing_key(chat_server, run_module):
    result, run = run_module({"url": chat_server.url, "model": "tiny-chat", "timeout": 60})
    assert result["failed"]
    assert result["msg"] == (
        "%s requires an API key (HTTP 401 at %s/v1/models), and none was given. Set api_key (or VLLM_API_KEY) to "
        "the key the server was started with." % (chat_server.url, chat_server.url))


def test_wrong_model_name(chat_server, run_module):
    result, run = run_module({"url": chat_server.url, "model": "llmops-test/tiny-chat", "api_key": API_KEY, "timeout": 60})
    assert result["failed"] and result["ready"] is True and result["models"] == ["tiny-chat"]
    assert result["msg"] == (
        "%s is ready but does not serve the model 'llmops-test/tiny-chat'. It serves: tiny-chat. Use one of these names "
        "(vLLM names a model by --served-model-name, or by the model id when that is not set)." % chat_server.url)


@pytest.fixture(scope="module")
def tls_proxy(chat_server, tmp_path_factory):
    proxy = TlsProxy(chat_server.port, tmp_path_factory.mktemp("tls"))
    yield proxy
    proxy.close()


def test_tls_certificate_not_trusted(tls_proxy, run_module):
    result, run = run_module({"url": tls_proxy.url, "model": "tiny-chat", "api_key": API_KEY, "timeout": 600})
    assert result["failed"] and result["ready"] is False
    assert result["msg"].startswith("%s: TLS error (" % tls_proxy.url) and "CERTIFICATE_VERIFY_FAILED" in result["msg"]
    assert result["msg"].endswith(
        "The server's certificate could not be verified: set ca_path to the CA that signed it, client_cert/client_key "
        "if it asks for a client certificate, or validate_certs: false for a test endpoint only.")
    assert run.elapsed < 30, "a certificate problem does not go away by waiting"


def test_tls_with_the_ca_that_signed_the_certificate(tls_proxy, run_module):
    result, run = run_module({"url": tls_proxy.url, "model": "tiny-chat", "api_key": API_KEY, "ca_path": tls_proxy.cert_path})
    assert result["ready"] is True and result["reply"].strip() and result["stream"]["chunks"] > 1, result.get("msg")


def test_https_url_for_the_plain_http_server(chat_server, run_module):
    url = chat_server.url.replace("http://", "https://")
    result, run = run_module({"url": url, "model": "tiny-chat", "api_key": API_KEY, "timeout": 600})
    assert result["failed"]
    assert result["msg"].startswith("%s: TLS error (" % url)
    assert result["msg"].endswith("The server does not speak TLS on this port: use an http:// URL.")


def test_model_without_chat_template(nochat_server, run_module):
    result, run = run_module({"url": nochat_server.url, "model": "tiny-nochat", "timeout": 600,
                              "container": nochat_server.name})
    assert result["failed"] and result["ready"] is True, result["msg"]
    # vLLM's own 400, quoted
    assert result["msg"].startswith(
        "%s: the model 'tiny-nochat' has no chat template, so vLLM cannot answer /v1/chat/completions (As of "
        "transformers v4.44, default chat template is no longer allowed, so you must provide a chat template if the "
        "tokenizer does not define one.). Give vLLM a template with its chat-template option, serve a chat/instruct "
        "variant of the model, or use the completions API (/v1/completions) with it instead." % nochat_server.url)
    assert "Container %s: running (exit code 0, restarted 0 times)." % nochat_server.name in result["msg"]


def test_a_server_that_never_becomes_ready(containers, run_module):
    """A model that does not exist: vLLM exits, and the module says so at once, quoting the log's error."""
    server = VllmContainer("missing-model", "/models/does-not-exist")
    containers.append(server)
    server.start()
    result, run = run_module({"url": server.url, "container": server.name, "timeout": 600})
    assert result["failed"] and result["ready"] is False
    assert re.match(r"The container %s exited with exit code 1 after \d+s, so the endpoint cannot become ready\. "
                    r"Container %s: exited \(exit code 1, restarted 0 times\)\. Errors in its log: "
                    % (server.name, server.name), result["msg"]), result["msg"]
    assert ("huggingface_hub.errors.HFValidationError: Repo id must be in the form 'repo_name' or "
            "'namespace/repo_name': '/models/does-not-exist'.") in result["msg"]
    assert result["container_state"] == "exited (exit code 1, restarted 0 times)"
    assert len(result["container_log"]) == 30 and "\nLast log lines:\n" in result["msg"]
    assert run.elapsed < 120, "the module must stop waiting once the container exited, not after timeout"

    # Without the container to look at, the module waits out its timeout and says what it saw.
    result, run = run_module({"url": server.url, "timeout": 3})
    assert result["msg"] == (
        "%s did not become ready within 3s (waited 3s); last seen: connection refused ([Errno 111] Connection "
        "refused). Nothing accepts connections there. vLLM only listens once the model is loaded, so either the model "
        "is still loading (raise timeout), or the container exited or restarts in a loop (docker ps -a, docker logs), "
        "or the port is not published on this address (check the port mapping)." % server.url)


@pytest.mark.kills_shared_server
def test_server_killed_in_the_middle_of_a_streamed_reply(chat_server):
    """A long streamed reply (vLLM's ignore_eos), and `docker kill` while it streams."""
    # On a fast machine the tiny model streams 2000 tokens in about 2 s, too quick to kill
    # reliably in the middle: a CPU quota makes the same server take ten times longer.
    chat_server.limit_cpus(0.2)
    run = ModuleRun({"url": chat_server.url, "model": "tiny-chat", "api_key": API_KEY, "chat": False, "stream": True,
                     "max_tokens": 2000, "extra_body": {"ignore_eos": True}, "container": chat_server.name,
                     "request_timeout": 60})
    # vLLM counts the request as running once it generates; then let a few chunks reach the module
    deadline = time.monotonic() + 60
    while (chat_server.metric("vllm:num_requests_running") or 0) < 1:
        assert run.process.poll() is None, "the module ended before the reply started: %s" % run.process.communicate()[0]
        assert time.monotonic() < deadline, "the streamed request never started running"
        time.sleep(0.05)
    time.sleep(0.3)
    chat_server.kill()
    result = run.result(timeout=120)
    assert result["failed"] and result["ready"] is True
    match = re.match(r"%s: the streamed chat completion broke off after (\d+) chunks \((\d+) characters of content\) "
                     r"without 'data: \[DONE\]' \((.*?)\)\. The server went away in the middle of the reply: the container "
                     r"may have crashed, been killed or restarted \(see its log\)\." % re.escape(chat_server.url), result["msg"])
    assert match, result["msg"]
    assert int(match.group(1)) > 0
    assert "Container %s: exited (exit code 137, restarted 0 times)." % chat_server.name in result["msg"]


def test_the_openai_base_url_names_the_same_server(chat_server, run_module):
    # what `make demo` prints and every OpenAI client takes as base_url (issue 12)
    result, run = run_module({"url": chat_server.url + "/v1", "model": "tiny-chat", "api_key": API_KEY, "stream": False})
    assert result.get("failed") is not True, result.get("msg")
    assert result["url"] == chat_server.url and result["reply"].strip()


def test_a_wrong_path_prefix_fails_at_once(chat_server, run_module):
    # the real vLLM answers 404 at /llm/health: a server answers, so waiting the whole timeout would not help
    result, run = run_module({"url": chat_server.url + "/llm", "model": "tiny-chat", "api_key": API_KEY, "timeout": 600})
    assert result["failed"] is True
    assert result["msg"].startswith(chat_server.url + "/llm/health answered 404: is this a vLLM server, and does the URL "
                                    "carry a path prefix it should not?")
    assert run.elapsed < 30, "the module waited %.0fs for a 404 to go away" % run.elapsed


def test_a_key_read_from_a_file_works_and_is_never_printed(chat_server):
    # slurp + b64decode or a | block scalar end the key in a newline (issue 12): it used to break the
    # request with an exception quoting the key, and the stripped key must stay hidden in the invocation
    run = ModuleRun({"url": chat_server.url, "model": "tiny-chat", "api_key": API_KEY + "\n", "stream": False})
    result = run.result()
    assert result.get("failed") is not True, result.get("msg")
    if "invocation" in result:
        assert result["invocation"]["module_args"]["api_key"] == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"
    assert API_KEY not in run.stdout

"""The gateway role's HAProxy configuration, rendered by the role's own tasks, checked by haproxy -c
(the template task's validate) and run on loopback: the answers HAProxy gives itself."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXTURES = os.path.join(ROOT, "tests", "unit", "fixtures", "gateway")
KEY = "sk-gateway-test-7f3"
# Everything HAProxy's configuration syntax would read as something else: quotes, a variable, a comment, a backslash.
STATS_PASSWORD = """st4ts' "$HOME #x\\y ${PATH} pass"""
STATS = json.dumps({"gateway_stats_password": STATS_PASSWORD})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def haproxy():
    if shutil.which("haproxy") is None:
        subprocess.run([os.path.join(ROOT, "tests", "tooling", "ensure-haproxy")], check=True)
    return shutil.which("haproxy")


def render(directory, *extra):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", os.path.join(FIXTURES, "inventory.yml"),
               os.path.join(FIXTURES, "render.yml"), "-e", "_gateway_dir=%s" % directory,
               "-e", "_gateway_config=%s/haproxy.cfg" % directory, "-e", "gateway_socket=%s/admin.sock" % directory]
    for item in extra:
        command += ["-e", item]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def gateway(haproxy, tmp_path_factory):
    directory = tmp_path_factory.mktemp("gateway")
    port, stats = free_port(), free_port()
    settings = [STATS, "gateway_api_key=%s" % KEY, "gateway_port=%d" % port, "gateway_stats_port=%d" % stats,
                "gateway_bind_address=127.0.0.1", "gateway_stats_bind_address=127.0.0.1", "gateway_max_request_body=65536"]
    first = render(directory, *settings)
    assert first.returncode == 0, first.stdout + first.stderr
    process = subprocess.Popen([haproxy, "-f", str(directory / "haproxy.cfg"), "-db"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    yield {"dir": directory, "port": port, "stats": stats, "settings": settings, "first": first}
    process.terminate()
    process.wait(10)


def call(gateway, path, body=None, key=KEY):
    request = urllib.request.Request("http://127.0.0.1:%d%s" % (gateway["port"], path),
                                     data=None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode()),
                                     headers={"Authorization": "Bearer %s" % key} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_files_are_root_only_and_the_key_is_not_in_the_config(gateway):
    directory = gateway["dir"]
    for name in ("client-keys.acl", "backend-keys.map", "models.map"):
        assert oct(os.stat(directory / name).st_mode & 0o777) == "0o600", name
    config = (directory / "haproxy.cfg").read_text()
    assert KEY not in config and "backend-key-1" not in config
    assert KEY not in gateway["first"].stdout and "backend-key-1" not in gateway["first"].stdout
    assert "server gpu1:chat-a 127.0.0.1:18001" in config and "server gpu2:vllm 127.0.0.1:18003" in config
    assert "default-server check inter 2s fall 2 rise 2 on-marked-down shutdown-sessions" in config and "option httpchk GET /health" in config


def test_a_second_run_changes_nothing(gateway):
    second = render(gateway["dir"], *gateway["settings"])
    assert second.returncode == 0 and "changed=0" in second.stdout, second.stdout


def test_clients_need_the_gateway_key(gateway):
    status, body = call(gateway, "/v1/models", key="backend-key-1")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert call(gateway, "/v1/models", key=None)[0] == 401


def test_models_lists_the_union_of_the_fleet(gateway):
    status, body = call(gateway, "/v1/models")
    assert status == 200 and [m["id"] for m in body["data"]] == ["sql", "tiny-chat", "tiny-chat-b"]
    # a LoRA adapter with its base model, as vLLM lists it
    assert body["data"][0]["parent"] == "tiny-chat" and "parent" not in body["data"][1]


def test_an_unknown_model_gets_an_openai_404_naming_the_served_models(gateway):
    status, body = call(gateway, "/v1/chat/completions", {"model": 'no"such', "messages": []})
    assert status == 404
    assert body["error"] == {"message": 'The model `no"such` does not exist. Models served here: sql, tiny-chat, tiny-chat-b.',
                             "type": "NotFoundError", "param": "model", "code": 404}


def test_a_served_model_is_routed_to_its_backend(gateway):
    # Nothing listens on the fixture's ports: the model's backend answers 503 (in OpenAI's shape), not the 404.
    status, body = call(gateway, "/v1/chat/completions", {"model": "tiny-chat-b", "messages": []})
    assert status == 503 and body["error"]["code"] == 503


def test_an_adapter_is_routed_to_the_servers_that_have_it(gateway):
    config = (gateway["dir"] / "haproxy.cfg").read_text()
    sql = config.split("\n# sql\n", 1)[1].split("\n# ", 1)[0]
    assert "server gpu2:vllm 127.0.0.1:18003" in sql and "gpu1:" not in sql
    status, body = call(gateway, "/v1/chat/completions", {"model": "sql", "messages": []})
    assert status == 503 and body["error"]["code"] == 503


@pytest.mark.parametrize("path", ["/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/adapters", "/adapters/sql",
                                  "/v1/load%5Flora%5Fadapter", "/%61dapters"])
def test_lora_admin_endpoints_are_refused_even_with_the_key(gateway, path):
    status, body = call(gateway, path, {"lora_name": "x", "lora_path": "/tmp", "name": "x", "src": "/tmp", "model": "tiny-chat"})
    assert status == 403 and body["error"]["type"] == "PermissionDeniedError"
    assert call(gateway, path, {"model": "tiny-chat"}, key=None)[0] == 403


def test_a_body_too_large_to_route_is_refused(gateway):
    status, body = call(gateway, "/v1/chat/completions", b'{"model": "tiny-chat", "x": "' + b"a" * 200000 + b'"}')
    assert status == 413 and "gateway_max_request_body" in body["error"]["message"]


def stats_get(gateway, path, user="llmops-stats", password=STATS_PASSWORD):
    """(status, body) of a GET on the statistics frontend, with HTTP basic auth when user is given."""
    import base64

    headers = {}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()
    request = urllib.request.Request("http://127.0.0.1:%d%s" % (gateway["stats"], path), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_the_stats_frontend_serves_prometheus_metrics(gateway):
    status, text = stats_get(gateway, "/metrics")
    assert status == 200
    assert 'haproxy_server_status{proxy="model1_tiny-chat",server="gpu1:chat-a"' in text
    assert stats_get(gateway, "/stats;csv")[0] == 200


@pytest.mark.parametrize("path", ["/metrics", "/stats", "/stats;csv", "/"])
@pytest.mark.parametrize("user, password", [(None, None), ("llmops-stats", "wrong"), ("admin", STATS_PASSWORD),
                                            ("llmops-stats", STATS_PASSWORD[:-1])])
def test_the_stats_frontend_answers_401_without_the_password(gateway, path, user, password):
    status, _ = stats_get(gateway, path, user, password)
    assert status == 401


def test_the_config_holding_the_stats_password_is_root_only_and_no_output_shows_it(gateway):
    assert oct(os.stat(gateway["dir"] / "haproxy.cfg").st_mode & 0o777) == "0o600"
    assert STATS_PASSWORD not in gateway["first"].stdout


@pytest.mark.parametrize("extra, message", [
    (['{"gateway_models": ["tiny-chat", "llama"]}'],
     "gateway_models asks for llama, but no host of gpu_hosts serves it (served: sql, tiny-chat, tiny-chat-b)"),
    (['{"gateway_port": 8404}'], "gateway_port and gateway_stats_port are both 8404"),
    # a group whose hosts set no vLLM variables serves vllm_server's default instance: a group that is not there has none
    (["gateway_backend_group=gpu-hosts"], "no vLLM instance to route to: the group gpu-hosts has no host with instances"),
    (["gateway_api_key=''"], "gateway_api_key is empty"),
    (['{"gateway_stats_password": ""}'], "gateway_stats_password is empty"),
    (['{"gateway_stats_password": "short-0123"}'], "gateway_stats_password is shorter than 16 characters"),
    (['{"gateway_stats_password": "0123456789abcdef\\nsecond"}'], "gateway_stats_password holds a line break"),
    (['{"gateway_stats_user": "ops:admin"}'], "gateway_stats_user must be letters, digits"),
])
def test_bad_input_is_refused_before_any_file_is_written(haproxy, tmp_path, extra, message):
    settings = ([STATS] + ["gateway_api_key=%s" % KEY] + extra if "gateway_api_key" not in extra[0] else [STATS] + extra)
    result = render(tmp_path, *settings)
    assert result.returncode != 0 and message in " ".join(result.stdout.split()), result.stdout
    if "gateway_stats" in extra[0]:
        assert "gw: gateway_stats_" in result.stdout and "0123456789abcdef" not in result.stdout
    else:
        assert "The gateway on gw cannot be set up" in result.stdout
    assert os.listdir(tmp_path) == []

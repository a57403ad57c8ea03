"""The endpoints playbooks/verify.yml checks and the fleet report it prints and writes."""

from ansible_collections.llmops.vllm.plugins.filter.vllm_instances import vllm_resolve_instances
from ansible_collections.llmops.vllm.plugins.filter.vllm_verify import (
    vllm_endpoints, vllm_endpoints_at, vllm_fleet_rows, vllm_verify_rows, vllm_verify_table)

DEFAULTS = {"served_model_name": "", "port": 8000, "bind_address": "0.0.0.0", "gpus": "none", "options": {},
            "env": {}, "image": "vllm/vllm-openai:v0.32.0", "download": False}


def test_endpoints_of_resolved_instances_here_and_from_elsewhere():
    instances = vllm_resolve_instances([{"name": "chat", "model": "org/m", "port": 8001},
                                        {"name": "v6", "model": "m", "served_model_name": "x", "bind_address": "::1"}],
                                       DEFAULTS)
    endpoints = vllm_endpoints(instances)
    assert endpoints == [{"url": "http://127.0.0.1:8001", "port": 8001, "model": "org/m", "container": "chat"},
                         {"url": "http://[::1]:8000", "port": 8000, "model": "x", "container": "v6"}]
    assert [e["url"] for e in vllm_endpoints_at(endpoints, "10.0.0.7")] == ["http://10.0.0.7:8001", "http://10.0.0.7:8000"]
    assert vllm_endpoints_at(endpoints, "fd00::7")[0]["url"] == "http://[fd00::7]:8001"


ENDPOINTS = [{"url": "http://127.0.0.1:8000", "model": "chat", "container": "vllm"},
             {"url": "http://127.0.0.1:8001", "model": "small", "container": "vllm-small"}]


def test_rows_from_a_loop_result_and_from_an_unreachable_host():
    run = {"results": [
        {"item": ENDPOINTS[0], "url": ENDPOINTS[0]["url"], "model": "chat", "ready": True, "time_to_ready": 1.25,
         "latency": 0.5, "time_to_first_token": 0.1, "tokens_per_second": 30.0, "completion_tokens": 16,
         "version": "0.32.0", "failed": False},
        {"item": ENDPOINTS[1], "failed": True, "msg": "did not become ready\nmore"}]}
    ok, failed = vllm_verify_rows(run, ENDPOINTS, "node-a")
    assert ok["ok"] is True and ok["reason"] == "" and ok["version"] == "0.32.0" and ok["host"] == "node-a"
    assert failed["ok"] is False and failed["url"] == ENDPOINTS[1]["url"] and failed["model"] == "small"
    assert failed["reason"] == "did not become ready\nmore" and failed["latency"] is None
    rows = vllm_verify_rows({"unreachable": True, "msg": "ssh: port 1: Connection refused"}, ENDPOINTS, "node-c")
    assert [r["reason"] for r in rows] == ["unreachable: ssh: port 1: Connection refused"] * 2
    assert [r["url"] for r in rows] == [e["url"] for e in ENDPOINTS]


def test_fleet_rows_keep_play_order_and_name_hosts_that_left():
    row = {"host": "a", "ok": True}
    rows = vllm_fleet_rows(["a", "b"], {"a": {"llmops_verify_results": [row]}, "b": {}})
    assert rows[0] == row and rows[1]["host"] == "b" and rows[1]["ok"] is False
    assert rows[1]["reason"].startswith("not verified: the host left the play")


def test_table_aligns_columns_and_cuts_reasons_to_their_first_line():
    rows = [{"host": "node-a", "url": "http://127.0.0.1:8000", "model": "chat", "ready": True, "time_to_ready": 1.25,
             "latency": 0.5, "time_to_first_token": 0.125, "tokens_per_second": 30.0, "ok": True},
            {"host": "b", "url": "", "model": "", "ready": False, "ok": False, "reason": "x" * 120 + "\nsecond line"}]
    header, a, b = vllm_verify_table(rows)
    assert header.split() == ["HOST", "URL", "MODEL", "READY", "LATENCY", "TTFT", "TOKENS/S", "RESULT"]
    assert a.split() == ["node-a", "http://127.0.0.1:8000", "chat", "1.2s", "0.500s", "0.125s", "30.0", "ok"]
    assert header.index("URL") == a.index("http://") and b.startswith("b     ")
    assert b.endswith("FAILED: " + "x" * 87 + "...") and "second" not in b

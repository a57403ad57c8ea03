"""playbooks/verify.yml (llmops.vllm.verify) over a small fleet whose "hosts" point at loopback.

node-a serves (the shared vLLM server), node-b has nothing listening on its port, node-c cannot be
reached over SSH. The play verifies every host, prints one table, writes the JSON and Markdown
reports with every host in them, and fails exactly the hosts that did not serve.
"""

import json
import os
import subprocess
import tarfile

import yaml

from vllm_testbed import API_KEY, BIN, ROOT, VLLM_VERSION, _module_env


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_playbook(tmp_path, hosts, *extra, playbook="verify.yml", cwd=ROOT, env=None):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"gpu_hosts": {"hosts": hosts}}))
    env = env or _module_env()
    env["ANSIBLE_STDOUT_CALLBACK"] = "default"
    command = [os.path.join(BIN, "ansible-playbook"), playbook, "-i", str(inventory),
               "-e", "llmops_verify_report_dir=%s" % (tmp_path / "reports"), "-e", "llmops_verify_timeout=5"] + list(extra)
    result = subprocess.run(command, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=600)
    reports = tmp_path / "reports"
    report = json.loads((reports / "verify.json").read_text()) if (reports / "verify.json").exists() else None
    markdown = (reports / "verify.md").read_text() if (reports / "verify.md").exists() else None
    return result, report, markdown


def local_host(**hostvars):
    return dict(ansible_connection="local", ansible_python_interpreter=os.path.join(BIN, "python"), **hostvars)


def test_fleet_report_lists_every_host_with_its_numbers_or_reason(chat_server, tmp_path):
    dead_port = free_port()
    hosts = {
        "node-a": local_host(vllm_server_port=chat_server.port, vllm_server_served_model_name="tiny-chat",
                             vllm_server_api_key=API_KEY, vllm_server_container_name=chat_server.name),
        "node-b": local_host(vllm_server_port=dead_port, vllm_server_served_model_name="tiny-chat"),
        "node-c": dict(ansible_connection="ssh", ansible_host="127.0.0.1", ansible_port=1),
    }
    result, report, markdown = run_playbook(tmp_path, hosts, "-e", "llmops_verify_become=false")
    output = result.stdout

    # the run fails, for the two hosts that do not serve, and only after the reports are written
    assert result.returncode == 2, output + result.stderr
    recap = output[output.index("PLAY RECAP"):]
    assert " failed=0 " in [line for line in recap.splitlines() if line.startswith("node-a")][0]
    for host in ("node-b", "node-c"):
        assert " failed=1 " in [line for line in recap.splitlines() if line.startswith(host)][0]

    rows = {row["host"]: row for row in report["endpoints"]}
    assert list(rows) == ["node-a", "node-b", "node-c"]
    a = rows["node-a"]
    assert a["ok"] is True and a["reason"] == "" and a["ready"] is True
    assert a["url"] == chat_server.url and a["model"] == "tiny-chat" and a["version"] == VLLM_VERSION
    for number in ("time_to_ready", "latency", "time_to_first_token", "tokens_per_second"):
        assert a[number] > 0, number
    b = rows["node-b"]
    assert b["ok"] is False and b["url"] == "http://127.0.0.1:%d" % dead_port
    assert b["reason"].startswith("http://127.0.0.1:%d did not become ready within 5s (waited 5s); last seen: connection "
                                  "refused" % dead_port)
    c = rows["node-c"]
    assert c["ok"] is False
    assert c["reason"].startswith("unreachable: ") and "port 1: Connection refused" in c["reason"]
    assert report["generated_at"].endswith("Z")

    # one table in the output, a row per host
    table = output[output.index("HOST  "):]
    lines = table.splitlines()
    assert lines[0].split() == ["HOST", "URL", "MODEL", "READY", "LATENCY", "TTFT", "TOKENS/S", "RESULT"]
    assert lines[1].split()[:3] == ["node-a", chat_server.url, "tiny-chat"] and lines[1].split()[-1] == "ok"
    assert lines[2].split()[:2] == ["node-b", "http://127.0.0.1:%d" % dead_port] and "FAILED: " in lines[2]
    assert lines[3].split()[0] == "node-c" and "FAILED: unreachable:" in lines[3]

    # the Markdown report: the same rows, and each failure in full
    assert "1 of 3 endpoints serve chat completions." in markdown
    assert "| node-a | %s | tiny-chat | %.1f |" % (chat_server.url, a["time_to_ready"]) in markdown
    assert "| node-b | http://127.0.0.1:%d | tiny-chat | - |" % dead_port in markdown
    failures = markdown[markdown.index("## Failures"):]
    assert "### node-b http://127.0.0.1:%d" % dead_port in failures and b["reason"] in failures
    assert "### node-c" in failures and c["reason"] in failures
    assert API_KEY not in output + markdown + json.dumps(report)


def test_verification_delegated_to_the_control_node(chat_server, tmp_path):
    """llmops_verify_from_control_node: the checks run here against the host's address; the host is never contacted."""
    hosts = {
        # SSH to this "host" would fail: only the delegated checks can succeed
        "node-a": dict(ansible_connection="ssh", ansible_host="127.0.0.1", ansible_port=1,
                       vllm_server_port=chat_server.port, vllm_server_served_model_name="tiny-chat",
                       vllm_server_api_key=API_KEY),
    }
    result, report, markdown = run_playbook(tmp_path, hosts, "-e", "llmops_verify_from_control_node=true")
    assert result.returncode == 0, result.stdout + result.stderr
    [row] = report["endpoints"]
    assert row["ok"] is True and row["url"] == chat_server.url and row["latency"] > 0
    assert "1 of 1 endpoints serve chat completions." in markdown


def test_given_endpoints_are_verified_without_the_role(tmp_path):
    """llmops_verify_endpoints: endpoints deployed otherwise, checked from the control node; no vLLM needed."""
    port = free_port()
    hosts = {"node-x": dict(ansible_connection="ssh", ansible_host="127.0.0.1", ansible_port=1)}
    given = {"llmops_verify_endpoints": [{"url": "http://127.0.0.1:%d" % port, "model": "other"}]}
    result, report, markdown = run_playbook(tmp_path, hosts, "-e", "llmops_verify_from_control_node=true",
                                            "-e", json.dumps(given))
    assert result.returncode == 2, result.stdout + result.stderr
    [row] = report["endpoints"]
    assert row["host"] == "node-x" and row["url"] == "http://127.0.0.1:%d" % port and row["model"] == "other"
    assert row["ok"] is False and "did not become ready" in row["reason"]


def test_the_built_collection_installs_and_verifies_by_its_fqcn(chat_server, tmp_path):
    """What users of Galaxy run: `ansible-galaxy collection build`, `... install`, then
    `ansible-playbook llmops.vllm.verify` outside this checkout (no ansible.cfg, no collections/ link)."""
    installed = tmp_path / "installed"
    # a control node's environment: this checkout's ansible.cfg (and its collections/ link) unknown
    env = _module_env()
    del env["ANSIBLE_CONFIG"]
    # the installed copy; community.docker and the rest come from the `ansible` package as on a control node
    env["ANSIBLE_COLLECTIONS_PATH"] = str(installed)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    build = subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--output-path", str(tmp_path / "dist"),
                            ROOT], cwd=str(elsewhere), env=env, capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stdout + build.stderr
    [artifact] = list((tmp_path / "dist").iterdir())
    assert artifact.name == "llmops-vllm-%s.tar.gz" % yaml.safe_load(open(os.path.join(ROOT, "galaxy.yml")))["version"]
    with tarfile.open(str(artifact)) as tar:
        top = {name.split("/")[0] for name in tar.getnames()}
    # the collection, and none of the test tooling, caches or development files
    assert {"plugins", "roles", "playbooks", "meta", "site.yml", "README.md", "LICENSE"} <= top, top
    assert not top & {"tests", "molecule", "benchmarks", "tools", "collections", ".venv", ".cache", "Makefile", ".ci",
                      "requirements-dev.txt", "requirements-dev.lock", "ansible.cfg"}, top

    install = subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "--no-deps", "-p", str(installed),
                              str(artifact)], cwd=str(elsewhere), env=env, capture_output=True, text=True, timeout=120)
    assert install.returncode == 0, install.stdout + install.stderr
    assert (installed / "ansible_collections" / "llmops" / "vllm" / "MANIFEST.json").is_file(), install.stdout

    hosts = {"node-a": local_host(vllm_server_port=chat_server.port, vllm_server_served_model_name="tiny-chat",
                                  vllm_server_api_key=API_KEY)}
    result, report, markdown = run_playbook(tmp_path, hosts, "-e", "llmops_verify_become=false", "-v",
                                            playbook="llmops.vllm.verify", cwd=elsewhere, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    said = result.stdout + result.stderr
    assert "No config file found; using defaults" in said and "running playbook inside collection llmops.vllm" in said, said
    [row] = report["endpoints"]
    assert row["ok"] is True and row["url"] == chat_server.url and row["version"] == VLLM_VERSION
    assert "1 of 1 endpoints serve chat completions." in markdown

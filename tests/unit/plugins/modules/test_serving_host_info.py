"""serving_host_info: file systems of paths that do not exist yet, listeners, published ports."""

import os

from ansible_collections.llmops.vllm.plugins.modules import serving_host_info as mod

# /proc/net/tcp as the kernel prints it: one listener on 0.0.0.0:8000 (1F40), one
# established connection from 127.0.0.1:22 (0016) that must not count.
PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 30123 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0016 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 30124 1 0000000000000000 20 4 30 10 -1
"""
PROC_NET_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:2328 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 40000 1 0000000000000000 100 0 0 10 0
"""
# `ss -Htlnp` (iproute2 6.1)
SS = """\
LISTEN 0      4096         0.0.0.0:8000      0.0.0.0:*    users:(("docker-proxy",pid=2417,fd=4))
LISTEN 0      4096            [::]:9000         [::]:*    users:(("python3",pid=3001,fd=3),("python3",pid=3002,fd=3))
LISTEN 0      128        127.0.0.1:631       0.0.0.0:*
"""
# `docker ps --format '{{.Names}}\t{{.Ports}}'` of Docker 20.10 and 28
DOCKER_PS = """\
vllm\t0.0.0.0:8000->8000/tcp, :::8000->8000/tcp
other\t127.0.0.1:8080->80/tcp
ranged\t0.0.0.0:9100-9101->9100-9101/tcp
internal\t8000/tcp
new\t[::]:8443->443/tcp
"""


def test_listening_ports_reads_only_listen_state():
    ports = mod.listening_ports([PROC_NET_TCP, PROC_NET_TCP6])
    assert set(ports) == {8000, 9000}


def test_ss_names_the_processes():
    listeners = mod.ss_listeners(SS)
    assert listeners[8000] == [{"address": "0.0.0.0", "process": "docker-proxy", "pid": 2417}]
    assert [entry["pid"] for entry in listeners[9000]] == [3001, 3002]
    assert listeners[631] == [{"address": "127.0.0.1", "process": "", "pid": 0}]


def test_published_ports_by_container():
    published = mod.published_ports(DOCKER_PS)
    assert published[8000] == ["vllm"]
    assert published[8080] == ["other"]
    assert published[9100] == ["ranged"] and published[9101] == ["ranged"]
    assert published[8443] == ["new"]
    assert 80 not in published and 443 not in published


def test_a_missing_path_is_looked_up_through_its_parent(tmp_path):
    existing, mount = mod.mount_point(str(tmp_path / "data" / "vllm" / "models"))
    assert existing == str(tmp_path)
    assert os.path.ismount(mount)


def test_needs_on_one_file_system_add_up(tmp_path, monkeypatch):
    (tmp_path / "docker").mkdir()
    # a fixed free space: the real one moves while other processes write to the disk
    free = 10 * 2**30
    monkeypatch.setattr(mod, "free_bytes", lambda path: free)
    fs = mod.filesystems([
        {"path": str(tmp_path / "docker"), "bytes": free // 2 + 1, "purpose": "image"},
        {"path": str(tmp_path / "models" / "hub"), "bytes": free // 2 + 1, "purpose": "model"},
    ])
    assert len(fs) == 1
    assert fs[0]["required_bytes"] == 2 * (free // 2 + 1)
    assert fs[0]["enough"] is False
    assert [n["purpose"] for n in fs[0]["needs"]] == ["image", "model"]


def test_enough_space(tmp_path):
    [fs] = mod.filesystems([{"path": str(tmp_path), "bytes": 1, "purpose": "x"}])
    assert fs["enough"] is True and fs["free_bytes"] > 0


def test_module_without_docker(run_module, monkeypatch, tmp_path):
    monkeypatch.setattr(mod.AnsibleModule, "get_bin_path", lambda self, name, *a, **k: None)
    kind, result = run_module(mod.main, {"space": [{"path": str(tmp_path), "bytes": 1}], "ports": [1]})
    assert kind == "exit" and result["changed"] is False
    assert result["docker"]["installed"] is False and result["docker"]["answers"] is False
    assert result["ports"][0]["port"] == 1 and result["ports"][0]["containers"] == []
    assert result["filesystems"][0]["enough"] is True


def test_an_image_that_is_present_needs_no_space(tmp_path):
    need = {"path": str(tmp_path), "bytes": 10 ** 18, "purpose": "image", "unless_image": "vllm/vllm-openai:v0.32.0"}
    assert mod.filesystems([need], {"vllm/vllm-openai:v0.32.0": True})[0]["enough"] is True
    assert mod.filesystems([need], {"vllm/vllm-openai:v0.32.0": False})[0]["enough"] is False

"""llmops.vllm.docker_daemon_config against real dockerd binaries: the merged daemon.json is checked
with `dockerd --validate` (Docker Engine 23.0 and later) before it is written, and a file that dockerd
rejects is left exactly as it was.

The newer dockerd is Debian 13's docker.io 26.1.5, unpacked by tests/tooling/dockerd-newer; the older
one is Debian 12's 20.10 that tests/tooling/ensure-docker installs on this machine, which has no
--validate. Neither daemon is started by these tests: `--validate` only reads the file.
"""

import json
import os
import shutil
import subprocess

import pytest

from vllm_testbed import ROOT, ModuleRun

# What an administrator and the NVIDIA toolkit left in daemon.json before the collection came.
FOREIGN = {
    "runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}},
    "insecure-registries": ["registry.internal:5000"],
    "log-opts": {"max-size": "50m", "max-file": "5"},
    "default-address-pools": [{"base": "10.200.0.0/16", "size": 24}],
}
SETTINGS = {"live-restore": True, "registry-mirrors": ["https://mirror.example.com"]}


@pytest.fixture(scope="module")
def dockerd_newer():
    path = subprocess.run([os.path.join(ROOT, "tests", "tooling", "dockerd-newer")], check=True,
                          capture_output=True, text=True).stdout.strip()
    version = subprocess.run([path, "--version"], check=True, capture_output=True, text=True).stdout
    assert version.startswith("Docker version 26."), version
    return path


@pytest.fixture(scope="module")
def dockerd_20():
    path = shutil.which("dockerd") or "/usr/sbin/dockerd"
    version = subprocess.run([path, "--version"], check=True, capture_output=True, text=True).stdout
    if not version.startswith("Docker version 20.10"):
        pytest.skip("the dockerd on PATH is not Debian 12's 20.10 but: %s" % version)
    return path


def write(path, data):
    text = json.dumps(data, indent=4) + "\n"
    path.write_text(text)
    return text


def run(args, **kwargs):
    return ModuleRun(args, module="llmops.vllm.docker_daemon_config", **kwargs).result(timeout=120)


def test_merged_file_validated_by_dockerd_26_keeps_every_foreign_key(tmp_path, dockerd_newer):
    path = tmp_path / "daemon.json"
    write(path, FOREIGN)
    result = run({"path": str(path), "settings": SETTINGS, "validate": "always", "dockerd_path": dockerd_newer})
    assert not result.get("failed"), result.get("msg")
    assert result["changed"] and result["validated"] is True
    assert json.loads(path.read_text()) == dict(FOREIGN, **SETTINGS)
    # the file as written is one dockerd 26 accepts
    check = subprocess.run([dockerd_newer, "--validate", "--config-file", str(path)], capture_output=True, text=True)
    assert check.returncode == 0 and "configuration OK" in check.stdout + check.stderr, check

    again = run({"path": str(path), "settings": SETTINGS, "validate": "always", "dockerd_path": dockerd_newer})
    assert again["changed"] is False and again["validated"] is False


@pytest.mark.parametrize("foreign, dockerd_says", [
    # a misspelt key left by hand (max-concurrent-downloads)
    ({"max-concurrent-download": 6}, "the following directives don't match any configuration option: "
                                     "max-concurrent-download"),
    # max-file written as a number: Docker wants strings in log-opts
    ({"log-opts": {"max-file": 5}}, "json: cannot unmarshal number into Go struct field Config.CommonConfig.LogConfig.log-opts "
                                    "of type string"),
], ids=["unknown-key", "wrong-type"])
def test_file_dockerd_26_rejects_is_left_as_it_was(tmp_path, dockerd_newer, foreign, dockerd_says):
    path = tmp_path / "daemon.json"
    before = write(path, dict(FOREIGN, **foreign))
    result = run({"path": str(path), "settings": SETTINGS, "validate": "auto", "dockerd_path": dockerd_newer})
    assert result.get("failed"), result
    # dockerd's own words, without the name of the temporary file it checked
    assert result["msg"] == "dockerd rejected the merged configuration, so %s was not changed: %s" % (path, dockerd_says)
    assert path.read_text() == before
    assert os.listdir(str(tmp_path)) == ["daemon.json"], "no temporary file may be left beside it"


def test_dockerd_20_cannot_validate_auto_writes_always_refuses(tmp_path, dockerd_20):
    path = tmp_path / "daemon.json"
    before = write(path, FOREIGN)
    refused = run({"path": str(path), "settings": SETTINGS, "validate": "always", "dockerd_path": dockerd_20})
    assert refused.get("failed")
    assert refused["msg"] == ("validate=always, but %s cannot validate a configuration file (dockerd --validate needs "
                              "Docker Engine 23.0 or later). Use validate=auto or install a newer Docker Engine." % dockerd_20)
    assert path.read_text() == before

    written = run({"path": str(path), "settings": SETTINGS, "validate": "auto", "dockerd_path": dockerd_20})
    assert not written.get("failed"), written.get("msg")
    assert written["changed"] and written["validated"] is False
    assert json.loads(path.read_text()) == dict(FOREIGN, **SETTINGS)

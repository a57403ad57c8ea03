"""host_state: what dpkg, rpm and the file system say, read as the roles compare it."""

import hashlib
import os

from ansible_collections.llmops.vllm.plugins.module_utils import _host_state as mod

# dpkg-query -W -f '${Package}\t${db:Status-Status}\t${Version}\n' of dpkg 1.21: a package removed
# but not purged is 'config-files', one never installed prints nothing (and an error on stderr)
DPKG = "docker.io\tinstalled\t20.10.24+dfsg1-1+b3\nnftables\tconfig-files\t1.0.6-2+deb12u2\nlibc6:amd64\tinstalled\t2.36-9\n"
# rpm -q --qf ... of rpm 4.16: a missing package prints "package X is not installed"
RPM = "docker-ce\t3:27.3.1-1.el9\npackage containerd.io is not installed\n"


def test_dpkg_counts_only_installed_packages():
    assert mod.dpkg_versions(DPKG) == {"docker.io": "20.10.24+dfsg1-1+b3", "libc6": "2.36-9"}


def test_rpm_skips_the_lines_of_missing_packages():
    assert mod.rpm_versions(RPM) == {"docker-ce": "3:27.3.1-1.el9"}


def test_file_state_of_a_file_a_directory_and_nothing(tmp_path):
    path = tmp_path / "config.yml"
    path.write_text("a: 1\n")
    os.chmod(str(path), 0o640)
    state = mod.file_state(str(path))
    assert state["exists"] and state["isreg"] and not state["isdir"]
    assert state["mode"] == "0640"
    assert state["checksum"] == hashlib.sha1(b"a: 1\n").hexdigest()
    directory = mod.file_state(str(tmp_path))
    assert directory["isdir"] and "checksum" not in directory
    assert mod.file_state(str(tmp_path / "absent")) == {"exists": False}


def test_names_resolve_to_every_address_once_and_unknown_names_to_none():
    found = mod.resolve(["localhost", "nowhere.invalid"])
    assert "127.0.0.1" in found["localhost"] and len(found["localhost"]) == len(set(found["localhost"]))
    assert found["nowhere.invalid"] == []


def test_text_of_a_small_file_only(tmp_path):
    small = tmp_path / "daemon.json"
    small.write_text('{"live-restore": true}\n')
    big = tmp_path / "big"
    big.write_bytes(b"x" * 70000)
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    assert mod.text_of(str(small)) == '{"live-restore": true}\n'
    assert mod.text_of(str(big)) is None
    assert mod.text_of(str(binary)) is None
    assert mod.text_of(str(tmp_path / "absent")) is None

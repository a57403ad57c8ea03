"""host_state filters: a step is skipped only when the host already holds exactly what it would write."""

import hashlib

import pytest

from ansible.errors import AnsibleFilterError

from ansible_collections.llmops.vllm.plugins.filter.host_state import (
    llmops_daemon_json_holds,
    llmops_dir_matches,
    llmops_file_matches,
    llmops_missing_packages,
    llmops_service_matches,
)

CONTENT = "version: 0.1\nproxy:\n  remoteurl: https://registry-1.docker.io\n"
FILE = {"exists": True, "isdir": False, "isreg": True, "islnk": False, "mode": "0640", "owner": "root",
        "group": "docker-registry", "checksum": hashlib.sha1(CONTENT.encode()).hexdigest()}


def test_a_file_with_the_same_content_and_attributes_matches():
    assert llmops_file_matches(FILE, content=CONTENT, mode="0640", owner="root", group="docker-registry")
    assert llmops_file_matches(FILE, content=CONTENT, mode=0o640)


@pytest.mark.parametrize("change", [
    {"content": CONTENT + "#\n"},
    {"mode": "0644"},
    {"owner": "nobody"},
    {"group": "root"},
])
def test_a_file_differing_in_anything_asked_does_not_match(change):
    wanted = dict(content=CONTENT, mode="0640", owner="root", group="docker-registry")
    wanted.update(change)
    assert not llmops_file_matches(FILE, **wanted)


def test_a_missing_path_a_directory_or_a_link_is_not_a_matching_file():
    assert not llmops_file_matches({"exists": False}, content=CONTENT)
    assert not llmops_file_matches(dict(FILE, isreg=False, isdir=True), mode="0640")
    assert not llmops_file_matches(dict(FILE, isreg=False, islnk=True), mode="0640")


def test_directories_match_on_type_and_attributes():
    directory = {"exists": True, "isdir": True, "isreg": False, "mode": "0755", "owner": "root", "group": "root"}
    assert llmops_dir_matches(directory, mode="0755", owner="root", group="root")
    assert not llmops_dir_matches(directory, mode="0750")
    assert not llmops_dir_matches({"exists": False}, mode="0755")
    assert not llmops_dir_matches(FILE)


def test_a_filter_given_something_else_than_a_path_entry_says_so():
    with pytest.raises(AnsibleFilterError, match="host_state"):
        llmops_file_matches(None)


def test_missing_packages_count_names_and_apt_version_globs():
    versions = {"docker-ce": "5:27.3.1-1~debian.12~bookworm", "docker-ce-cli": "5:27.3.1-1~debian.12~bookworm",
                "containerd.io": None}
    assert llmops_missing_packages(["docker-ce", "containerd.io", "absent"], versions) == ["containerd.io", "absent"]
    assert llmops_missing_packages(["docker-ce=5:27.3*", "docker-ce-cli=5:27.4*"], versions) == ["docker-ce-cli=5:27.4*"]
    # a spelling the filter does not read (dnf's name-version) is left to the package manager
    assert llmops_missing_packages(["docker-ce-27.3.1"], versions) == ["docker-ce-27.3.1"]


@pytest.mark.parametrize("state, wanted, enabled, matches", [
    ({"active": "active", "enabled": "enabled"}, "started", True, True),
    ({"active": "active", "enabled": "disabled"}, "started", True, False),
    ({"active": "inactive", "enabled": "enabled"}, "started", True, False),
    ({"active": "failed", "enabled": "disabled"}, "stopped", False, True),
    ({"active": "active", "enabled": "enabled"}, "restarted", True, False),
    ({"active": "active", "enabled": "enabled"}, "started", None, True),
    ({}, "started", True, False),
])
def test_a_service_matches_only_a_state_it_can_already_be_in(state, wanted, enabled, matches):
    assert llmops_service_matches(state, wanted, enabled) is matches


DAEMON_JSON = '{\n  "live-restore": true,\n  "log-opts": {"max-size": "100m", "max-file": "3"},\n  "data-root": "/srv/docker"\n}\n'


@pytest.mark.parametrize("settings, holds", [
    ({"live-restore": True}, True),
    ({"log-opts": {"max-size": "100m"}}, True),
    ({"live-restore": False}, False),
    ({"log-opts": {"max-file": "5"}}, False),
    ({"registry-mirrors": ["http://cache:5000"]}, False),
    ({"default-runtime": None}, True),
    ({"data-root": None}, False),
])
def test_daemon_json_holds_settings_as_the_module_merges_them(settings, holds):
    assert llmops_daemon_json_holds(DAEMON_JSON, settings) is holds


@pytest.mark.parametrize("text", [None, "", "  \n", "{not json", "[1, 2]"])
def test_a_missing_empty_or_broken_daemon_json_is_left_to_the_module(text):
    assert llmops_daemon_json_holds(text, {}) is False

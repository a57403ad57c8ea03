import json
import os
import stat

import pytest

from ansible_collections.llmops.vllm.plugins.modules import docker_daemon_config as mod


FOREIGN = {
    "insecure-registries": ["10.0.0.5:5000"],
    "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}},
    "log-opts": {"labels": "team", "max-size": "10m"},
    "default-runtime": "nvidia",
}


@pytest.fixture
def daemon_json(tmp_path):
    path = tmp_path / "daemon.json"
    path.write_text(json.dumps(FOREIGN, indent=4))
    return path


def test_merge_keeps_foreign_keys_and_merges_nested_objects():
    merged = mod.merge_settings(FOREIGN, {"registry-mirrors": ["http://m"], "log-opts": {"max-size": "100m", "max-file": "3"}})
    assert merged["insecure-registries"] == ["10.0.0.5:5000"]
    assert merged["runtimes"] == FOREIGN["runtimes"]
    assert merged["log-opts"] == {"labels": "team", "max-size": "100m", "max-file": "3"}
    assert merged["registry-mirrors"] == ["http://m"]
    assert FOREIGN["log-opts"] == {"labels": "team", "max-size": "10m"}, "the input must not be mutated"


def test_merge_adds_a_runtime_next_to_others():
    merged = mod.merge_settings({"runtimes": {"crun": {"path": "/usr/bin/crun"}}}, {"runtimes": {"nvidia": {"path": "nvidia-container-runtime"}}})
    assert set(merged["runtimes"]) == {"crun", "nvidia"}


def test_null_removes_a_key():
    assert "default-runtime" not in mod.merge_settings(FOREIGN, {"default-runtime": None})


def test_lists_are_replaced_not_appended():
    assert mod.merge_settings({"registry-mirrors": ["http://a"]}, {"registry-mirrors": ["http://b"]})["registry-mirrors"] == ["http://b"]


def test_writes_merged_file_and_reports_change(run_module, daemon_json):
    kind, result = run_module(mod.main, {"path": str(daemon_json), "settings": {"live-restore": True}, "validate": "never"}, diff=True)
    assert kind == "exit" and result["changed"] is True
    assert result["changed_keys"] == ["live-restore"]
    on_disk = json.loads(daemon_json.read_text())
    assert on_disk == dict(FOREIGN, **{"live-restore": True})
    assert '"live-restore": true' in result["diff"]["after"]
    assert stat.S_IMODE(os.stat(daemon_json).st_mode) == 0o644


def test_second_run_changes_nothing_even_if_formatting_differs(run_module, daemon_json):
    run_module(mod.main, {"path": str(daemon_json), "settings": {"live-restore": True}, "validate": "never"})
    # another tool rewrites the same content with other indentation and key order
    data = json.loads(daemon_json.read_text())
    daemon_json.write_text(json.dumps(dict(reversed(list(data.items()))), indent=8))
    before = daemon_json.read_text()
    kind, result = run_module(mod.main, {"path": str(daemon_json), "settings": {"live-restore": True}, "validate": "never"})
    assert kind == "exit" and result["changed"] is False
    assert daemon_json.read_text() == before


def test_check_mode_reports_but_does_not_write(run_module, daemon_json):
    before = daemon_json.read_text()
    kind, result = run_module(mod.main, {"path": str(daemon_json), "settings": {"registry-mirrors": ["http://m"]}, "validate": "never"}, check_mode=True)
    assert kind == "exit" and result["changed"] is True
    assert result["config"]["registry-mirrors"] == ["http://m"]
    assert daemon_json.read_text() == before


def test_missing_file_is_created(run_module, tmp_path):
    path = tmp_path / "docker" / "daemon.json"
    kind, result = run_module(mod.main, {"path": str(path), "settings": {"live-restore": True}, "validate": "never"})
    assert kind == "exit" and result["changed"] is True and result["previous"] == {}
    assert json.loads(path.read_text()) == {"live-restore": True}


@pytest.mark.parametrize("content, expected", [("{ not json", "is not valid JSON"), ("[1, 2]", "holds a JSON list")])
def test_broken_file_is_never_overwritten(run_module, tmp_path, content, expected):
    path = tmp_path / "daemon.json"
    path.write_text(content)
    kind, result = run_module(mod.main, {"path": str(path), "settings": {"live-restore": True}, "validate": "never"})
    assert kind == "fail"
    assert expected in result["msg"] and "left as it is" in result["msg"]
    assert path.read_text() == content


def _fake_dockerd(tmp_path, accepts, knows_validate=True):
    script = tmp_path / "dockerd"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --help ]; then echo "  --tls  %s"; exit 0; fi\n'
        'if [ "$1" = --validate ]; then %s; fi\n' % ("--validate" if knows_validate else "", "echo configuration OK; exit 0" if accepts else "echo 'unknown key: registry-mirrorz' >&2; exit 1")
    )
    script.chmod(0o755)
    return str(script)


def test_dockerd_rejection_leaves_file_alone(run_module, daemon_json, tmp_path):
    before = daemon_json.read_text()
    kind, result = run_module(mod.main, {"path": str(daemon_json), "settings": {"registry-mirrorz": ["x"]}, "dockerd_path": _fake_dockerd(tmp_path, False)})
    assert kind == "fail"
    assert "dockerd rejected the merged configuration" in result["msg"] and "registry-mirrorz" in result["msg"]
    assert daemon_json.read_text() == before


def test_dockerd_validation_runs_when_supported(run_module, daemon_json, tmp_path):
    kind, result = run_module(mod.main, {"path": str(daemon_json), "settings": {"live-restore": True}, "dockerd_path": _fake_dockerd(tmp_path, True)})
    assert kind == "exit" and result["validated"] is True


def test_old_dockerd_skips_validation_in_auto_and_fails_in_always(run_module, daemon_json, tmp_path):
    old = _fake_dockerd(tmp_path, True, knows_validate=False)
    kind, result = run_module(mod.main, {"path": str(daemon_json), "settings": {"live-restore": True}, "dockerd_path": old})
    assert kind == "exit" and result["validated"] is False
    kind, result = run_module(mod.main, {"path": str(daemon_json), "settings": {"debug": True}, "dockerd_path": old, "validate": "always"})
    assert kind == "fail" and "dockerd --validate needs Docker Engine 23.0" in result["msg"]


@pytest.mark.parametrize("settings, apply", [
    ({"registry-mirrors": ["http://m"], "insecure-registries": ["10.0.0.6:5000"]}, "reload"),
    ({"runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}, "default-runtime": "runc"}, "reload"),
    ({"exec-opts": ["native.cgroupdriver=cgroupfs"]}, "restart"),
    ({"log-opts": {"max-size": "50m"}, "registry-mirrors": ["http://m"]}, "restart"),
    ({"insecure-registries": ["10.0.0.5:5000"]}, "none"),
])
def test_says_whether_a_reload_is_enough(run_module, daemon_json, settings, apply):
    kind, result = run_module(mod.main, {"path": str(daemon_json), "settings": settings, "validate": "never"}, check_mode=True)
    assert kind == "exit" and result["apply"] == apply


def test_says_when_live_restore_is_turned_on(run_module, daemon_json):
    kind, result = run_module(mod.main, {"path": str(daemon_json), "settings": {"live-restore": True}, "validate": "never"})
    assert result["live_restore_turned_on"] is True
    kind, result = run_module(mod.main, {"path": str(daemon_json), "settings": {"live-restore": True, "debug": True}, "validate": "never"})
    assert result["live_restore_turned_on"] is False


def test_list_options_replace_an_entry_by_name_and_keep_the_others():
    current = {"exec-opts": ["native.umask=normal", "native.cgroupdriver=systemd"]}
    merged = mod.set_list_options(current, {"exec-opts": ["native.cgroupdriver=cgroupfs"]})
    assert merged["exec-opts"] == ["native.umask=normal", "native.cgroupdriver=cgroupfs"]
    assert mod.set_list_options({}, {"exec-opts": ["native.cgroupdriver=cgroupfs"]}) == {"exec-opts": ["native.cgroupdriver=cgroupfs"]}
    assert mod.set_list_options(merged, {"exec-opts": ["native.cgroupdriver=cgroupfs"]}) == merged


def test_list_options_through_the_module_are_idempotent(run_module, daemon_json):
    args = {"path": str(daemon_json), "settings": {}, "list_options": {"exec-opts": ["native.cgroupdriver=cgroupfs"]}, "validate": "never"}
    kind, first = run_module(mod.main, args)
    kind, second = run_module(mod.main, args)
    assert first["changed"] is True and first["apply"] == "restart"
    assert second["changed"] is False
    on_disk = json.loads(daemon_json.read_text())
    assert on_disk["exec-opts"] == ["native.cgroupdriver=cgroupfs"] and on_disk["runtimes"] == FOREIGN["runtimes"]


def test_list_options_refuse_a_key_that_is_not_a_list(run_module, tmp_path):
    path = tmp_path / "daemon.json"
    path.write_text('{"exec-opts": "native.cgroupdriver=systemd"}')
    kind, result = run_module(mod.main, {"path": str(path), "settings": {}, "list_options": {"exec-opts": ["native.cgroupdriver=cgroupfs"]}})
    assert kind == "fail" and "not a list" in result["msg"]
    assert path.read_text() == '{"exec-opts": "native.cgroupdriver=systemd"}'

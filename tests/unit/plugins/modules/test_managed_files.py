"""managed_files: the vllm_server role's directories and per-instance files in one module call (issue 23):
check mode writes nothing, a second call changes nothing, only changed files' labels come back."""

import os
import stat

from ansible_collections.llmops.vllm.plugins.modules import managed_files as mod


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def args(tmp_path, a="a: 1\n", b="b: 2\n"):
    configs = str(tmp_path / "base" / "configs")
    return {
        "directory_mode": "0755",
        "directories": [{"path": str(tmp_path / "base")}, {"path": configs, "mode": "0750"}],
        "files": [
            {"path": configs + "/a.yaml", "content": a, "mode": "0640", "label": "a"},
            {"path": configs + "/a.env", "content": "KEY=x\n", "mode": "0600", "label": "a"},
            {"path": configs + "/b.yaml", "content": b, "mode": "0640", "label": "b"},
        ],
    }


def test_check_mode_writes_nothing_and_says_what_would_change(tmp_path, run_module):
    status, result = run_module(mod.main, args(tmp_path), check_mode=True, diff=True)
    assert status == "exit" and result["changed"]
    assert result["changed_labels"] == ["a", "b"] and len(result["changed_files"]) == 3
    assert not (tmp_path / "base").exists()
    assert {d["after_header"]: d["after"] for d in result["diff"]}[str(tmp_path / "base/configs/b.yaml")] == "b: 2\n"


def test_writes_then_changes_nothing(tmp_path, run_module):
    status, result = run_module(mod.main, args(tmp_path))
    assert status == "exit" and result["changed"]
    configs = tmp_path / "base" / "configs"
    assert (configs / "a.yaml").read_text() == "a: 1\n"
    assert mode(configs) == 0o750 and mode(tmp_path / "base") == 0o755
    assert mode(configs / "a.env") == 0o600 and mode(configs / "b.yaml") == 0o640
    assert not [n for n in os.listdir(configs) if n.startswith(".")], "a temporary file was left behind"
    for check_mode in (True, False):
        status, again = run_module(mod.main, args(tmp_path), check_mode=check_mode, diff=True)
        assert not again["changed"] and again["changed_files"] == [] and again["diff"] == []


def test_only_the_changed_files_label_comes_back(tmp_path, run_module):
    run_module(mod.main, args(tmp_path))
    status, result = run_module(mod.main, args(tmp_path, b="b: 3\n"), diff=True)
    assert result["changed_labels"] == ["b"] and result["changed_files"] == [str(tmp_path / "base/configs/b.yaml")]
    assert result["diff"] == [{"before_header": str(tmp_path / "base/configs/b.yaml"), "before": "b: 2\n",
                               "after_header": str(tmp_path / "base/configs/b.yaml"), "after": "b: 3\n"}]
    assert (tmp_path / "base/configs/b.yaml").read_text() == "b: 3\n"


def test_a_mode_alone_is_a_change(tmp_path, run_module):
    run_module(mod.main, args(tmp_path))
    os.chmod(tmp_path / "base/configs/a.env", 0o644)
    status, result = run_module(mod.main, args(tmp_path))
    assert result["changed_labels"] == ["a"] and mode(tmp_path / "base/configs/a.env") == 0o600

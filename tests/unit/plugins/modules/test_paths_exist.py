"""paths_exist: one call for the paths the vllm_server role looks for (tasks/find.yml)."""

import os
import socket

from ansible_collections.llmops.vllm.plugins.modules import paths_exist as mod


def test_each_path_as_given(tmp_path, run_module):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    paths = [str(tmp_path / n) for n in ("file", "dir", "missing", "dangling", "sock")]
    try:
        status, result = run_module(mod.main, {"paths": paths}, check_mode=True)
    finally:
        sock.close()
    assert status == "exit" and result["changed"] is False
    assert result["exists"] == dict(zip(paths, [True, True, False, False, True]))
    assert result["directories"] == [paths[1]]


def test_a_path_below_a_file_is_missing(tmp_path, run_module):
    (tmp_path / "file").write_text("x")
    path = os.path.join(str(tmp_path / "file"), "below")
    assert run_module(mod.main, {"paths": [path]})[1]["exists"] == {path: False}

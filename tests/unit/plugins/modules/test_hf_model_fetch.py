"""hf_model_fetch, with huggingface_hub's network calls patched: changed only when something was
downloaded, check mode writes nothing, the cache serves offline, errors in the hub's words."""

import os

import httpx2
import pytest
from huggingface_hub.file_download import DryRunFileInfo
from huggingface_hub.utils import hf_raise_for_status

from ansible_collections.llmops.vllm.plugins.modules import hf_model_fetch as mod
from hf_cache_layout import TINY, write_model

REPO = "llmops-test/tiny-chat"
ENDPOINT = "http://127.0.0.1:5080"
TOKEN = "hf_secret_token_value"


def hub_error(status, headers, body=b"{}", url=ENDPOINT + "/api/models/" + REPO + "/revision/main"):
    """The exception huggingface_hub raises for this answer of the hub."""
    response = httpx2.Response(status, headers=headers, content=body, request=httpx2.Request("GET", url))
    with pytest.raises(Exception) as caught:
        hf_raise_for_status(response)
    return caught.value


class FakeHub(object):
    """repo_info and snapshot_download as huggingface_hub does them, against a source cache."""

    def __init__(self, monkeypatch, source, commit):
        self.source, self.commit = source, commit
        self.repo_info_error = None
        self.downloads = []
        self.calls = []
        hub = self

        class Info(object):
            sha = commit

        def repo_info(api, repo_id, revision=None, token=None, **kwargs):
            hub.calls.append(("repo_info", repo_id, revision, token, api.endpoint))
            if hub.repo_info_error is not None:
                raise hub.repo_info_error
            return Info()

        def snapshot_download(repo_id, revision=None, cache_dir=None, local_files_only=False, dry_run=False, **kw):
            hub.calls.append(("snapshot_download", revision, local_files_only, dry_run))
            if local_files_only:
                return real_snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True,
                                              allow_patterns=kw.get("allow_patterns"),
                                              ignore_patterns=kw.get("ignore_patterns"))
            storage = os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))
            if dry_run:
                return [DryRunFileInfo(commit_hash=revision, file_size=len(data), filename=path,
                                       local_path="", is_cached=os.path.exists(os.path.join(storage, "snapshots", revision, path)),
                                       will_download=not os.path.exists(os.path.join(storage, "snapshots", revision, path)))
                        for path, data in sorted(TINY.items())]
            before = set(os.listdir(os.path.join(storage, "blobs"))) if os.path.isdir(os.path.join(storage, "blobs")) else set()
            write_model(cache_dir, repo_id, TINY, revision=None, commit=revision)
            after = set(os.listdir(os.path.join(storage, "blobs")))
            hub.downloads.append(sorted(after - before))
            return os.path.join(storage, "snapshots", revision)

        real_snapshot_download = mod.snapshot_download
        monkeypatch.setattr(mod.HfApi, "repo_info", repo_info)
        monkeypatch.setattr(mod, "snapshot_download", snapshot_download)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    source, commit = write_model(tmp_path / "source", REPO, TINY)
    return FakeHub(monkeypatch, source, commit)


def args(cache_dir, **more):
    return dict({"repo_id": REPO, "cache_dir": str(cache_dir), "endpoint": ENDPOINT, "token": TOKEN}, **more)


def test_first_run_downloads_then_nothing_changes(run_module, hub, tmp_path):
    cache = tmp_path / "cache"
    status, result = run_module(mod.main, args(cache), diff=True)
    assert status == "exit", result
    assert result["changed"] is True
    assert result["commit"] == hub.commit
    assert result["files"] == sorted(TINY) and result["downloaded"] == sorted(TINY)
    assert result["bytes"] == result["downloaded_bytes"] == sum(len(d) for d in TINY.values())
    assert result["snapshot_path"] == str(cache / ("models--llmops-test--tiny-chat/snapshots/" + hub.commit))
    assert result["diff"]["after"]["commit"] == hub.commit and result["diff"]["before"]["commit"] == ""
    # refs/main is written as the client writes it: the commit, no newline.
    assert (cache / "models--llmops-test--tiny-chat" / "refs" / "main").read_text() == hub.commit
    assert hub.calls[0] == ("repo_info", REPO, "main", TOKEN, ENDPOINT)
    assert hub.calls[1] == ("snapshot_download", hub.commit, False, False)

    status, result = run_module(mod.main, args(cache), diff=True)
    assert status == "exit" and result["changed"] is False, result
    assert result["downloaded"] == [] and result["downloaded_bytes"] == 0 and "diff" not in result
    assert result["files"] == sorted(TINY)


def test_a_moved_branch_changes_the_ref_without_downloading(run_module, hub, tmp_path):
    cache = tmp_path / "cache"
    write_model(cache, REPO, TINY, revision="main", commit="0" * 40)
    status, result = run_module(mod.main, args(cache))
    assert status == "exit" and result["changed"] is True
    assert result["downloaded"] == []  # same blobs, another commit
    assert (cache / "models--llmops-test--tiny-chat" / "refs" / "main").read_text() == hub.commit


def test_check_mode_reports_without_writing(run_module, hub, tmp_path):
    cache = tmp_path / "cache"
    status, result = run_module(mod.main, args(cache), check_mode=True)
    assert status == "exit" and result["changed"] is True, result
    assert result["downloaded"] == sorted(TINY)
    assert not cache.exists()
    assert ("snapshot_download", hub.commit, False, True) in hub.calls

    run_module(mod.main, args(cache))
    status, result = run_module(mod.main, args(cache), check_mode=True)
    assert status == "exit" and result["changed"] is False and result["downloaded"] == []


def test_offline_uses_a_complete_cache_without_the_hub(run_module, hub, tmp_path):
    cache = tmp_path / "cache"
    run_module(mod.main, args(cache))
    hub.calls[:] = []
    status, result = run_module(mod.main, args(cache, offline=True))
    assert status == "exit" and result["changed"] is False, result
    assert result["source"] == "cache" and result["commit"] == hub.commit and result["files"] == sorted(TINY)
    assert [c[0] for c in hub.calls] == ["snapshot_download"]  # no repo_info


def test_offline_without_the_model_fails(run_module, hub, tmp_path):
    status, result = run_module(mod.main, args(tmp_path / "cache", offline=True))
    assert status == "fail"
    assert "model llmops-test/tiny-chat (revision main) is not complete in" in result["msg"]
    assert "offline is set" in result["msg"]


def test_offline_with_an_incomplete_snapshot_fails(run_module, hub, tmp_path):
    cache = tmp_path / "cache"
    run_module(mod.main, args(cache))
    os.unlink(str(cache / "models--llmops-test--tiny-chat" / "snapshots" / hub.commit / "tokenizer.json"))
    status, result = run_module(mod.main, args(cache, offline=True))
    assert status == "fail" and "tokenizer.json" in result["msg"]


def test_an_unreachable_hub_uses_the_cache_with_a_warning(run_module, hub, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    run_module(mod.main, args(cache))
    hub.repo_info_error = httpx2.ConnectError("[Errno 111] Connection refused")
    warnings = []
    monkeypatch.setattr(mod.AnsibleModule, "warn", lambda self, w: warnings.append(w))
    status, result = run_module(mod.main, args(cache))
    assert status == "exit" and result["changed"] is False and result["source"] == "cache"
    assert "could not reach %s" % ENDPOINT in warnings[0]


def test_an_unreachable_hub_without_the_model_fails_naming_the_endpoint(run_module, hub, tmp_path):
    hub.repo_info_error = httpx2.ConnectError("[Errno 111] Connection refused")
    status, result = run_module(mod.main, args(tmp_path / "cache"))
    assert status == "fail"
    assert "could not reach %s" % ENDPOINT in result["msg"]
    assert "vllm_server_hf_endpoint" in result["msg"]


@pytest.mark.parametrize("status_code,headers,words", [
    (401, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"},
     ["was not found on " + ENDPOINT, "Repository not found", "vllm_server_hf_token"]),
    (404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id: main"},
     ["the revision was not found", "Invalid rev id: main"]),
    (403, {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to model %s is restricted and you are not in "
           "the authorized list. Token %s." % (REPO, TOKEN)},
     ["is gated", "not in the authorized list", "vllm_server_hf_token"]),
    (401, {"X-Error-Message": "Invalid credentials in Authorization header"},
     ["rejected the token", "Invalid credentials in Authorization header", "vllm_server_hf_token"]),
])
def test_hub_errors_in_the_hubs_words_without_the_token(run_module, hub, tmp_path, status_code, headers, words):
    hub.repo_info_error = hub_error(status_code, headers)
    status, result = run_module(mod.main, args(tmp_path / "cache"))
    assert status == "fail"
    assert "model llmops-test/tiny-chat (revision main)" in result["msg"]
    for word in words:
        assert word in result["msg"]
    assert TOKEN not in result["msg"]


def test_a_missing_huggingface_hub_says_how_to_install_it(run_module, tmp_path, monkeypatch):
    monkeypatch.setattr(mod, "HF_IMPORT_ERROR", "ImportError: No module named 'huggingface_hub'")
    status, result = run_module(mod.main, args(tmp_path))
    assert status == "fail"
    assert "pip install huggingface_hub" in result["msg"] and "control node" in result["msg"]

"""hf_cache_check: a good copy passes; corrupt, truncated, missing and unlinked files fail, each named."""

import os

import pytest

from ansible_collections.llmops.vllm.plugins.modules import hf_cache_check as mod
from hf_cache_layout import TINY, write_model

REPO = "llmops-test/tiny-chat"


@pytest.fixture
def cache(tmp_path):
    storage, commit = write_model(tmp_path, REPO, TINY)
    return tmp_path, storage, commit


def blob_of(storage, commit, path):
    return os.path.realpath(os.path.join(storage, "snapshots", commit, path))


@pytest.mark.parametrize("check_mode", [False, True])
def test_a_complete_copy_passes_and_changes_nothing(run_module, cache, check_mode):
    cache_dir, storage, commit = cache
    status, result = run_module(mod.main, {"cache_dir": str(cache_dir), "repo_id": REPO}, check_mode=check_mode)
    assert status == "exit", result
    assert result["changed"] is False
    assert result["commit"] == commit
    assert result["files"] == sorted(TINY)
    assert result["bytes"] == sum(len(d) for d in TINY.values())
    assert result["manifest"] == "trees" and result["bad_files"] == []


def test_a_commit_hash_revision_needs_no_ref(run_module, tmp_path):
    storage, commit = write_model(tmp_path, REPO, TINY, revision=None)
    status, result = run_module(mod.main, {"cache_dir": str(tmp_path), "repo_id": REPO, "revision": commit})
    assert status == "exit", result
    status, result = run_module(mod.main, {"cache_dir": str(tmp_path), "repo_id": REPO})
    assert status == "fail" and "refs/main is missing" in result["msg"]


def test_a_corrupt_blob_of_the_right_size_fails(run_module, cache):
    cache_dir, storage, commit = cache
    blob = blob_of(storage, commit, "model.safetensors")
    with open(blob, "r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    status, result = run_module(mod.main, {"cache_dir": str(cache_dir), "repo_id": REPO})
    assert status == "fail"
    assert [b["file"] for b in result["bad_files"]] == ["model.safetensors"]
    assert "does not match its sha256" in result["bad_files"][0]["problem"]
    assert "Delete %s and run again" % storage in result["msg"]
    assert "model.safetensors" in result["msg"]
    assert "model.safetensors" not in result["files"] and "config.json" in result["files"]


def test_a_corrupt_git_blob_fails_on_its_sha1(run_module, cache):
    cache_dir, storage, commit = cache
    blob = blob_of(storage, commit, "config.json")
    with open(blob, "r+b") as f:
        f.write(b"[")
    status, result = run_module(mod.main, {"cache_dir": str(cache_dir), "repo_id": REPO})
    assert status == "fail"
    assert "does not match its git blob sha1" in result["bad_files"][0]["problem"]


def test_checksum_false_checks_sizes_only(run_module, cache):
    cache_dir, storage, commit = cache
    with open(blob_of(storage, commit, "model.safetensors"), "r+b") as f:
        f.write(b"\xff")
    args = {"cache_dir": str(cache_dir), "repo_id": REPO, "checksum": False}
    assert run_module(mod.main, args)[0] == "exit"
    with open(blob_of(storage, commit, "model.safetensors"), "r+b") as f:
        f.truncate(10)
    status, result = run_module(mod.main, args)
    assert status == "fail" and "has 10 bytes, 16384 expected" in result["msg"]


def test_a_truncated_blob_fails(run_module, cache):
    cache_dir, storage, commit = cache
    with open(blob_of(storage, commit, "model.safetensors"), "r+b") as f:
        f.truncate(1000)
    status, result = run_module(mod.main, {"cache_dir": str(cache_dir), "repo_id": REPO})
    assert status == "fail" and "truncated" in result["bad_files"][0]["problem"]


def test_a_missing_symlink_fails_by_the_trees_manifest(run_module, cache):
    cache_dir, storage, commit = cache
    os.unlink(os.path.join(storage, "snapshots", commit, "nested", "extra.txt"))
    status, result = run_module(mod.main, {"cache_dir": str(cache_dir), "repo_id": REPO})
    assert status == "fail"
    assert result["bad_files"] == [{"file": "nested/extra.txt", "problem": "is missing from the snapshot"}]


def test_a_missing_symlink_fails_by_expected_files_without_a_manifest(run_module, tmp_path):
    storage, commit = write_model(tmp_path, REPO, TINY, trees=False)
    os.unlink(os.path.join(storage, "snapshots", commit, "tokenizer.json"))
    args = {"cache_dir": str(tmp_path), "repo_id": REPO}
    status, result = run_module(mod.main, args)
    assert status == "exit" and result["manifest"] == "none"  # nothing says what is expected
    status, result = run_module(mod.main, dict(args, expected_files=sorted(TINY)))
    assert status == "fail" and result["manifest"] == "expected_files"
    assert [b["file"] for b in result["bad_files"]] == ["tokenizer.json"]


def test_a_symlink_to_a_missing_blob_fails(run_module, cache):
    cache_dir, storage, commit = cache
    os.unlink(blob_of(storage, commit, "tokenizer.json"))
    status, result = run_module(mod.main, {"cache_dir": str(cache_dir), "repo_id": REPO})
    assert status == "fail"
    assert "which is missing" in result["bad_files"][0]["problem"]


def test_a_copy_without_symlinks_fails(run_module, cache):
    cache_dir, storage, commit = cache
    link = os.path.join(storage, "snapshots", commit, "config.json")
    data = open(link, "rb").read()
    os.unlink(link)
    with open(link, "wb") as f:
        f.write(data)
    status, result = run_module(mod.main, {"cache_dir": str(cache_dir), "repo_id": REPO})
    assert status == "fail" and "is not a symlink into blobs/" in result["msg"]


def test_a_model_not_in_the_cache_fails(run_module, tmp_path):
    status, result = run_module(mod.main, {"cache_dir": str(tmp_path), "repo_id": "org/absent"})
    assert status == "fail" and "the model is not in the cache" in result["msg"]


def test_a_ref_to_a_missing_snapshot_fails(run_module, cache):
    cache_dir, storage, commit = cache
    with open(os.path.join(storage, "refs", "main"), "w") as f:
        f.write("f" * 40)
    status, result = run_module(mod.main, {"cache_dir": str(cache_dir), "repo_id": REPO})
    assert status == "fail" and "whose snapshot folder is missing" in result["msg"]

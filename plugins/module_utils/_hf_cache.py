# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)
#
# This module_utils is PRIVATE to the collection. It can change without notice
# and must not be used by anything outside llmops.vllm.
#
# The Hugging Face hub cache layout, read with the standard library only (it runs on GPU hosts
# that have no huggingface_hub):
#
#   <cache_dir>/models--<org>--<name>/
#     refs/<revision>              the commit a branch or tag named when it was downloaded
#     snapshots/<commit>/<path>    symlinks to ../../blobs/<blob name> (one ../ more per subfolder)
#     blobs/<blob name>            the files; the name is the sha256 of an LFS file's content, the
#                                  git blob sha1 (sha1 of b"blob <size>\0" + content) of other files
#     trees/<commit>.json          huggingface_hub >= 2.4's record of the commit's files and sizes

from __future__ import annotations

import hashlib
import json
import os
import re

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 4 * 1024 * 1024

# The options naming a model and its revision, of hf_model_fetch and hf_cache_check: documented by the doc
# fragment llmops.vllm.hf_hub.model.
MODEL_OPTIONS = dict(
    repo_id=dict(type="str", required=True),
    revision=dict(type="str", default="main"),
)


def repo_folder(cache_dir, repo_id):
    """The folder of a model repo in a hub cache dir (huggingface_hub's repo_folder_name)."""
    return os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))


def read_ref(storage, revision):
    """The commit refs/<revision> names, or None when there is no such ref."""
    path = os.path.join(storage, "refs", revision)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return f.read().strip()


def resolve_commit(storage, revision):
    """The commit a revision (commit hash, branch or tag) names in the cache, or None."""
    if COMMIT_RE.match(revision):
        return revision
    return read_ref(storage, revision)


def snapshot_entries(snapshot):
    """{path in repo: absolute path} of every file and symlink under a snapshot folder."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(snapshot):
        dirnames.sort()
        for name in filenames:
            full = os.path.join(dirpath, name)
            found[os.path.relpath(full, snapshot).replace(os.sep, "/")] = full
        # A symlink to a directory is not something the hub client writes: report it as a file.
        for name in list(dirnames):
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                found[os.path.relpath(full, snapshot).replace(os.sep, "/")] = full
                dirnames.remove(name)
    return found


def read_tree_manifest(storage, commit):
    """{path: size} from trees/<commit>.json (what huggingface_hub listed for that commit), or None."""
    path = os.path.join(storage, "trees", commit + ".json")
    try:
        with open(path) as f:
            data = json.load(f)
        if data.get("format_version") != 1:
            return None
        return dict((p, int(info["size"])) for p, info in data["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def content_digest(path, kind):
    """sha256 (kind 'sha256') or git blob sha1 (kind 'sha1') of a file's content."""
    if kind == "sha256":
        h = hashlib.sha256()
    else:
        h = hashlib.sha1(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def blob_kind(name):
    """'sha256' for an LFS blob name, 'sha1' for a git blob name, None for anything else."""
    if SHA256_RE.match(name):
        return "sha256"
    if COMMIT_RE.match(name):
        return "sha1"
    return None


def check_snapshot(storage, commit, expected=None, checksum=True):
    """Check a snapshot of a hub cache repo folder.

    expected: {path: size or None} of the files that must be there (None: only what is there).
    Returns (files, problems): files is {path: size} of the good files; problems is a sorted list of
    {"file": path, "problem": words}.
    """
    snapshot = os.path.join(storage, "snapshots", commit)
    blobs = os.path.realpath(os.path.join(storage, "blobs"))
    entries = snapshot_entries(snapshot)
    files, problems = {}, []

    def bad(path, words):
        problems.append({"file": path, "problem": words})

    for path in sorted(entries):
        full = entries[path]
        want = (expected or {}).get(path)
        if not os.path.islink(full):
            bad(path, "is not a symlink into blobs/ (a copy that does not keep symlinks?)")
            continue
        target = os.path.realpath(full)
        if os.path.dirname(target) != blobs:
            bad(path, "points outside the model's blobs/ (%s)" % os.readlink(full))
            continue
        name = os.path.basename(target)
        if not os.path.isfile(target):
            bad(path, "points to blob %s, which is missing" % name)
            continue
        kind = blob_kind(name)
        if kind is None:
            bad(path, "points to blob %s, which is not named by a sha256 or a git sha1" % name)
            continue
        size = os.path.getsize(target)
        if want is not None and size != want:
            bad(path, "blob %s has %d bytes, %d expected (truncated or corrupt)" % (name, size, want))
            continue
        if checksum and content_digest(target, kind) != name:
            bad(path, "blob %s does not match its %s (%d bytes; truncated or corrupt)"
                % (name, "sha256" if kind == "sha256" else "git blob sha1", size))
            continue
        files[path] = size
    for path in sorted(set(expected or {}) - set(entries)):
        bad(path, "is missing from the snapshot")
    problems.sort(key=lambda p: p["file"])
    return files, problems


def cache_state(storage, revision):
    """What a download can change in a repo folder: the ref, the blob names, every snapshot's files."""
    state = {"ref": read_ref(storage, revision), "blobs": [], "snapshots": {}}
    blobs = os.path.join(storage, "blobs")
    if os.path.isdir(blobs):
        state["blobs"] = sorted(n for n in os.listdir(blobs) if not n.endswith(".incomplete"))
    snapshots = os.path.join(storage, "snapshots")
    if os.path.isdir(snapshots):
        for commit in sorted(os.listdir(snapshots)):
            state["snapshots"][commit] = sorted(snapshot_entries(os.path.join(snapshots, commit)))
    return state


def snapshot_files(storage, commit):
    """{path: size} of the files of a snapshot as they are (sizes of what the symlinks resolve to)."""
    out = {}
    for path, full in snapshot_entries(os.path.join(storage, "snapshots", commit)).items():
        try:
            out[path] = os.path.getsize(full)
        except OSError:
            out[path] = None
    return out

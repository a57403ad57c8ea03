"""Writes a model into a hub cache dir the way huggingface_hub 2.4 does (blobs, refs, snapshots, trees)."""

import hashlib
import json
import os


def blob_name(path_in_repo, data):
    """sha256 for LFS files (the tiny models' rule: *.safetensors), git blob sha1 for the others."""
    if path_in_repo.endswith(".safetensors"):
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def write_model(cache_dir, repo_id, files, revision="main", commit=None, trees=True):
    """files: {path in repo: bytes}. Returns (repo folder, commit)."""
    storage = os.path.join(str(cache_dir), "models--" + repo_id.replace("/", "--"))
    names = dict((p, blob_name(p, d)) for p, d in files.items())
    commit = commit or hashlib.sha1("".join("%s %s\n" % (names[p], p) for p in sorted(files)).encode()).hexdigest()
    os.makedirs(os.path.join(storage, "blobs"), exist_ok=True)
    os.makedirs(os.path.join(storage, "refs"), exist_ok=True)
    for path, data in files.items():
        with open(os.path.join(storage, "blobs", names[path]), "wb") as f:
            f.write(data)
        link = os.path.join(storage, "snapshots", commit, *path.split("/"))
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if not os.path.lexists(link):
            os.symlink(os.path.join(*([".."] * (2 + path.count("/")) + ["blobs", names[path]])), link)
    if revision:
        with open(os.path.join(storage, "refs", revision), "w") as f:
            f.write(commit)
    if trees:
        os.makedirs(os.path.join(storage, "trees"), exist_ok=True)
        with open(os.path.join(storage, "trees", commit + ".json"), "w") as f:
            json.dump({"format_version": 1,
                       "files": dict((p, {"size": len(d), "blob_id": names[p]}) for p, d in sorted(files.items()))}, f)
    return storage, commit


TINY = {
    "config.json": b'{"architectures": ["LlamaForCausalLM"]}\n',
    "model.safetensors": bytes(range(256)) * 64,
    "tokenizer.json": b'{"version": "1.0"}\n',
    "nested/extra.txt": b"nested\n",
}

#!/usr/bin/env python3
"""The collection as an operator installs it, made here without Galaxy (which is out of reach).

  collection_artifacts.py closure              the collections galaxy.yml declares, with theirs, one a line
  collection_artifacts.py dependency NS.NAME FILE
                                               a Galaxy artifact (tar.gz) of a collection of the ansible
                                               package in .venv (make ee uses it)
  collection_artifacts.py install DIR          a clean environment in DIR: a virtualenv with ansible-core
                                               only (the version requirements-dev.lock pins) and the
                                               control node's requirements.txt, and in DIR/collections
                                               what `ansible-galaxy collection install --offline` makes
                                               of this checkout's artifact and the declared
                                               dependencies' artifacts. Prints a JSON object: the
                                               paths, and `ansible-galaxy collection list` of it.

Run it with .venv's Python: the dependencies' artifacts come from the ansible package installed
there (an installed collection keeps its MANIFEST.json and FILES.json), the virtualenv's packages
from the package index, constrained by requirements-dev.lock. The virtualenv is kept in
${LLMOPS_TEST_CACHE:-/var/cache/llmops-test}/installed-collection and made again only when
ansible-core's pin, requirements.txt or Python change; the collections are installed anew each time.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
LOCK = os.path.join(ROOT, "requirements-dev.lock")
CACHE = os.path.join(os.environ.get("LLMOPS_TEST_CACHE", "/var/cache/llmops-test"), "installed-collection")
BIN = os.path.dirname(sys.executable)


def declared():
    """galaxy.yml's dependencies: collection name -> version range."""
    with open(os.path.join(ROOT, "galaxy.yml")) as f:
        return dict(yaml.safe_load(f).get("dependencies") or {})


def bundled_dir(name):
    """Where the ansible package of this Python installed a collection (ns.name)."""
    spec = importlib.util.find_spec("ansible_collections." + name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("%s is not in the ansible package of %s; run make deps" % (name, sys.prefix))
    path = list(spec.submodule_search_locations)[0]
    if not os.path.isfile(os.path.join(path, "MANIFEST.json")):
        raise SystemExit("%s has no MANIFEST.json: not an installed artifact" % path)
    return path


def manifest(name):
    with open(os.path.join(bundled_dir(name), "MANIFEST.json")) as f:
        return json.load(f)["collection_info"]


def closure():
    """The declared collections and the ones they depend on, in a stable order."""
    found, todo = [], sorted(declared())
    while todo:
        name = todo.pop(0)
        if name in found:
            continue
        found.append(name)
        todo += sorted(manifest(name).get("dependencies") or {})
    return found


def dependency_tarball(name, target):
    """A Galaxy artifact of an installed collection of the ansible package, at target.

    The ansible package leaves out some files that FILES.json lists, and ansible-galaxy extracts
    every listed file: the copy lists the files it has (their checksums are FILES.json's own), and
    MANIFEST.json the new FILES.json's checksum."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = os.path.join(tmp, "collection")
        shutil.copytree(bundled_dir(name), copy, ignore=shutil.ignore_patterns("__pycache__"), symlinks=True)
        with open(os.path.join(copy, "FILES.json")) as f:
            files = json.load(f)
        files["files"] = [f for f in files["files"] if f["name"] == "." or os.path.lexists(os.path.join(copy, f["name"]))]
        data = json.dumps(files, indent=4).encode()
        with open(os.path.join(copy, "FILES.json"), "wb") as f:
            f.write(data)
        with open(os.path.join(copy, "MANIFEST.json")) as f:
            meta = json.load(f)
        meta["file_manifest_file"]["chksum_sha256"] = hashlib.sha256(data).hexdigest()
        with open(os.path.join(copy, "MANIFEST.json"), "w") as f:
            f.write(json.dumps(meta, indent=4))
        # Member names as ansible-galaxy writes them: MANIFEST.json, not ./MANIFEST.json.
        with tarfile.open(target, "w:gz") as tar:
            for entry in sorted(os.listdir(copy)):
                tar.add(os.path.join(copy, entry), arcname=entry)
    return target


def build(dest):
    """This checkout's artifact, as `ansible-galaxy collection build` makes it; its path."""
    out = subprocess.run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--force", "--output-path", dest, ROOT],
                         capture_output=True, text=True, check=True).stdout
    return re.search(r"Created collection for \S+ at (\S+\.tar\.gz)", out).group(1)


def lock_pin(package):
    with open(LOCK) as f:
        for line in f:
            if line.split("==")[0].strip().lower() == package:
                return line.strip()
    raise SystemExit("%s is not pinned in %s" % (package, LOCK))


def clean_venv():
    """A virtualenv with ansible-core and requirements.txt only (kept while they stay the same); its bin dir."""
    with open(os.path.join(ROOT, "requirements.txt"), "rb") as f:
        recipe = "%s\n%s\n%s" % (sys.version, lock_pin("ansible-core"), hashlib.sha256(f.read()).hexdigest())
    venv = os.path.join(CACHE, "venv")
    stamp = os.path.join(venv, ".recipe")
    if os.path.isfile(stamp) and open(stamp).read() == recipe:
        return os.path.join(venv, "bin")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([os.path.join(venv, "bin", "pip"), "install", "--quiet", "--disable-pip-version-check", "-c", LOCK,
                    lock_pin("ansible-core"), "-r", os.path.join(ROOT, "requirements.txt")], check=True)
    with open(stamp, "w") as f:
        f.write(recipe)
    return os.path.join(venv, "bin")


def clean_env(collections):
    """The environment a playbook of the installed collection runs with: no setting of this checkout
    (ansible.cfg, ANSIBLE_ROLES_PATH, PYTHONPATH...), the clean collections path only."""
    env = dict((k, v) for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "PYTHON", "MOLECULE_", "VIRTUAL_ENV")))
    env.update(ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    return env


def install(dest):
    """The clean environment in dest (see the module's docstring); a dict describing it."""
    os.makedirs(CACHE, exist_ok=True)
    with open(os.path.join(CACHE, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        bindir = clean_venv()
    artifacts = os.path.join(dest, "artifacts")
    collections = os.path.join(dest, "collections")
    for path in (artifacts, collections):
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
    tarballs = [build(artifacts)]
    for name in closure():
        tarballs.append(dependency_tarball(name, os.path.join(artifacts, "%s-%s.tar.gz" % (
            name.replace(".", "-", 1), manifest(name)["version"]))))
    env = clean_env(collections)
    # From a directory that holds no ansible.cfg, as an operator's shell would be.
    subprocess.run([os.path.join(bindir, "ansible-galaxy"), "collection", "install", "--offline", "-p", collections] + tarballs,
                   check=True, cwd=dest, env=env, stdout=subprocess.DEVNULL)
    listed = subprocess.run([os.path.join(bindir, "ansible-galaxy"), "collection", "list", "--format", "json"],
                            check=True, cwd=dest, env=env, capture_output=True, text=True).stdout
    found = {}
    for path, names in json.loads(listed).items():
        for name, info in names.items():
            found[name] = {"version": info["version"], "path": path}
    return {"bin": bindir, "collections": collections, "env": env, "installed": found,
            "declared": declared(), "closure": closure()}


def main(argv):
    if argv[:1] == ["closure"] and len(argv) == 1:
        print("\n".join(closure()))
    elif argv[:1] == ["dependency"] and len(argv) == 3:
        dependency_tarball(argv[1], argv[2])
    elif argv[:1] == ["install"] and len(argv) == 2:
        print(json.dumps(install(os.path.abspath(argv[1])), indent=2))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

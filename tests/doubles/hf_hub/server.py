#!/usr/bin/env python3
"""A stand-in for the Hugging Face Hub: serves the models of a Hugging Face cache directory.

Test double (see tests/doubles/README.md). Hugging Face is unreachable from the test machine; this
server answers the HTTP requests that huggingface_hub 2.4.0 (the client vLLM 0.32.0 ships, and
`hf download`) makes for `snapshot_download` and `hf_hub_download`, from the models found in a
directory in Hugging Face cache layout (hub/models--org--name/{blobs,refs,snapshots}):

  GET  /api/models/{repo_id}[/revision/{revision}]          repo_info: {"id", "sha", "siblings", ...}
  GET  /api/models/{repo_id}/tree/{revision}[/{path}]        list_repo_tree, ?recursive=, cursor pages
  HEAD|GET /{repo_id}/resolve/{revision}/{path}              file metadata / file; LFS files: 302 to /cdn
  HEAD|GET /cdn-lfs/{repo_id}/{sha256}                        the "CDN" that LFS redirects point at

What a file is served as: a snapshot file whose blob name is a sha256 (64 hex) is an LFS file (a
git-lfs pointer in the tree, its sha256 as ETag, served through a redirect to another host, as the
Hub does); a blob named by a git blob sha1 (40 hex) is a regular git file (that sha1 as ETag). The
cache records what the real Hub served, so a client downloading from here writes the same blob
names. A snapshot file that is not a symlink into blobs/ (a plain copy) is LFS when its name matches
the Hub's default .gitattributes LFS patterns (*.safetensors, *.bin, *.pt, *.model, ...) or it is
10 MiB or larger (the Hub refuses larger non-LFS files). Each blob's content is checked against its
name before it is served: a corrupt source answers 500 and is logged, never served.

Errors, as the Hub words them (headers X-Error-Code / X-Error-Message, which the client maps):
  unknown repo                 401 (no token) or 404 (valid token), X-Error-Code: RepoNotFound
  unknown revision             404, X-Error-Code: RevisionNotFound
  unknown file                 404, X-Error-Code: EntryNotFound (with X-Repo-Commit)
  gated repo, no token         401, X-Error-Code: GatedRepo on /resolve (metadata and tree stay public)
  gated repo, token w/o access 403, X-Error-Code: GatedRepo
  token not known              401, X-Error-Message: Invalid credentials in Authorization header

Configuration (JSON file, --config; each key optional, defaults shown):
  {"tokens": ["hf_llmops_test"], "gated": {}, "page_size": 1000}
tokens: the valid tokens; gated: {"org/name": [tokens granted access]}; page_size: tree entries per page.

Not part of the Hub, for the tests only (loopback): GET /_stand-in/stats, POST /_stand-in/reset.
"""

import argparse
import base64
import datetime
import email.utils
import fnmatch
import hashlib
import json
import logging
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# The Hub's default .gitattributes (what `huggingface_hub.create_repo` starts a model repo with).
LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
    "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
    "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*",
    "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
)
LFS_MIN_SIZE = 10 * 1024 * 1024
CHUNK = 1024 * 1024
DEFAULT_CONFIG = {"tokens": ["hf_llmops_test"], "gated": {}, "page_size": 1000}

log = logging.getLogger("hf-hub")


def git_blob_sha1(path):
    h = hashlib.sha1(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def lfs_pointer(sha256, size):
    return ("version https://git-lfs.github.com/spec/v1\noid sha256:%s\nsize %d\n" % (sha256, size)).encode()


class HubError(Exception):
    def __init__(self, status, code, message, commit=None):
        super().__init__(message)
        self.status, self.code, self.message, self.commit = status, code, message, commit


class Store(object):
    """The models of one or more cache directories, read on each request (a test may add a model while
    serving). The first directory holding a repository serves it."""

    def __init__(self, roots):
        self.roots = roots
        self._digests = {}
        self._lock = threading.Lock()

    def repo_dir(self, repo_id):
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$", repo_id) or "--" in repo_id:
            return None
        for root in self.roots:
            path = os.path.join(root, "models--" + repo_id.replace("/", "--"))
            if os.path.isdir(os.path.join(path, "snapshots")):
                return path
        return None

    def resolve(self, repo_dir, revision):
        """The commit a branch, tag or commit hash names; HubError RevisionNotFound otherwise."""
        if COMMIT_RE.match(revision) and os.path.isdir(os.path.join(repo_dir, "snapshots", revision)):
            return revision
        ref = os.path.normpath(os.path.join(repo_dir, "refs", revision))
        if ref.startswith(os.path.join(repo_dir, "refs") + os.sep) and os.path.isfile(ref):
            with open(ref) as f:
                commit = f.read().strip()
            if os.path.isdir(os.path.join(repo_dir, "snapshots", commit)):
                return commit
        raise HubError(404, "RevisionNotFound", "Invalid rev id: %s" % revision)

    def files(self, repo_dir, commit):
        """{path in repo: FileEntry} of a snapshot."""
        snapshot = os.path.join(repo_dir, "snapshots", commit)
        found = {}
        for dirpath, dirnames, filenames in os.walk(snapshot):
            dirnames.sort()
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                found[os.path.relpath(full, snapshot).replace(os.sep, "/")] = full
        return found

    def entry(self, path_in_repo, full):
        """(lfs, oid, size, sha256 or None, blob path) of a snapshot file, its content checked."""
        blob = os.path.realpath(full)
        name = os.path.basename(blob) if os.path.islink(full) else None
        size = os.path.getsize(blob)
        key = (blob, size, os.path.getmtime(blob))
        with self._lock:
            cached = self._digests.get(key)
        if cached is None:
            if name is not None and SHA256_RE.match(name):
                lfs = True
            elif name is not None and COMMIT_RE.match(name):
                lfs = False
            else:
                lfs = size >= LFS_MIN_SIZE or any(fnmatch.fnmatch(path_in_repo, p) or
                                                  fnmatch.fnmatch(os.path.basename(path_in_repo), p)
                                                  for p in LFS_PATTERNS)
            if lfs:
                sha = sha256_of(blob)
                oid = git_blob_sha1_bytes(lfs_pointer(sha, size))
                digest = sha
            else:
                sha = None
                oid = git_blob_sha1(blob)
                digest = oid
            if name is not None and digest != name:
                log.error("source blob %s does not match its name (content hash %s): not serving it", blob, digest)
                raise HubError(500, None, "Internal Error: the stand-in's source blob %s is corrupt" % name)
            cached = (lfs, oid, size, sha, blob)
            with self._lock:
                self._digests[key] = cached
        return cached


def git_blob_sha1_bytes(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def git_tree_sha1(entries):
    """Git tree object id of [(name, is_dir, hex oid)]."""
    def sort_key(e):
        return e[0] + ("/" if e[1] else "")
    body = b"".join(("%s %s" % ("40000" if d else "100644", n)).encode() + b"\0" + bytes.fromhex(o)
                    for n, d, o in sorted(entries, key=sort_key))
    return hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()


class Stats(object):
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.bytes_served = 0
            self.requests = 0
            self.by_kind = {}
            self.files = {}

    def request(self, kind):
        with self.lock:
            self.requests += 1
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1

    def served(self, name, n):
        with self.lock:
            self.bytes_served += n
            entry = self.files.setdefault(name, {"bytes": 0, "downloads": 0})
            entry["bytes"] += n

    def downloaded(self, name):
        with self.lock:
            self.files.setdefault(name, {"bytes": 0, "downloads": 0})["downloads"] += 1

    def as_dict(self):
        with self.lock:
            return {"bytes_served": self.bytes_served, "requests": self.requests,
                    "requests_by_kind": dict(self.by_kind), "files": json.loads(json.dumps(self.files))}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "llmops-hf-hub-stand-in/1"

    # -- plumbing -----------------------------------------------------------------------------
    def log_message(self, fmt, *args):
        log.info("%s %s", self.address_string(), fmt % args)

    def do_HEAD(self):
        self.handle_request(head=True)

    def do_GET(self):
        self.handle_request(head=False)

    def do_POST(self):
        if urlsplit(self.path).path == "/_stand-in/reset":
            self.server.stats.reset()
            return self.send_json(200, {"reset": True})
        self.send_json(405, {"error": "Method not allowed"})

    def send_json(self, status, data, headers=None, head=False):
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def send_error_json(self, err, head=False):
        headers = {"X-Error-Message": err.message}
        if err.code:
            headers["X-Error-Code"] = err.code
        if err.commit:
            headers["X-Repo-Commit"] = err.commit
        self.send_json(err.status, {"error": err.message}, headers, head=head)

    def token(self):
        auth = self.headers.get("Authorization", "")
        if not auth:
            return None
        token = auth[7:] if auth.lower().startswith("bearer ") else auth
        if token not in self.server.config.get("tokens", []):
            raise HubError(401, None, "Invalid credentials in Authorization header")
        return token

    def handle_request(self, head):
        url = urlsplit(self.path)
        raw = [s for s in url.path.split("/")][1:]
        try:
            if url.path == "/_stand-in/stats":
                return self.send_json(200, self.server.stats.as_dict(), head=head)
            if raw[:2] == ["api", "models"]:
                return self.api(raw[2:], parse_qs(url.query), url, head)
            if raw and raw[0] == "cdn-lfs":
                return self.cdn(raw[1:], head)
            if "resolve" in raw[1:3]:
                return self.resolve(raw, head)
            self.server.stats.request("other")
            raise HubError(404, None, "Sorry, we can't find the page you are looking for.")
        except HubError as err:
            self.send_error_json(err, head=head)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def repo(self, repo_id, token):
        repo_dir = self.server.store.repo_dir(repo_id)
        if repo_dir is None:
            # The Hub answers 401 to anonymous requests for a missing (or private) repo, 404 to authenticated ones.
            raise HubError(404 if token else 401, "RepoNotFound", "Repository not found")
        return repo_dir

    def gate(self, repo_id, token):
        granted = self.server.config.get("gated", {}).get(repo_id)
        if granted is None:
            return
        if token is None:
            raise HubError(401, "GatedRepo", "Access to model %s is restricted. You must have access to it and be "
                           "authenticated to access it. Please log in." % repo_id)
        if token not in granted:
            raise HubError(403, "GatedRepo", "Access to model %s is restricted and you are not in the authorized "
                           "list. Visit %s/%s to ask for access." % (repo_id, self.base_url(), repo_id))

    def base_url(self, host=None):
        return "http://%s" % (host or self.headers.get("Host") or "127.0.0.1:%d" % self.server.server_port)

    # -- /api/models ------------------------------------------------------------------------------
    def api(self, parts, query, url, head):
        segs = [unquote(s) for s in parts]
        kind = "api_model"
        for i, word in enumerate(segs[1:3], start=1):
            if word in ("revision", "tree"):
                repo_id, rest, kind = "/".join(segs[:i]), segs[i + 1:], "api_" + word
                break
        else:
            repo_id, rest = "/".join(segs), []
        self.server.stats.request(kind)
        token = self.token()
        repo_dir = self.repo(repo_id, token)
        if kind == "api_tree":
            # The revision is one quoted segment ("refs%2Fpr%2F1"); what follows is the path in the repo.
            revision = unquote(parts[len(repo_id.split("/")) + 1]) if rest else "main"
            path = "/".join(unquote(p) for p in parts[len(repo_id.split("/")) + 2:])
            return self.tree(repo_id, repo_dir, revision, path.strip("/"), query, url, head)
        revision = unquote(parts[len(repo_id.split("/")) + 1]) if kind == "api_revision" and rest else "main"
        commit = self.server.store.resolve(repo_dir, revision)
        files = self.server.store.files(repo_dir, commit)
        stamp = os.path.getmtime(os.path.join(repo_dir, "snapshots", commit))
        when = email.utils.formatdate(stamp, usegmt=True)
        iso = datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        gated = self.server.config.get("gated", {}).get(repo_id) is not None
        info = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0] if "/" in repo_id else None,
            "sha": commit,
            "lastModified": iso,
            "createdAt": iso,
            "private": False,
            "gated": "manual" if gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "library_name": "transformers",
            "siblings": [{"rfilename": p} for p in files],
        }
        self.send_json(200, info, {"Last-Modified": when}, head=head)

    def tree(self, repo_id, repo_dir, revision, path, query, url, head):
        store = self.server.store
        commit = store.resolve(repo_dir, revision)
        recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
        files = store.files(repo_dir, commit)
        entries = {p: store.entry(p, full) for p, full in files.items()}

        # Folders with their git tree ids, bottom-up.
        folders = {}
        for p in entries:
            parts = p.split("/")
            for i in range(1, len(parts)):
                folders.setdefault("/".join(parts[:i]), None)

        def tree_oid(folder):
            prefix = folder + "/" if folder else ""
            children = []
            for p, e in entries.items():
                if p.startswith(prefix) and "/" not in p[len(prefix):]:
                    children.append((p[len(prefix):], False, e[1]))
            for f in folders:
                if f.startswith(prefix) and "/" not in f[len(prefix):]:
                    children.append((f[len(prefix):], True, tree_oid(f)))
            return git_tree_sha1(children)

        prefix = path + "/" if path else ""
        if path and path not in folders:
            raise HubError(404, "EntryNotFound", "%s does not exist on \"%s\"" % (path, revision), commit)
        listing = []
        for folder in sorted(folders):
            rel = folder[len(prefix):] if folder.startswith(prefix) else None
            if rel and (recursive or "/" not in rel):
                listing.append({"type": "directory", "oid": tree_oid(folder), "size": 0, "path": folder})
        for p in sorted(entries):
            rel = p[len(prefix):] if p.startswith(prefix) else None
            if rel and (recursive or "/" not in rel):
                lfs, oid, size, sha, _ = entries[p]
                item = {"type": "file", "oid": oid, "size": size, "path": p}
                if lfs:
                    item["lfs"] = {"oid": sha, "size": size, "pointerSize": len(lfs_pointer(sha, size))}
                listing.append(item)
        listing.sort(key=lambda e: e["path"])

        # Cursor pagination with a Link header, as the Hub pages trees (1000 entries per page).
        start = 0
        if "cursor" in query:
            try:
                start = int(base64.urlsafe_b64decode(query["cursor"][0].encode()).decode())
            except ValueError:
                raise HubError(400, None, "Invalid cursor")
        page_size = int(self.server.config.get("page_size", 1000))
        page = listing[start:start + page_size]
        headers = {}
        if start + page_size < len(listing):
            q = {k: v[0] for k, v in query.items() if k != "cursor"}
            q["cursor"] = base64.urlsafe_b64encode(str(start + page_size).encode()).decode()
            link = "%s%s?%s" % (self.base_url(), url.path, "&".join("%s=%s" % (k, quote(v, safe="")) for k, v in q.items()))
            headers["Link"] = '<%s>; rel="next"' % link
        self.send_json(200, page, headers, head=head)

    # -- /{repo}/resolve and the CDN --------------------------------------------------------------
    def resolve(self, raw, head):
        i = raw.index("resolve", 1)
        repo_id = "/".join(unquote(s) for s in raw[:i])
        self.server.stats.request("resolve_head" if head else "resolve_get")
        if len(raw) < i + 3:
            raise HubError(400, None, "Invalid request")
        revision = unquote(raw[i + 1])
        path = "/".join(unquote(s) for s in raw[i + 2:])
        token = self.token()
        store = self.server.store
        repo_dir = self.repo(repo_id, token)
        self.gate(repo_id, token)
        commit = store.resolve(repo_dir, revision)
        full = store.files(repo_dir, commit).get(path)
        if full is None:
            raise HubError(404, "EntryNotFound", "Entry not found", commit)
        lfs, oid, size, sha, blob = store.entry(path, full)
        common = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes", "Vary": "Origin, Range"}
        if lfs:
            # LFS files live on a CDN: the Hub answers with a redirect to another host, carrying the
            # file's metadata in X-Linked-*; the client then downloads without its Authorization header.
            here = self.headers.get("Host") or "127.0.0.1:%d" % self.server.server_port
            hostname, _, port = here.rpartition(":")
            cdn_host = ("localhost" if hostname != "localhost" else "127.0.0.1") + ":" + port
            location = "http://%s/cdn-lfs/%s/%s" % (cdn_host, quote(repo_id), sha)
            headers = dict(common, **{"Location": location, "X-Linked-Etag": '"%s"' % sha,
                                      "X-Linked-Size": str(size), "ETag": '"%s"' % oid,
                                      "Content-Type": "text/plain; charset=utf-8", "Content-Length": "0"})
            self.send_response(302)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            return
        self.send_file(blob, size, '"%s"' % oid, common, head, "%s/%s" % (repo_id, path))

    def cdn(self, raw, head):
        self.server.stats.request("cdn_head" if head else "cdn_get")
        if len(raw) < 2:
            raise HubError(404, None, "Not found")
        repo_id, sha = "/".join(unquote(s) for s in raw[:-1]), raw[-1]
        store = self.server.store
        repo_dir = store.repo_dir(repo_id)
        if repo_dir is None or not SHA256_RE.match(sha):
            raise HubError(404, None, "Not found")
        for commit in sorted(os.listdir(os.path.join(repo_dir, "snapshots"))):
            for path, full in store.files(repo_dir, commit).items():
                if os.path.basename(os.path.realpath(full)) == sha or (
                        not os.path.islink(full) and store.entry(path, full)[3] == sha):
                    lfs, oid, size, _, blob = store.entry(path, full)
                    return self.send_file(blob, size, '"%s"' % sha, {}, head, "%s/%s" % (repo_id, path))
        raise HubError(404, None, "Not found")

    def send_file(self, blob, size, etag, headers, head, name):
        start, status = 0, 200
        rng = self.headers.get("Range")
        m = re.match(r"^bytes=(\d+)-$", rng or "")
        if m and int(m.group(1)) < size:
            start, status = int(m.group(1)), 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size - start))
        self.send_header("ETag", etag)
        if status == 206:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, size - 1, size))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if head:
            return
        self.server.stats.downloaded(name)
        with open(blob, "rb") as f:
            f.seek(start)
            for chunk in iter(lambda: f.read(CHUNK), b""):
                self.wfile.write(chunk)
                self.server.stats.served(name, len(chunk))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", required=True,
                        help="the hub cache directories (holding models--org--name), separated by ':'")
    parser.add_argument("--port", type=int, default=int(os.environ.get("LLMOPS_HF_HUB_PORT", "5080")))
    parser.add_argument("--config", help="JSON: {\"tokens\": [...], \"gated\": {\"org/name\": [tokens]}}")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    config = dict(DEFAULT_CONFIG)
    if args.config:
        with open(args.config) as f:
            config.update(json.load(f))
    # Loopback only: nothing outside this machine may reach the stand-in.
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.store = Store([os.path.abspath(root) for root in args.models.split(os.pathsep) if root])
    server.stats = Stats()
    server.config = config
    log.info("serving %s on http://127.0.0.1:%d (gated: %s)", args.models, args.port, sorted(config.get("gated", {})))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

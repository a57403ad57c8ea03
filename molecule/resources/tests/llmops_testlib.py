"""Helpers shared by the testinfra suites of the molecule scenarios."""

import json
import subprocess

TEST_API_KEY = "llmops-test-key"  # inventories/local: not a secret, a throwaway test host
TEST_HF_TOKEN = "hf_llmopsTestTokenNotReal"  # inventories/local: not a real token
MODEL = "tiny-chat"


def _shipped_vllm_version():
    """vllm_server_version of the role's defaults: the one place that names the vLLM release."""
    import os
    import re

    root = os.environ.get("MOLECULE_PROJECT_DIRECTORY") or os.path.join(os.path.dirname(__file__), "..", "..", "..")
    with open(os.path.join(root, "roles", "vllm_server", "defaults", "main.yml")) as f:
        return re.search(r"^vllm_server_version: *(\S+)", f.read(), re.M).group(1)


VLLM_VERSION = _shipped_vllm_version()
# The CPU image the test inventory serves (inventories/local), as the registry mirror holds it.
CPU_IMAGE = "vllm/vllm-openai-cpu:v%s-x86_64" % VLLM_VERSION


def inspect_container(host, name):
    out = host.check_output("docker inspect %s", name)
    return json.loads(out)[0]


def daemon_json(host):
    return json.loads(host.file("/etc/docker/daemon.json").content_string)


def docker_info(host):
    return json.loads(host.check_output("docker info --format '{{json .}}'"))


def outer_address(host):
    """The test host's address on the llmops-test network, as seen from the machine running molecule."""
    name = host.backend.get_hostname()
    out = subprocess.check_output(
        ["docker", "inspect", "--format", "{{json .NetworkSettings.Networks}}", name], text=True)
    return json.loads(out)["llmops-test"]["IPAddress"]


def verify(host, **args):
    """Run the collection's verify_endpoint module on the host; return its result.

    testinfra drops the `failed` flag from ansible-core 2.19's results, so it is set here from
    `msg`, which verify_endpoint returns only when it fails.
    """
    args.setdefault("url", "http://127.0.0.1:8000")
    result = host.backend.run_ansible("llmops.vllm.verify_endpoint", json.dumps(args), check=False)
    result["failed"] = bool(result.get("failed")) or "msg" in result
    return result


def registry_digest(repository, tag, registry="http://127.0.0.1:5000"):
    """Manifest digest of repository:tag in the local test registry."""
    import urllib.request

    request = urllib.request.Request(
        "%s/v2/%s/manifests/%s" % (registry, repository, tag),
        method="HEAD",
        headers={"Accept": ", ".join([
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.index.v1+json",
        ])},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Docker-Content-Digest"]


def run_playbook(playbook, extra_vars=None, check=False, verbosity=0, inventory=None, extra_args=None):
    """Run one of the collection's playbooks (e.g. "site.yml", "playbooks/upgrade.yml") against the
    scenario's inventory (or another); return the CompletedProcess with stdout and stderr in .output."""
    import os

    root = os.environ["MOLECULE_PROJECT_DIRECTORY"]
    cmd = ["ansible-playbook", "-i", inventory or os.environ["MOLECULE_INVENTORY_FILE"], os.path.join(root, playbook)]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    if check:
        cmd += ["--check", "--diff"]
    if verbosity:
        cmd.append("-" + "v" * verbosity)
    cmd += extra_args or []
    # molecule passes its provisioner's environment (ANSIBLE_CONFIG, collections path) to the tests
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
    result.output = result.stdout + result.stderr
    return result


def recap(output, host):
    """The PLAY RECAP counters of one host, as a dict."""
    import re

    match = re.search(r"^%s\s+:\s+(.*)$" % re.escape(host), output, re.M)
    assert match, "no recap line for %s in:\n%s" % (host, output[-3000:])
    return dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1)))


def containers(host):
    """Managed vLLM containers on the host: name -> inspect data."""
    names = host.check_output("docker ps -a --filter label=org.llmops.vllm.instance --format '{{.Names}}'").split()
    return dict((name, inspect_container(host, name)) for name in names)


def aliased_inventory(directory, real_host, aliases, host_vars_file=None):
    """An inventory in directory where each alias is another name for the scenario's one container,
    with the scenario's group_vars: several "hosts" of a rollout without more containers."""
    import os

    inventory_dir = os.path.dirname(os.environ["MOLECULE_INVENTORY_FILE"])
    os.makedirs(os.path.join(directory, "host_vars"), exist_ok=True)
    os.symlink(os.path.realpath(os.path.join(inventory_dir, "group_vars")), os.path.join(directory, "group_vars"))
    hosts = dict((alias, {"ansible_connection": "community.docker.docker", "ansible_host": real_host}) for alias in aliases)
    with open(os.path.join(directory, "hosts.yml"), "w") as f:
        json.dump({"gpu_hosts": {"hosts": hosts}}, f)
    if host_vars_file:
        with open(host_vars_file) as src:
            content = src.read()
        for alias in aliases:
            with open(os.path.join(directory, "host_vars", alias + ".yml"), "w") as f:
                f.write(content)
    return directory


def upstream_blob_bytes(since, registry="llmops-registry"):
    """Bytes of image blobs the test registry (Docker Hub's stand-in) sent since a time, per client
    address, from its own request log: Distribution logs every response with its size."""
    import re

    log = subprocess.run(["docker", "logs", "--since", since, registry], capture_output=True, text=True, check=True)
    sent = {}
    for line in (log.stdout + log.stderr).splitlines():
        if 'msg="response completed"' not in line or "http.request.method=GET" not in line:
            continue
        uri = re.search(r'http\.request\.uri="([^"]+)"', line)
        if not uri or "/blobs/" not in uri.group(1):
            continue
        client = re.search(r'http\.request\.remoteaddr="?\[?([0-9a-f.:]+?)\]?(:\d+)?"?\s', line).group(1)
        written = int(re.search(r"http\.response\.written=(\d+)", line).group(1))
        sent[client] = sent.get(client, 0) + written
    return sent


def image_blob_sizes(repository, tag, registry="http://127.0.0.1:5000"):
    """Bytes of each blob (config, then layers) of an image in the test registry."""
    import urllib.request

    request = urllib.request.Request("%s/v2/%s/manifests/%s" % (registry, repository, tag), headers={"Accept": ", ".join([
        "application/vnd.docker.distribution.manifest.v2+json", "application/vnd.oci.image.manifest.v1+json"])})
    with urllib.request.urlopen(request, timeout=10) as response:
        manifest = json.load(response)
    return [manifest["config"]["size"]] + [layer["size"] for layer in manifest["layers"]]


# What Distribution 2.8's stopped stream may read ahead of a blob that registry_prefetch hangs up on.
READ_AHEAD_PER_BLOB = 8 * 1024 * 1024


def cache_read_ahead(blobs):
    """The most the registry cache may fetch over an image's size: READ_AHEAD_PER_BLOB a blob,
    never more than the blob."""
    return sum(min(blob, READ_AHEAD_PER_BLOB) for blob in blobs)


def model_snapshot_bytes(hub_dir, repo_id):
    """(revision, bytes) of the one snapshot of a model in a Hugging Face cache directory: the
    files the hub serves for it."""
    import os

    snapshots = os.path.join(hub_dir, "models--" + repo_id.replace("/", "--"), "snapshots")
    revision = os.listdir(snapshots)[0]
    folder = os.path.join(snapshots, revision)
    return revision, sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))


def hub_layout(root, repo_id, files):
    """A model in the Hugging Face cache layout the hub stand-in (tests/doubles/hf-hub) serves: files
    ({path: bytes}) named by their hash as the Hub names them (sha256 for *.safetensors, the LFS files,
    the git blob sha1 for the others), a snapshot of symlinks to them, refs/main naming it."""
    import hashlib
    import os

    repo = os.path.join(root, "models--" + repo_id.replace("/", "--"))
    ids = dict((name, hashlib.sha256(data).hexdigest() if name.endswith(".safetensors")
                else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()) for name, data in files.items())
    commit = hashlib.sha1("".join("%s %s\n" % (ids[f], f) for f in sorted(files)).encode()).hexdigest()
    for d in ("blobs", "refs", os.path.join("snapshots", commit)):
        os.makedirs(os.path.join(repo, d))
    for name, data in files.items():
        with open(os.path.join(repo, "blobs", ids[name]), "wb") as f:
            f.write(data)
        os.symlink(os.path.join("..", "..", "blobs", ids[name]), os.path.join(repo, "snapshots", commit, name))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(commit)
    return commit


class HubStandIn(object):
    """The hub stand-in on a free port of 127.0.0.1 of its own, serving models ({repo id: {path: bytes}})
    from directory, with config ({"tokens": [...], "gated": {repo: [tokens]}}); .url is its endpoint."""

    def __init__(self, directory, models, config):
        import os
        import socket

        for repo_id, files in models.items():
            hub_layout(os.path.join(str(directory), "hub"), repo_id, files)
        config_file = os.path.join(str(directory), "hub-config.json")
        with open(config_file, "w") as f:
            json.dump(config, f)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % port
        self.control = os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], "tests", "doubles", "hf-hub")
        self.env = dict(os.environ, LLMOPS_HF_HUB_PORT=str(port), LLMOPS_HF_HUB_MODELS=os.path.join(str(directory), "hub"),
                        LLMOPS_HF_HUB_CONFIG=config_file)

    def __enter__(self):
        subprocess.run([self.control, "up"], env=self.env, check=True, timeout=60)
        return self

    def __exit__(self, *exc):
        subprocess.run([self.control, "down"], env=self.env, check=True, timeout=60)

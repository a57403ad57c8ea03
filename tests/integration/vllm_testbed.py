"""Helpers of the integration tests: the vLLM container and the module run (see conftest.py)."""

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.dirname(sys.executable)
PREFIX = os.environ.get("LLMOPS_IT_PREFIX", "llmops-it-") + secrets.token_hex(3) + "-"


def _shipped_vllm_version():
    """vllm_server_version of the role's defaults: the one place that names the vLLM release."""
    import re

    with open(os.path.join(ROOT, "roles", "vllm_server", "defaults", "main.yml")) as f:
        return re.search(r"^vllm_server_version: *(\S+)", f.read(), re.M).group(1)


VLLM_VERSION = _shipped_vllm_version()
IMAGE = os.environ.get("LLMOPS_IT_IMAGE", "llmops-test/vllm-openai-cpu:v%s" % VLLM_VERSION)
MODELS = os.path.abspath(os.environ.get("LLMOPS_IT_MODELS", os.path.join(ROOT, ".cache", "models")))
# Not a secret: the key of throwaway test servers.
API_KEY = "llmops-it-key"


def docker(*args, check=True, timeout=120):
    result = subprocess.run(["docker"] + list(args), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError("docker %s failed: %s" % (" ".join(args), result.stderr.strip()))
    return result.stdout.strip()


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmContainer(object):
    """One `vllm serve` in the CPU image, as its docs run it, with the API port on 127.0.0.1."""

    def __init__(self, name, model, served_model_name=None, api_key=None, args=(), docker_args=(), models=MODELS,
                 offline=True, host_network=False, cpu_kvcache_space=1, worker_in_engine=True):
        self.name = PREFIX + name
        self.model = model
        self.served_model_name = served_model_name
        self.api_key = api_key
        self.args = list(args)
        # given after the defaults, so that they replace them (docker run: the last --shm-size wins)
        self.docker_args = list(docker_args)
        # the Hugging Face home: the tiny models read-only offline, a writable directory online
        self.models = models
        self.offline = offline
        # the host's network namespace (to reach a stand-in on 127.0.0.1), vLLM on 127.0.0.1 and a free port
        self.host_network = host_network
        # VLLM_CPU_KVCACHE_SPACE (GiB); None leaves it unset (kv_cache_memory_bytes then counts)
        self.cpu_kvcache_space = cpu_kvcache_space
        # VLLM_ENABLE_V1_MULTIPROCESSING=0: the model runs in vLLM's engine process instead of a worker process of
        # its own (what vLLM does on a GPU for one GPU; its CPU platform spawns a worker unless this is set): a
        # start costs about a fifth less CPU and about 380 MiB less memory here (docs/testing.md). False keeps
        # vLLM's CPU default, for the tests that read what a failed start logs.
        self.worker_in_engine = worker_in_engine
        self.port = None
        self.started_at = None

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def start(self):
        command = ["run", "-d", "--name", self.name, "--shm-size", "512m"]
        if self.host_network:
            self.port = free_port()
            command += ["--network", "host"]
        else:
            command += ["-p", "127.0.0.1::8000"]
        command += ["-v", self.models + ":/root/.cache/huggingface" + (":ro" if self.offline else "")]
        # online, nothing but the hub stand-in is asked (vLLM's usage statistics stay off)
        command += ["-e", "HF_HUB_OFFLINE=1"] if self.offline else ["-e", "VLLM_NO_USAGE_STATS=1", "-e", "DO_NOT_TRACK=1"]
        if self.cpu_kvcache_space is not None:
            command += ["-e", "VLLM_CPU_KVCACHE_SPACE=%s" % self.cpu_kvcache_space]
        if self.worker_in_engine:
            command += ["-e", "VLLM_ENABLE_V1_MULTIPROCESSING=0"]
        command += self.docker_args + [IMAGE, self.model, "--max-model-len", "2048"]
        if self.host_network:
            command += ["--host", "127.0.0.1", "--port", str(self.port)]
        if self.served_model_name:
            command += ["--served-model-name", self.served_model_name]
        if self.api_key:
            command += ["--api-key", self.api_key]
        docker(*(command + self.args))
        self.started_at = time.monotonic()
        if not self.host_network:
            # docker assigns the host port; read it while the container runs
            self.port = int(docker("port", self.name, "8000").splitlines()[0].rsplit(":", 1)[1])
        return self

    def state(self):
        return docker("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", self.name)

    def finished_at(self):
        """When the container exited (seconds since the epoch, Docker's clock), or None while it runs."""
        import calendar
        import re

        stamp = docker("inspect", "--format", "{{.State.Status}} {{.State.FinishedAt}}", self.name).split()
        match = re.match(r"(\d+)-(\d+)-(\d+)T(\d+):(\d+):(\d+)(?:\.(\d+))?Z$", stamp[1])
        if stamp[0] not in ("exited", "dead") or not match:
            return None
        parts = match.groups()
        return calendar.timegm(tuple(int(p) for p in parts[:6]) + (0, 0, 0)) + float("0." + (parts[6] or "0"))

    def kill(self):
        docker("kill", self.name)

    def limit_cpus(self, cpus):
        """Give the running server a CPU quota (cgroup CFS): it serves as before, only slower."""
        docker("update", "--cpus", str(cpus), self.name)

    def remove(self):
        docker("rm", "-f", "-v", self.name, check=False)

    def metric(self, name):
        """A gauge of vLLM's Prometheus endpoint (it needs no key), or None while it does not answer."""
        try:
            with urllib.request.urlopen(self.url + "/metrics", timeout=2) as response:
                text = response.read().decode()
        except (OSError, urllib.error.URLError):
            return None
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return None


def _module_env():
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
        ANSIBLE_STDOUT_CALLBACK="json",
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_NOCOLOR="1",
        PATH=BIN + os.pathsep + env.get("PATH", ""),
    )
    # the module falls back to these; a test decides which key is sent
    env.pop("VLLM_API_KEY", None)
    env.pop("OPENAI_API_KEY", None)
    return env


class ModuleRun(object):
    """`ansible localhost -m <module, verify_endpoint by default> -a <args>`, started now."""

    def __init__(self, args, check_mode=False, module="llmops.vllm.verify_endpoint"):
        command = [os.path.join(BIN, "ansible"), "localhost", "-m", module, "-a", json.dumps(args)]
        if check_mode:
            command.append("--check")
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(command, cwd=ROOT, env=_module_env(), stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        self.stdout = None
        self.elapsed = None

    def result(self, timeout=900):
        stdout, stderr = self.process.communicate(timeout=timeout)
        self.elapsed = time.monotonic() - self.started_at
        self.stdout = stdout
        try:
            data = json.loads(stdout)
        except ValueError:
            raise AssertionError("ansible printed no JSON (rc %s): %s\n%s" % (self.process.returncode, stdout, stderr))
        result = data["plays"][0]["tasks"][0]["hosts"]["localhost"]
        # what a person reads on failure; `ansible` exits 2 then
        assert (self.process.returncode == 2) == bool(result.get("failed")), (self.process.returncode, result)
        return result


class TlsProxy(object):
    """A TLS terminator in front of the vLLM server (what nginx or a load balancer does on a fleet), with a
    self-signed certificate for 127.0.0.1 written to cert_path."""

    def __init__(self, backend_port, directory):
        import datetime
        import ipaddress
        import socket
        import ssl
        import threading

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llmops-it-proxy")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        self.cert_path = os.path.join(str(directory), "proxy.pem")
        key_path = os.path.join(str(directory), "proxy.key")
        with open(self.cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(key_path, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_path, key_path)

        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = "https://127.0.0.1:%d" % self.port

        def pump(source, target):
            try:
                while True:
                    data = source.recv(65536)
                    if not data:
                        break
                    target.sendall(data)
            except OSError:
                pass
            finally:
                for s in (source, target):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        def serve():
            while True:
                try:
                    client, _ = self.listener.accept()
                except OSError:
                    return
                try:
                    client = context.wrap_socket(client, server_side=True)
                except (OSError, ssl.SSLError):
                    # a client that refuses the certificate: the case under test
                    client.close()
                    continue
                backend = socket.create_connection(("127.0.0.1", backend_port))
                threading.Thread(target=pump, args=(client, backend), daemon=True).start()
                threading.Thread(target=pump, args=(backend, client), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()

    def close(self):
        self.listener.close()

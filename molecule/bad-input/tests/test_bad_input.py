"""A catalogue of wrong input: every case stops site.yml with a message a person can act on, and
leaves the bare host exactly as it was (no package installed, no file written)."""

import pytest

from llmops_testlib import HubStandIn, run_playbook

TINY = {"name": "vllm", "model": "llmops-test/tiny-chat", "served_model_name": "tiny-chat", "port": 8000}

CASES = [
    ("tutorial max-batch-size", {"vllm_server_options": {"max_batch_size": 32}},
     "max_batch_size: vLLM has no max_batch_size: the number of sequences batched together is max_num_seqs"),
    ("tutorial temperature", {"vllm_server_options": {"temperature": 0.7}},
     "temperature is a request parameter, not a server option"),
    ("tutorial log-file", {"vllm_server_options": {"log_file": "/var/log/vllm/vllm.log"}},
     "vLLM has no log_file option: it logs to stdout"),
    ("tutorial load-8bit", {"vllm_server_options": {"load_8bit": True}},
     "vLLM has no load_8bit: serve a pre-quantized 8-bit model"),
    ("misspelt option", {"vllm_server_options": {"gpu_memory_utilisation": 0.9}},
     "Did you mean gpu_memory_utilization (--gpu-memory-utilization)"),
    ("value outside the choices", {"vllm_server_options": {"dtype": "fp16"}},
     "dtype: 'fp16' is not one of auto, bfloat16, float, float16, float32, half."),
    ("an option the role sets", {"vllm_server_options": {"port": 9000}},
     "port: set it through the instance's port"),
    ("latest image", {"vllm_server_image": "vllm/vllm-openai-cpu:latest"},
     "Instance vllm on llmops-bad-input: the image must name a pinned tag or digest, not latest (it is vllm/vllm-openai-cpu:latest)"),
    ("two instances on one port", {"vllm_server_instances": [TINY, dict(TINY, name="vllm-2")]},
     "no two sharing a name or a port"),
    ("instance without a model", {"vllm_server_instances": [{"name": "vllm"}]},
     "each a dictionary with a name and a model"),
    # (these two are checked after the model cache, so they serve online, as the mirror case below)
    ("an instance spanning hosts with a node outside the inventory",
     {"vllm_server_env": {},
      "vllm_server_instances": [dict(TINY, nodes=["llmops-bad-input", "gpu-b"], gpus_per_node=1, shape="data",
                                     cluster_interface="eth0")]},
     "Instance vllm on llmops-bad-input lists node gpu-b, which is not in the inventory. Add the host to the inventory "
     "or fix vllm_server_instances[vllm].nodes."),
    ("an instance spanning one host",
     {"vllm_server_instances": [dict(TINY, nodes=["llmops-bad-input"], gpus_per_node=1, shape="data",
                                     cluster_interface="eth0")]},
     "Instance vllm on llmops-bad-input: nodes must be a list of two or more inventory hostnames, the hosts one instance "
     "spans"),
    ("an instance spanning hosts in compose mode, without a shape",
     {"vllm_server_mode": "compose", "vllm_server_env": {},
      "vllm_server_instances": [dict(TINY, nodes=["llmops-bad-input", "gpu-b"], gpus_per_node=1, cluster_interface="eth0")]},
     "Instance vllm on llmops-bad-input: vllm_server_mode compose does not run instances spanning several hosts"),
    ("open port without an API key", {"vllm_server_api_key": ""},
     "without an API key: anyone who reaches the port could use"),
    ("GPUs on a CPU-only host", {"vllm_server_instances": [dict(TINY, gpus=[0])]},
     "is marked CPU-only (llmops_cpu_only / vllm_server_cpu_only), but vllm asks for GPUs"),
    ("unknown mode", {"vllm_server_mode": "swarm"},
     "vllm_server_mode must be container or compose (it is swarm)"),
    # (the test inventory serves the tiny model offline; this bare host has no model cache, which the
    # vllm_server preflight would name first: the case is about the mirror, so it serves online)
    ("mirror with a path", {"docker_registry_mirrors": ["https://mirror.example.com/v2/"], "vllm_server_env": {}},
     "llmops-bad-input: docker_registry_mirrors must be null or a list of http(s)://host[:port] URLs with no path "
     "(it is ['https://mirror.example.com/v2/'])"),
]


# Secrets that no client could send; the message names the variable, never the value.
SECRET_CASES = [
    ("API key with a file's trailing newline", {"vllm_server_api_key": "llmops-key-0123\n"},
     "llmops-bad-input: vllm_server_api_key has whitespace at its start or end (a trailing newline from a file read "
     "with slurp or lookup('file'), from echo, or from a | block scalar?)", "llmops-key-0123"),
    ("API key with a non-ASCII character", {"vllm_server_api_key": "llmops-ключ-0123"},
     "llmops-bad-input: vllm_server_api_key holds a line break, another control character or a non-ASCII character",
     "ключ-0123"),
    ("API key with a line break inside", {"vllm_server_api_key": "llmops-$(id)-\"q\"\nrest-0123"},
     "vllm_server_api_key holds a line break", "rest-0123"),
    ("HF token from a | block scalar", {"vllm_server_hf_token": "hf_llmopsBlockScalar0123\n"},
     "llmops-bad-input: vllm_server_hf_token has whitespace at its start or end", "hf_llmopsBlockScalar0123"),
    ("registry password with a trailing newline",
     # (served online, as the mirror case above: the docker role's preflight comes after the model checks)
     {"docker_registry_logins": [{"registry": "llmops-registry:5000", "username": "ci", "password": "pw-from-file-0123\n"}],
      "vllm_server_env": {}},
     "llmops-bad-input: docker_registry_logins[0] (ci@llmops-registry:5000): the password has whitespace at its start or "
     "end", "pw-from-file-0123"),
]

# What vLLM would refuse at start, read from the model's config.json in the host's cache. A case's
# model is put into the cache (huggingface_hub's layout) before the run and taken away after it.
HEADS_2 = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_attention_heads": 2, "num_key_value_heads": 2,
           "max_position_embeddings": 2048, "dtype": "bfloat16"}
MODEL_CASES = [
    ("offline without the model in the cache", "llmops-test/not-downloaded", None, {},
     "Instance vllm on llmops-bad-input runs offline (HF_HUB_OFFLINE in its env), but its model llmops-test/not-downloaded "
     "is not in the host's model cache (/data/vllm/models/hub/models--llmops-test--not-downloaded)"),
    ("heads that tensor parallelism cannot split", "llmops-test/heads-2", HEADS_2, {"tensor_parallel_size": 3},
     "Instance vllm on llmops-bad-input: llmops-test/heads-2 has 2 attention heads, which do not divide evenly by "
     "tensor_parallel_size 3"),
    ("custom code without trust_remote_code", "llmops-test/custom-code",
     dict(HEADS_2, model_type="llmops_custom", auto_map={"AutoConfig": "configuration_custom.CustomConfig"}), {},
     "Instance vllm on llmops-bad-input: llmops-test/custom-code ships its own code (auto_map in its config.json), which "
     "vLLM runs only with trust_remote_code. Set trust_remote_code: true"),
    ("max_model_len longer than the model's", "llmops-test/heads-2", HEADS_2, {"max_model_len": 4096},
     "Instance vllm on llmops-bad-input: max_model_len 4096 is longer than llmops-test/heads-2's context "
     "(max_position_embeddings 2048 in its config.json)"),
]


# A first deploy: the model is in no cache yet, and the hub (the stand-in, tests/doubles/hf-hub: Hugging
# Face is unreachable here) is asked about it from the control node before anything changes.
HUB_TOKEN, HUB_TOKEN_DENIED = "hf_llmops_bad_input_granted", "hf_llmops_bad_input_denied"
# the test inventory's vllm_server_hf_token: a valid token of the stand-in, granted no gated model
INVENTORY_TOKEN = "hf_llmopsTestTokenNotReal"
HUB_MODELS = {
    "llmops-test/hub-heads-2": HEADS_2,
    "llmops-test/hub-custom-code": dict(HEADS_2, model_type="llmops_custom", auto_map={"AutoConfig": "configuration_custom.CustomConfig"}),
    "llmops-test/hub-gated": HEADS_2,
}
HUB_CASES = [
    ("gated model without a token", "llmops-test/hub-gated", {}, {"vllm_server_hf_token": ""},
     "Instance vllm on llmops-bad-input: llmops-test/hub-gated is gated on Hugging Face and no token was given "
     "(%(hub)s answered HTTP 401"),
    ("gated model with a token not granted", "llmops-test/hub-gated", {}, {"vllm_server_hf_token": HUB_TOKEN_DENIED},
     "Instance vllm on llmops-bad-input: llmops-test/hub-gated is gated on Hugging Face and vllm_server_hf_token has no "
     "access to it (%(hub)s answered HTTP 403"),
    ("model not on the hub", "llmops-test/hub-no-such-model", {}, {"vllm_server_hf_token": HUB_TOKEN},
     "Instance vllm on llmops-bad-input: model llmops-test/hub-no-such-model was not found on %(hub)s"),
    ("revision not on the hub", "llmops-test/hub-heads-2", {}, {"vllm_server_instances": [dict(TINY, model="llmops-test/hub-heads-2",
                                                                                                 revision="v9")]},
     "Instance vllm on llmops-bad-input: llmops-test/hub-heads-2 has no revision v9 on %(hub)s"),
    ("heads that tensor parallelism cannot split, on a first deploy", "llmops-test/hub-heads-2", {"tensor_parallel_size": 3}, {},
     "Instance vllm on llmops-bad-input: llmops-test/hub-heads-2 has 2 attention heads, which do not divide evenly by "
     "tensor_parallel_size 3"),
    ("custom code without trust_remote_code, on a first deploy", "llmops-test/hub-custom-code", {}, {},
     "Instance vllm on llmops-bad-input: llmops-test/hub-custom-code ships its own code (auto_map in its config.json), "
     "which vLLM runs only with trust_remote_code"),
]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The stand-in on a port of its own, serving HUB_MODELS, with hub-gated granted to HUB_TOKEN only."""
    import json

    models = dict((repo_id, {"config.json": json.dumps(config).encode(), "model.safetensors": b"\0" * 64})
                  for repo_id, config in HUB_MODELS.items())
    config = {"tokens": [HUB_TOKEN, HUB_TOKEN_DENIED, INVENTORY_TOKEN], "gated": {"llmops-test/hub-gated": [HUB_TOKEN]}}
    with HubStandIn(tmp_path_factory.mktemp("hub"), models, config) as hub:
        yield hub.url


def seed_model(host, model, config):
    import json

    repo = "/data/vllm/models/hub/models--" + model.replace("/", "--")
    snapshot = repo + "/snapshots/0123456789abcdef0123456789abcdef01234567"
    host.check_output("mkdir -p %s %s/refs && printf %%s 0123456789abcdef0123456789abcdef01234567 > %s/refs/main && "
                      "printf %%s %s > %s/config.json && printf x > %s/model.safetensors",
                      snapshot, repo, repo, json.dumps(config), snapshot, snapshot)


def host_state(host):
    """What the play could change: installed packages, /etc/docker, /data, running units."""
    return (
        host.check_output("dpkg-query -W -f '${Package} ${Version}\\n' | sort"),
        host.run("ls -laR /etc/docker /data").stdout,
        host.check_output("systemctl list-units --type=service --state=running --no-legend --plain | sort"),
    )


@pytest.mark.parametrize("extra_vars, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_stops_before_anything_changes(host, extra_vars, expected):
    before = host_state(host)
    result = run_playbook("site.yml", extra_vars)
    assert result.returncode != 0
    assert expected in " ".join(result.output.split()), result.output[-3000:]
    assert "llmops-bad-input" in result.output
    # the message names what is wrong, not every rule of the role
    assert "docker_install_source must be" not in result.output
    assert host_state(host) == before, "the failed run changed the host"


@pytest.mark.parametrize("extra_vars, expected, hidden", [c[1:] for c in SECRET_CASES], ids=[c[0] for c in SECRET_CASES])
def test_secrets_no_client_can_send_stop_the_play_unprinted(host, extra_vars, expected, hidden):
    before = host_state(host)
    result = run_playbook("site.yml", extra_vars, verbosity=3)
    assert result.returncode != 0
    assert expected in " ".join(result.output.split()), result.output[-3000:]
    assert hidden not in result.output, "the secret was printed"
    assert host_state(host) == before, "the failed run changed the host"


@pytest.mark.parametrize("model, config, options, expected", [c[1:] for c in MODEL_CASES], ids=[c[0] for c in MODEL_CASES])
def test_models_vllm_would_refuse_stop_the_play(host, model, config, options, expected):
    try:
        if config is not None:
            seed_model(host, model, config)
        before = host_state(host)
        result = run_playbook("site.yml", {"vllm_server_instances": [dict(TINY, model=model)], "vllm_server_options": options})
        assert result.returncode != 0
        assert expected in " ".join(result.output.split()), result.output[-3000:]
        assert host_state(host) == before, "the failed run changed the host"
    finally:
        host.run("rm -rf /data")


@pytest.mark.parametrize("model, options, extra_vars, expected", [c[1:] for c in HUB_CASES], ids=[c[0] for c in HUB_CASES])
def test_a_first_deploy_refuses_what_the_hub_says_before_anything_changes(host, hub, model, options, extra_vars, expected):
    before = host_state(host)
    # online (the inventory serves offline), the model in no cache, the hub asked from the control node
    run_vars = {"vllm_server_env": {}, "vllm_server_hf_endpoint": hub, "vllm_server_options": options,
                "vllm_server_instances": [dict(TINY, model=model)]}
    result = run_playbook("site.yml", dict(run_vars, **extra_vars), verbosity=1)
    assert result.returncode != 0
    assert expected % {"hub": hub} in " ".join(result.output.split()), result.output[-3000:]
    for token in (HUB_TOKEN, HUB_TOKEN_DENIED, INVENTORY_TOKEN):
        assert token not in result.output, "a token was printed"
    assert host_state(host) == before, "the failed run changed the host"


def test_a_first_deploy_of_a_model_the_hub_grants_passes_the_model_checks(host, hub):
    """The control: the gated model with a granted token passes every model check (the run then stops
    at the first step that changes the host, which this scenario's check mode does not take)."""
    result = run_playbook("site.yml", {"vllm_server_env": {}, "vllm_server_hf_endpoint": hub, "vllm_server_hf_token": HUB_TOKEN,
                                       "vllm_server_instances": [dict(TINY, model="llmops-test/hub-gated")]},
                          check=True, extra_args=["--tags", "preflight"])
    assert result.returncode == 0, result.output[-3000:]
    assert "Ask the hub about those models, once for the whole run" in result.output
    assert "is gated" not in result.output


def test_a_gateway_key_with_a_line_break_stops_the_gateway_unprinted(host, tmp_path):
    """The gateway writes its key into HAProxy's client key file, one key a line: this one would be two
    accepted credentials. The bare host is also the gateway here; llmops.vllm.gateway stops in the
    gateway role's preflight, before HAProxy is installed or a file written."""
    import json

    also_gateway = tmp_path / "gateway.yml"
    also_gateway.write_text(json.dumps({"gateway": {"hosts": {"llmops-bad-input": {}}}}))
    before = host_state(host)
    result = run_playbook("playbooks/gateway.yml", {"gateway_api_key": "llmops-gw-0123\nBearer llmops-second-4567"},
                          verbosity=3, extra_args=["-i", str(also_gateway)])
    assert result.returncode != 0
    assert ("llmops-bad-input: gateway_api_key holds a line break, another control character or a non-ASCII character"
            in " ".join(result.output.split())), result.output[-3000:]
    assert "llmops-gw-0123" not in result.output and "llmops-second-4567" not in result.output, "the key was printed"
    assert host_state(host) == before, "the failed run changed the host"


def test_the_host_is_bare(host):
    assert host.run("dpkg-query -W docker.io").rc != 0
    assert not host.file("/data").exists

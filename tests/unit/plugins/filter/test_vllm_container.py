"""The container of one instance, specified once: the docker_container arguments (container mode)
and the compose service derived from them (compose mode)."""

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.llmops.vllm.plugins.filter.vllm_instances import vllm_resolve_instances
from ansible_collections.llmops.vllm.plugins.filter.vllm_container import FilterModule

FILTERS = FilterModule().filters()
DEFAULTS = {"served_model_name": "", "port": 8000, "bind_address": "0.0.0.0", "gpus": "none", "options": {},
            "env": {}, "image": "vllm/vllm-openai:v0.32.0", "download": False}
SETTINGS = {"models_dir": "/data/vllm/models", "logs_dir": "/data/vllm/logs", "configs_dir": "/data/vllm/configs",
            "timezone": "Etc/UTC", "log_to_file": True, "hf_endpoint": "", "compile_cache": True, "ipc_mode": "host",
            "shm_size": "", "capabilities": [], "security_opts": [], "restart_policy": "unless-stopped",
            "entrypoint": ["vllm", "serve"], "verify_timeout": 1800, "mode": "container", "shutdown_timeout": 0}


def instance(**fields):
    fields.setdefault("name", "chat")
    fields.setdefault("model", "org/model")
    return vllm_resolve_instances([fields], DEFAULTS)[0]


def container(i, **settings):
    return FILTERS["vllm_container"](i, dict(SETTINGS, **settings))


def compose(i, **settings):
    return FILTERS["vllm_compose_service"](i, dict(SETTINGS, **settings))


def test_container_arguments_of_one_instance():
    args = container(instance(port=8001, env={"N": 3, "FLAG": True}))
    assert args["name"] == "chat" and args["image"] == "vllm/vllm-openai:v0.32.0"
    assert args["command"] == ["org/model", "--config", "/etc/vllm/chat.yaml"]
    # the wrapper reads the secrets file, then runs the image's own entrypoint with the command
    assert args["entrypoint"][:2] == ["/bin/sh", "-c"] and "/etc/vllm/chat.env" in args["entrypoint"][2]
    assert args["entrypoint"][3:] == ["vllm-entrypoint", "vllm", "serve"]
    # Docker wants strings; the instance's env comes last and wins
    assert args["env"] == {"TZ": "Etc/UTC", "VLLM_LOGGING_CONFIG_PATH": "/etc/vllm/chat.logging.json", "N": "3",
                           "FLAG": "True"}
    assert args["published_ports"] == ["0.0.0.0:8001:8000"]
    assert args["mounts"] == [
        {"type": "bind", "source": "/data/vllm/models", "target": "/root/.cache/huggingface"},
        {"type": "bind", "source": "/data/vllm/logs", "target": "/var/log/vllm"},
        {"type": "bind", "source": "/data/vllm/configs", "target": "/etc/vllm", "read_only": True},
        {"type": "volume", "source": "chat-vllm-cache", "target": "/root/.cache/vllm"}]
    assert args["labels"] == {"org.llmops.vllm.instance": "chat", "org.llmops.vllm.model": "org/model",
                              "org.llmops.vllm.mode": "container"}
    assert args["healthcheck"]["start_period"] == "1800s" and args["healthcheck"]["retries"] == 3
    assert args["ipc_mode"] == "host" and "shm_size" not in args
    assert args["device_requests"] == [] and args["capabilities"] == [] and args["security_opts"] == []


def test_settings_switch_parts_on_and_off():
    args = container(instance(bind_address="::1", env={"TZ": "Europe/Berlin"}), log_to_file=False, compile_cache=False,
                     hf_endpoint="https://hf.example", ipc_mode="", shm_size="8g")
    assert args["published_ports"] == ["[::1]:8000:8000"]
    assert args["env"] == {"TZ": "Europe/Berlin", "HF_ENDPOINT": "https://hf.example"}
    assert [m["type"] for m in args["mounts"]] == ["bind", "bind", "bind"]
    assert "ipc_mode" not in args and args["shm_size"] == "8g"


def test_compose_service_is_derived_from_the_same_arguments():
    i = instance(model="org/m$x", env={"PASS": "a$b"}, gpus=[0, 1])
    args = container(i)
    service = compose(i)
    assert service["container_name"] == args["name"] and service["image"] == args["image"]
    assert service["volumes"] == args["mounts"] and service["ports"] == args["published_ports"]
    assert service["healthcheck"] == args["healthcheck"] and service["labels"] == args["labels"]
    assert service["restart"] == "unless-stopped" and service["ipc"] == "host"
    # compose reads $ as a variable: every literal one is doubled, labels are not interpolated
    assert service["command"][0] == "org/m$$x" and service["environment"]["PASS"] == "a$$b"
    assert '"$$f"' in service["entrypoint"][2] and '"$f"' in args["entrypoint"][2]
    assert service["labels"]["org.llmops.vllm.model"] == "org/m$x"
    assert service["deploy"] == {"resources": {"reservations": {"devices": [
        {"driver": "nvidia", "capabilities": ["gpu"], "device_ids": ["0", "1"]}]}}}
    for unset in ("shm_size", "cap_add", "security_opt"):
        assert unset not in service


def test_compose_service_only_names_what_is_set():
    service = compose(instance(gpus="all"), ipc_mode="", shm_size="16g", capabilities=["SYS_NICE"],
                      security_opts=["seccomp=unconfined"])
    assert "ipc" not in service and service["shm_size"] == "16g"
    assert service["cap_add"] == ["SYS_NICE"] and service["security_opt"] == ["seccomp=unconfined"]
    assert service["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "capabilities": ["gpu"], "count": "all"}]
    assert compose(instance(gpus=2))["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 2
    assert "deploy" not in compose(instance(gpus="none"))


def test_compose_project_holds_every_instance_and_its_cache_volume():
    instances = vllm_resolve_instances([{"name": "a", "model": "m"}, {"name": "b", "model": "m", "port": 8001}],
                                       DEFAULTS)
    project = FILTERS["vllm_compose_project"](instances, SETTINGS, "vllm")
    assert project["name"] == "vllm" and sorted(project["services"]) == ["a", "b"]
    assert project["services"]["b"] == compose(instances[1])
    assert project["volumes"] == {"a-vllm-cache": {"name": "a-vllm-cache"}, "b-vllm-cache": {"name": "b-vllm-cache"}}
    assert FILTERS["vllm_compose_project"](instances, dict(SETTINGS, compile_cache=False), "vllm")["volumes"] == {}


def test_download_container_shares_image_env_and_host_directories():
    i = instance(download=True, revision="abc123")
    download = FILTERS["vllm_download_container"](i, SETTINGS)
    args = container(i)
    assert download["name"] == "chat-download" and download["image"] == args["image"]
    assert download["entrypoint"] == args["entrypoint"][:4]
    assert download["command"] == ["hf", "download", "org/model", "--revision", "abc123"]
    assert download["env"] == args["env"] and download["mounts"] == args["mounts"][:3]
    assert FILTERS["vllm_download_container"](instance(), SETTINGS)["command"] == ["hf", "download", "org/model"]


def test_log_file_inside_the_container():
    assert FILTERS["vllm_container_log_file"](instance(name="small")) == "/var/log/vllm/small.log"


def test_wrong_input_is_a_filter_error():
    with pytest.raises(AnsibleFilterError, match="lack"):
        FILTERS["vllm_container"](instance(), {"mode": "container"})
    with pytest.raises(AnsibleFilterError, match="resolve it with llmops.vllm.vllm_resolve_instances"):
        FILTERS["vllm_container"]({"name": "raw"}, SETTINGS)
    with pytest.raises(AnsibleFilterError, match="GPU selection"):
        container(instance(gpus=True))


def test_the_entrypoint_wrapper_fails_closed_without_the_secrets_file(tmp_path):
    import subprocess

    wrapper = container(instance())["entrypoint"][:4]
    script = wrapper[2].replace("/etc/vllm/", str(tmp_path) + "/")
    missing = subprocess.run(wrapper[:2] + [script, wrapper[3], "echo", "started"], capture_output=True, text=True)
    assert missing.returncode == 78 and missing.stdout == ""
    assert "cannot read its secrets file %s/chat.env; refusing to start" % tmp_path in missing.stderr
    (tmp_path / "chat.env").write_text("VLLM_API_KEY='k$(x)'\n")
    present = subprocess.run(wrapper[:2] + [script, wrapper[3], "sh", "-c", "echo $VLLM_API_KEY"],
                             capture_output=True, text=True)
    assert present.returncode == 0 and present.stdout == "k$(x)\n"


def test_a_shutdown_timeout_gives_docker_a_longer_stop_and_vllm_the_option():
    from ansible_collections.llmops.vllm.plugins.filter.vllm_instances import vllm_resolve_instances
    from ansible_collections.llmops.vllm.plugins.plugin_utils import _vllm_container as spec

    defaults = {"served_model_name": "", "port": 8000, "bind_address": "0.0.0.0", "gpus": "none", "options": {},
                "env": {}, "image": "vllm/vllm-openai:v0.32.0", "download": False, "shutdown_timeout": 60}
    instance = vllm_resolve_instances([{"name": "a", "model": "org/m"}], defaults)[0]
    assert instance["config"]["shutdown-timeout"] == 60
    kept = vllm_resolve_instances([{"name": "a", "model": "org/m", "options": {"shutdown_timeout": 5}}], defaults)[0]
    assert kept["config"]["shutdown-timeout"] == 5
    settings = dict((k, None) for k in spec.SETTINGS)
    settings.update(models_dir="/m", logs_dir="/l", configs_dir="/c", timezone="UTC", log_to_file=False, hf_endpoint="",
                    compile_cache=False, ipc_mode="host", shm_size="", capabilities=[], security_opts=[],
                    restart_policy="unless-stopped", entrypoint=["vllm", "serve"], verify_timeout=600, mode="container",
                    shutdown_timeout=60)
    args = spec.container_args(instance, settings)
    assert args["stop_timeout"] == 60 + spec.STOP_MARGIN_S
    assert spec.compose_service(args)["stop_grace_period"] == "90s"
    settings["shutdown_timeout"] = 0
    off = spec.container_args(vllm_resolve_instances([{"name": "a", "model": "org/m"}], dict(defaults, shutdown_timeout=0))[0], settings)
    assert "stop_timeout" not in off and "stop_grace_period" not in spec.compose_service(off)

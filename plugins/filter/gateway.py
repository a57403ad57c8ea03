# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

# Filters that turn the fleet's inventory into the gateway's HAProxy backends, and HAProxy's
# statistics into the upgrade's drain decisions.

import csv
import io
import re

from ansible.errors import AnsibleFilterError

from ansible_collections.llmops.vllm.plugins.filter.vllm_instances import vllm_inventory_instances
from ansible_collections.llmops.vllm.plugins.filter.vllm_multinode import DEFAULT_HEALTH_PORT
from ansible_collections.llmops.vllm.plugins.filter.vllm_preflight import vllm_secret_problems
from ansible_collections.llmops.vllm.plugins.module_utils._vllm_lora import adapters as lora_adapters
from ansible_collections.llmops.vllm.plugins.plugin_utils._hostvars import hostvar as _get
from ansible_collections.llmops.vllm.plugins.plugin_utils._vllm_instances import is_loopback

# HAProxy accepts letters, digits, '-', '_', '.' and ':' in proxy and server names.
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
# Separates the inventory host from the instance in a server name (never part of either).
SERVER_SEPARATOR = ":"


def gateway_server_name(host, instance):
    """The HAProxy server name of one vLLM instance: <inventory host>:<instance name>."""
    return "%s%s%s" % (_NAME_UNSAFE.sub("_", str(host)), SERVER_SEPARATOR, _NAME_UNSAFE.sub("_", str(instance)))


def _served_names(instance):
    served = instance.get("served_model_name") or instance.get("model")
    if isinstance(served, (list, tuple)):
        return [str(s) for s in served if str(s)]
    return [str(served)] if served not in (None, "") else []


def gateway_backends(hosts, hostvars, vllm_defaults=None):
    """One backend per served model name, its servers every instance of every host serving it.

    hosts lists the inventory hosts of the vLLM group. Each host's instances are those its inventory
    declares (llmops.vllm.vllm_inventory_instances: its hostvars over vllm_server's defaults), whether or
    not the host is in this run: a --limit, llmops_target_hosts or a failed host keeps its servers, and
    the health checks take a server that does not answer out. A host's address is
    gateway_backend_address, else ansible_host, else its name. The backend's API key is the host's
    vllm_server_api_key ('' when the server is open).
    """
    if not isinstance(hosts, (list, tuple)):
        raise AnsibleFilterError("gateway_backends wants a list of hosts, not %s" % type(hosts).__name__)
    models = {}
    # adapter name -> the served names of the base models it is served on
    parents = {}
    bases = set()
    for instance in vllm_inventory_instances(hosts, hostvars, vllm_defaults):
        host = instance["host"]
        address = _get(hostvars, host, "gateway_backend_address", "") or _get(hostvars, host, "ansible_host", "") or host
        api_key = str(_get(hostvars, host, "vllm_server_api_key", "") or "")
        # an instance's static LoRA adapters are routed by their names too (docs/lora.md)
        adapter_names = [a["name"] for a in lora_adapters(instance)]
        for model in _served_names(instance) + adapter_names:
            if model in adapter_names:
                parents.setdefault(model, set()).add(_served_names(instance)[0])
            else:
                bases.add(model)
            models.setdefault(model, []).append({
                "name": gateway_server_name(host, instance.get("name")),
                "host": str(host),
                "instance": str(instance.get("name")),
                "address": str(address),
                "port": instance.get("port"),
                "bind_address": str(instance.get("bind_address") or "0.0.0.0"),
                "api_key": api_key,
                # a multi-node instance (its head) is checked at its head's node health agent, which answers 200
                # only while every node is up (docs/multinode.md); others at the server's own /health
                "check_port": (int(instance.get("health_port") or DEFAULT_HEALTH_PORT)
                               if instance.get("multinode") else None),
            })
    backends = []
    for index, model in enumerate(sorted(models)):
        servers = sorted(models[model], key=lambda s: s["name"])
        keys = sorted(set(s["api_key"] for s in servers))
        backends.append({
            "name": "model%d_%s" % (index, _NAME_UNSAFE.sub("_", model))[:100],
            "model": model,
            "servers": servers,
            # One Authorization header per backend: gateway_problems refuses backends whose hosts differ.
            "api_key": keys[0] if len(keys) == 1 else None,
        })
        if model in parents:
            # a LoRA adapter: its base model(s); gateway_problems refuses a name served on two bases
            backends[-1]["parents"] = sorted(parents[model])
            backends[-1]["also_base"] = model in bases
    return backends


def gateway_problems(backends, gateway_hosts, hostvars, settings):
    """Sentences naming what stops the gateway from serving the fleet; [] when it can.

    settings: port, stats_port, require_api_key, api_key_set, models (the models the gateway
    config asks for explicitly), backend_group (the group's name, for the messages).
    """
    problems = []
    group = settings.get("backend_group", "gpu_hosts")
    if not backends:
        problems.append(
            "no vLLM instance to route to: the group %s has no host with instances (vllm_server_instances). "
            "Put the vLLM hosts into the group %s, or point gateway_backend_group at the group that holds them." % (group, group))
    for backend in backends:
        if backend["api_key"] is None:
            problems.append(
                "the hosts serving %s (%s) have different vllm_server_api_key values; the gateway sets one "
                "Authorization header per model: give them the same key." % (
                    backend["model"], ", ".join(sorted(set(s["host"] for s in backend["servers"])))))
        if len(backend.get("parents") or []) > 1:
            problems.append(
                "the LoRA adapter %s is served on different base models (%s, by %s): the gateway routes one name to one "
                "set of servers, so give the adapters different names (lora.adapters of those instances)." % (
                    backend["model"], ", ".join(backend["parents"]),
                    ", ".join(sorted(set(s["host"] for s in backend["servers"])))))
        if backend.get("parents") and backend.get("also_base"):
            problems.append(
                "%s is a LoRA adapter's name on some hosts and a served model name on others: the gateway would route "
                "one name to both. Rename the adapter (lora.adapters) or the model (served_model_name)." % backend["model"])
        if re.search(r"\s", backend["model"]):
            problems.append("the served model name %r contains whitespace, which the gateway's model map cannot hold: "
                            "change served_model_name of %s." % (backend["model"], backend["servers"][0]["name"]))
        for server in backend["servers"]:
            if not isinstance(server["port"], int) or isinstance(server["port"], bool) or not 0 < server["port"] < 65536:
                problems.append("instance %s of %s has no valid port (%r): fix its port in vllm_server_instances." % (
                    server["instance"], server["host"], server["port"]))
            if is_loopback(server["bind_address"]) and server["host"] not in gateway_hosts:
                problems.append(
                    "instance %s of %s listens on %s only, which the gateway cannot reach: set its bind_address "
                    "(vllm_server_bind_address) to an address the gateway host reaches." % (
                        server["instance"], server["host"], server["bind_address"]))
    served = set(b["model"] for b in backends)
    for model in settings.get("models") or []:
        if model not in served:
            problems.append("gateway_models asks for %s, but no host of %s serves it (served: %s): serve it on a "
                            "host or remove it from gateway_models." % (model, group, ", ".join(sorted(served)) or "none"))
    port, stats_port = settings.get("port"), settings.get("stats_port")
    if port == stats_port:
        problems.append("gateway_port and gateway_stats_port are both %s: give them different ports." % port)
    for gateway in gateway_hosts:
        for backend in backends:
            for server in backend["servers"]:
                if server["host"] == gateway and server["port"] in (port, stats_port):
                    problems.append("port %s of %s is taken by its vLLM instance %s: change gateway_port or "
                                    "gateway_stats_port (or the instance's port)."
                                    % (server["port"], gateway, server["instance"]))
    if settings.get("require_api_key") and not settings.get("api_key_set"):
        problems.append("gateway_api_key is empty: clients would reach the fleet without a key. Set it (from Ansible "
                        "Vault), or set gateway_require_api_key: false to serve openly.")
    # Each problem once, in the order found (a server in two backends would repeat its own).
    return list(dict.fromkeys(problems))


def gateway_key_problems(backends, api_key):
    """Sentences naming each key the gateway writes that cannot be used as given; never the key.

    The gateway writes gateway_api_key into HAProxy's client key file and each backend's
    vllm_server_api_key into its key map, one entry a line: a line break inside a key would make
    two entries (the second an accepted credential of its own, without "Bearer "), and whitespace
    around it or a character no HTTP header carries would lock every client out. The same checks
    as the vLLM servers' keys (vllm_secret_problems), for the gateway's own key and for the
    servers' keys as the gateway sees them (a host whose preflight did not run in this play).
    """
    secrets = {"gateway_api_key": api_key}
    for backend in backends or []:
        if backend.get("api_key"):
            hosts = ", ".join(sorted(set(s["host"] for s in backend["servers"])))
            secrets["vllm_server_api_key of %s" % hosts] = backend["api_key"]
    return vllm_secret_problems(secrets)


# The shortest statistics password accepted: 16 characters of a password manager's alphabet.
STATS_PASSWORD_MIN = 16


def gateway_stats_problems(user, password):
    """Sentences naming what is wrong with gateway_stats_user / gateway_stats_password; never the password.

    The statistics page and HAProxy's Prometheus exporter answer only with them (HTTP basic auth): an
    empty or short password would leave the fleet's backends, servers and counters to whoever guesses it.
    """
    problems = []
    user = "" if user is None else str(user)
    password = "" if password is None else str(password)
    if not re.match(r"^[A-Za-z0-9._-]+$", user):
        problems.append("gateway_stats_user must be letters, digits, '.', '_' or '-' (HTTP basic auth cannot carry a "
                        "':' in a user name).")
    if not password:
        problems.append("gateway_stats_password is empty: the statistics page and HAProxy's Prometheus exporter "
                        "(gateway_stats_port) answer only with a password. Set it from Ansible Vault (16 characters or "
                        "more; the monitoring role scrapes the exporter with it).")
    elif len(password) < STATS_PASSWORD_MIN:
        problems.append("gateway_stats_password is shorter than %d characters: use a longer one (from Ansible Vault). "
                        "The value is not shown." % STATS_PASSWORD_MIN)
    else:
        problems.extend(vllm_secret_problems({"gateway_stats_password": password}))
    return problems


def gateway_haproxy_literal(text):
    """text as one HAProxy configuration argument that nothing in it is interpreted in: single-quoted
    (strong quoting: no escapes, no environment variables), a single quote itself as \\' between two
    quoted parts, which HAProxy joins into one argument."""
    return "'%s'" % str(text).replace("'", "'\\''")


def gateway_models_list(backends):
    """The answer of GET /v1/models at the gateway: OpenAI's list shape, one entry per served model."""
    data = []
    for b in backends:
        entry = {"id": b["model"], "object": "model", "created": 0, "owned_by": "vllm"}
        if b.get("parents"):
            # as vLLM lists a LoRA adapter: its base model as parent
            entry["parent"] = b["parents"][0]
        data.append(entry)
    return {"object": "list", "data": data}


def gateway_not_found_body(backends):
    """The log-format body of the 404 answer for a model no backend serves (http-request return lf-string).

    OpenAI's error shape; %[...] inserts the requested model, escaped for JSON by HAProxy.
    """
    import json

    served = ", ".join(b["model"] for b in backends) or "none"
    # json.dumps escapes the served names for JSON; a literal % is %% in a log-format string.
    message = json.dumps("The model `@MODEL@` does not exist. Models served here: %s." % served)[1:-1]
    message = message.replace("%", "%%").replace("@MODEL@", "%[var(txn.llmops_model),json(utf8s)]")
    return '{"error": {"message": "%s", "type": "NotFoundError", "param": "model", "code": 404}}' % message


def gateway_haproxy_string(text):
    """text as one double-quoted HAProxy configuration argument."""
    return '"%s"' % str(text).replace("\\", "\\\\").replace('"', '\\"')


def gateway_stat_rows(text):
    """HAProxy's CSV statistics (show stat, or the stats page's ;csv) as a list of dictionaries."""
    text = str(text or "").lstrip("# ")
    return [dict(row) for row in csv.DictReader(io.StringIO(text)) if row.get("svname")]


def gateway_host_servers(rows, host):
    """(backend, server) pairs of the gateway's statistics that belong to an inventory host."""
    prefix = _NAME_UNSAFE.sub("_", str(host)) + SERVER_SEPARATOR
    return [{"backend": r["pxname"], "server": r["svname"], "status": r.get("status", "")}
            for r in rows if str(r.get("svname", "")).startswith(prefix)]


def gateway_targets(stat_results, host):
    """Every (gateway, backend, server) of host, from the registered results of reading each gateway's statistics.

    stat_results is a loop's results list: each item names the gateway host, its content is the CSV.
    """
    targets = []
    for result in stat_results or []:
        rows = gateway_stat_rows(result.get("content", ""))
        for server in gateway_host_servers(rows, host):
            targets.append(dict(server, gateway=result.get("item")))
    return targets


def _backend_model(backend, models):
    """The served model name of a backend: from models ({backend: model}), else from its name (model<N>_<model>)."""
    return (models or {}).get(backend) or re.sub(r"^model\d+_", "", str(backend))


def gateway_drain_problems(rows, batch, gateway, allow_last=False, models=None):
    """Sentences for each model that draining the whole batch at once would leave without a healthy server at
    this gateway; [] when every model keeps one.

    rows: the gateway's statistics (gateway_stat_rows). batch: the hosts that drain together (upgrade.yml's
    serial batch, ansible_play_batch): a server of any of them is on its way out and never counts as the
    healthy one that stays. models: {backend: served model name}, for the messages.
    """
    if allow_last:
        return []
    batch = [str(h) for h in batch or []]
    leaving = {}
    for host in batch:
        for server in gateway_host_servers(rows, host):
            leaving[(server["backend"], server["server"])] = host
    problems = []
    for backend in sorted(set(pair[0] for pair in leaving)):
        servers = [r for r in rows if r.get("pxname") == backend and r.get("svname") not in ("FRONTEND", "BACKEND")]
        staying = [r for r in servers if (backend, r.get("svname")) not in leaving]
        if any(str(r.get("status", "")).startswith("UP") for r in staying):
            continue
        hosts = sorted(set(leaving[(backend, r.get("svname"))] for r in servers if (backend, r.get("svname")) in leaving))
        others = ", ".join("%s %s" % (r["svname"], r.get("status", "?")) for r in staying) or "none"
        model = _backend_model(backend, models)
        if len(hosts) == 1:
            problems.append(
                "%s is the last healthy server of model %s (backend %s) at gateway %s (others: %s): draining it would "
                "leave the model without a server during the upgrade. Bring another server of the model up first, or "
                "set gateway_drain_allow_last: true to accept the outage." % (hosts[0], model, backend, gateway, others))
        else:
            problems.append(
                "The batch %s would drain every healthy server of model %s (backend %s) at gateway %s: %s all serve it "
                "(others: %s). Use a smaller batch (llmops_upgrade_serial) or one that leaves each model a server, bring "
                "another server of the model up first, or set gateway_drain_allow_last: true to accept the outage." % (
                    ", ".join(batch), model, backend, gateway, " and ".join(hosts), others))
    return problems


def gateway_drain_refusals(stat_results, batch, allow_last=False, models=None):
    """gateway_drain_problems of the batch at every gateway, from the registered results of reading their statistics."""
    problems = []
    for result in stat_results or []:
        problems.extend(gateway_drain_problems(gateway_stat_rows(result.get("content", "")), batch,
                                               result.get("item"), allow_last, models))
    return problems


class FilterModule(object):
    def filters(self):
        return {
            "gateway_backends": gateway_backends,
            "gateway_problems": gateway_problems,
            "gateway_key_problems": gateway_key_problems,
            "gateway_models_list": gateway_models_list,
            "gateway_not_found_body": gateway_not_found_body,
            "gateway_haproxy_string": gateway_haproxy_string,
            "gateway_haproxy_literal": gateway_haproxy_literal,
            "gateway_stats_problems": gateway_stats_problems,
            "gateway_server_name": gateway_server_name,
            "gateway_stat_rows": gateway_stat_rows,
            "gateway_host_servers": gateway_host_servers,
            "gateway_drain_problems": gateway_drain_problems,
            "gateway_targets": gateway_targets,
            "gateway_drain_refusals": gateway_drain_refusals,
        }

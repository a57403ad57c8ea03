#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: verify_endpoint
short_description: Prove that an OpenAI-compatible vLLM endpoint serves chat completions
version_added: 0.1.0
description:
  - Waits until the server is ready, polling inside the module with a short back-off (50 ms, growing
    to 250 ms), so readiness is noticed within a quarter of a second of happening. vLLM refuses
    connections while it loads a model, answers C(GET /health) with 200 once the engine is up, and
    then lists its served model names at C(GET /v1/models).
  - >-
    Then sends a real C(POST /v1/chat/completions) and checks that the reply has the OpenAI shape
    (C(object), C(choices[0].message.role) and C(content), C(finish_reason), C(usage) that adds up),
    and a streamed one whose server-sent events are C(chat.completion.chunk) objects that assemble
    into content and end with C(data: [DONE]).
  - Returns the numbers a person compares hosts by (time to ready, latency, time to first token,
    completion tokens, tokens per second, the server's version) and, when something is wrong, a
    sentence that says what to do.
  - Never changes anything, so it always reports C(changed=false). In check mode it sends the same
    requests, since answering them changes nothing on the server.
  - Runs where the user wants it to. On the GPU host (the default URL is the local port), where
    O(container) can add the container's state and log to a failure; or delegated to the control node
    or a bastion (C(delegate_to)), with O(url) set to the host's address.
author:
  - llmops.vllm developers (@llmops)
extends_documentation_fragment:
  - llmops.vllm.attributes
options:
  url:
    description:
      - >-
        Base URL of the server, with or without OpenAI's C(/v1): V(http://host:8000) and V(http://host:8000/v1) (the
        C(base_url) OpenAI clients take) name the same server. Behind a reverse proxy, include its path prefix
        (V(https://gw.example.com/llm) or V(https://gw.example.com/llm/v1)).
      - The default suits the module running on the GPU host itself. Delegated to the control node or a
        bastion, give the host's address, for example V(http://{{ ansible_host }}:8000).
    type: str
    default: http://127.0.0.1:8000
  model:
    description:
      - Served model name to check (vLLM's C(--served-model-name), or the model id when that is not set).
      - When omitted, the first model the server lists is used.
    type: str
  api_key:
    description:
      - "Key sent as C(Authorization: Bearer), for servers started with C(--api-key) or E(VLLM_API_KEY)."
      - Never printed, not even in failure messages.
      - Falls back to the environment variables E(VLLM_API_KEY) and E(OPENAI_API_KEY).
      - Whitespace around the key (the trailing newline of a key read from a file) is taken off. A key with a line
        break, another control character or a non-ASCII character inside is refused before any request, since
        no client can send it in an HTTP header.
    type: str
  timeout:
    description:
      - Seconds to wait for the server to become ready, counting the whole model download and load.
    type: float
    default: 600
  request_timeout:
    description:
      - Seconds one HTTP request may take, and the longest pause between two events of a streamed reply.
    type: float
    default: 60
  health_path:
    description:
      - Path of the health check. An empty string skips it and waits on the model list alone.
      - A server that answers this path with 404 fails the module at once (a wrong URL or path prefix does not
        heal by waiting).
    type: str
    default: /health
  chat:
    description:
      - Send a chat completion once the server is ready and check the reply.
      - Set O(chat) and O(stream) to V(false) to only wait for readiness.
    type: bool
    default: true
  stream:
    description: Send a streamed chat completion once the server is ready and measure the time to the first token.
    type: bool
    default: true
  prompt:
    description: The user message of the test requests.
    type: str
    default: Say hello in one short sentence.
  max_tokens:
    description: C(max_tokens) of the test requests.
    type: int
    default: 16
  temperature:
    description: C(temperature) of the test requests.
    type: float
    default: 0.0
  extra_body:
    description:
      - Further fields of the test requests' JSON body, for example C(chat_template_kwargs) to switch a
        reasoning model's thinking off, or vLLM's C(ignore_eos).
      - They are added last, so they can also replace the fields this module sets.
    type: dict
    default: {}
  content_regex:
    description: A regular expression the replies' content must match (Python C(re.search)).
    type: str
  adapters:
    description:
      - Names of LoRA adapters the server serves on top of O(model) (vLLM's C(--lora-modules)). Each must be listed by
        C(GET /v1/models) with O(model) as its C(parent), and answer a chat completion under its own name.
      - O(model) (or the first model listed) is the base model they must name as their parent.
    type: list
    elements: str
    default: []
    version_added: 0.2.0
  container:
    description:
      - Name of the Docker container that serves the endpoint, when the module runs on its host.
      - While waiting, a container that exited or restarts in a loop ends the wait at once.
      - So does a start that hangs in the GPUs' collective communication (tensor parallelism over GPUs whose
        peer-to-peer path is broken), seen in the container's log, which is read every 15 seconds. The wait then
        ends after minutes instead of at O(timeout), after 3 minutes of silence following vLLM's
        C(vLLM is using nccl==...), or 10 minutes of nothing but its C(No available shared memory broadcast block
        found) heartbeat after vLLM warned about the GPUs' peer-to-peer path.
      - On failure, the container's state, the errors in its log and its last O(container_log_lines)
        lines are added to the message.
      - Needs the C(docker) CLI and access to the Docker daemon (usually C(become)). Leave it unset when
        the module runs delegated to another machine.
    type: str
  container_log_lines:
    description: How many lines of the container's log to attach to a failure.
    type: int
    default: 30
  headers:
    description: Extra HTTP headers sent with every request.
    type: dict
    default: {}
  validate_certs:
    description:
      - Verify the server's TLS certificate for C(https) URLs.
      - V(false) only for test endpoints with self-signed certificates.
    type: bool
    default: true
  ca_path:
    description: PEM file of the certificate authority that signed the server's certificate.
    type: path
  client_cert:
    description:
      - PEM client certificate for mutual TLS.
      - It may include the key; otherwise give O(client_key).
    type: path
  client_key:
    description: PEM private key of O(client_cert).
    type: path
  use_proxy:
    description: Use the proxy given by the environment (E(https_proxy), E(http_proxy), E(no_proxy)).
    type: bool
    default: true
  http_agent:
    description: C(User-Agent) header of the requests.
    type: str
    default: llmops.vllm.verify_endpoint
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  idempotent:
    support: full
notes:
  - Uses C(ansible.module_utils.urls); the managed host needs no extra Python library.
  - The HTTP options carry the names of C(ansible.builtin.uri)'s. Basic authentication (C(url_username),
    C(url_password)) is left out because the API key already takes the C(Authorization) header.
  - vLLM's C(--api-key) guards the C(/v1) paths only; C(/health) and C(/version) answer without a key.
  - The numbers are single requests on an idle server, meant to compare hosts and catch a slow one, not
    a benchmark of the server.
seealso:
  - name: vLLM OpenAI-compatible server
    description: The endpoints this module calls.
    link: https://docs.vllm.ai/en/stable/serving/openai_compatible_server.html
  - module: ansible.builtin.uri
    description: The module whose HTTP options this one follows.
"""

EXAMPLES = r"""
- name: Verify the endpoint on the GPU host itself, with the container's log on failure
  become: true
  llmops.vllm.verify_endpoint:
    url: http://127.0.0.1:8000
    model: Qwen/Qwen2.5-1.5B-Instruct
    api_key: "{{ vllm_api_key }}"
    container: vllm
    timeout: 1800

- name: Verify every host from the control node
  llmops.vllm.verify_endpoint:
    url: "http://{{ ansible_host }}:8000"
    model: qwen2.5-1.5b
    api_key: "{{ vllm_api_key }}"
    content_regex: "(?i)hello"
  delegate_to: localhost
  register: verification

- name: Print the numbers
  ansible.builtin.debug:
    msg: >-
      ready after {{ verification.time_to_ready }}s, latency {{ verification.latency }}s,
      first token after {{ verification.time_to_first_token }}s, {{ verification.tokens_per_second }} tokens/s

- name: A reasoning model, thinking switched off so that 16 tokens hold an answer
  llmops.vllm.verify_endpoint:
    model: Qwen/Qwen3-8B
    extra_body:
      chat_template_kwargs:
        enable_thinking: false

- name: Only wait for readiness, through a TLS proxy with an internal CA
  llmops.vllm.verify_endpoint:
    url: https://llm.example.com
    ca_path: /etc/pki/internal-ca.pem
    chat: false
    stream: false
"""

RETURN = r"""
url:
  description: The base URL that was checked.
  returned: always
  type: str
  sample: http://127.0.0.1:8000
ready:
  description: Whether the server became ready.
  returned: always
  type: bool
  sample: true
time_to_ready:
  description: Seconds from the start of the module until the server was ready (near 0 for a server that already was).
  returned: when the server became ready
  type: float
  sample: 71.4
models:
  description: The served model names listed by C(/v1/models).
  returned: when the server became ready
  type: list
  elements: str
  sample: ["qwen2.5-1.5b"]
adapters:
  description: What each adapter of O(adapters) answered.
  returned: success and O(adapters) is not empty
  type: list
  elements: dict
  version_added: 0.2.0
  contains:
    name:
      description: The adapter's name.
      type: str
    parent:
      description: Its parent in C(/v1/models), the base model.
      type: str
    reply:
      description: The content of its chat completion.
      type: str
    latency:
      description: Seconds its chat completion took.
      type: float
  sample:
    - {name: sql, parent: qwen2.5-1.5b, reply: "SELECT 1;", latency: 0.52}
model:
  description: The served model name the requests used.
  returned: success
  type: str
  sample: qwen2.5-1.5b
version:
  description: The server's version from C(GET /version), or null when the server has no such endpoint.
  returned: success
  type: str
  sample: 0.32.0
reply:
  description: The content of the chat completion (of the streamed one when O(chat=false)).
  returned: success and O(chat) or O(stream) is true
  type: str
  sample: Hello! How can I help you today?
chat:
  description: Details of the non-streamed chat completion.
  returned: success and O(chat) is true
  type: dict
  contains:
    content:
      description: The assistant's reply.
      type: str
    finish_reason:
      description: Why generation stopped (C(stop), C(length)).
      type: str
    latency:
      description: Seconds the request took.
      type: float
    usage:
      description: Token counts the server reported.
      type: dict
    tokens_per_second:
      description: Completion tokens divided by the latency.
      type: float
    id:
      description: The completion's id, to find the request in the server's log.
      type: str
  sample:
    content: Hello there!
    finish_reason: stop
    latency: 0.41
    usage: {prompt_tokens: 15, completion_tokens: 4, total_tokens: 19}
    tokens_per_second: 9.76
    id: chatcmpl-b1b28af61093f0c7
stream:
  description: Details of the streamed chat completion.
  returned: success and O(stream) is true
  type: dict
  contains:
    content:
      description: The content assembled from the chunks.
      type: str
    chunks:
      description: Number of C(chat.completion.chunk) events received.
      type: int
    time_to_first_token:
      description: Seconds from sending the request to the first chunk carrying content.
      type: float
    latency:
      description: "Seconds until C(data: [DONE])."
      type: float
    finish_reason:
      description: The finish reason of the last choice.
      type: str
    usage:
      description: Token counts of the final chunk, when the server sent them.
      type: dict
    tokens_per_second:
      description: Completion tokens divided by the latency, when the server reported usage.
      type: float
  sample:
    content: Hello there!
    chunks: 6
    time_to_first_token: 0.08
    latency: 0.39
    finish_reason: stop
    usage: {prompt_tokens: 15, completion_tokens: 4, total_tokens: 19}
    tokens_per_second: 10.26
latency:
  description: Seconds the chat completion took (the streamed one when O(chat=false)).
  returned: success and O(chat) or O(stream) is true
  type: float
  sample: 0.41
time_to_first_token:
  description: Seconds to the first streamed token.
  returned: success and O(stream) is true
  type: float
  sample: 0.08
completion_tokens:
  description: Completion tokens of the chat completion (the streamed one when O(chat=false)).
  returned: success and O(chat) or O(stream) is true
  type: int
  sample: 4
tokens_per_second:
  description: Completion tokens per second of the chat completion (the streamed one when O(chat=false)).
  returned: success and O(chat) or O(stream) is true
  type: float
  sample: 9.76
last_seen:
  description: On failure, what the last request saw (connection refused, an HTTP status and its message, a timeout).
  returned: failure
  type: str
  sample: connection refused
container_state:
  description: On failure with O(container) set, the container's state.
  returned: failure and O(container) is set
  type: str
  sample: exited (exit code 1, restarted 0 times)
container_log:
  description: On failure with O(container) set, the last lines of the container's log.
  returned: failure and O(container) is set
  type: list
  elements: str
container_errors:
  description:
    - On failure with O(container) set, the distinct exceptions in the container's log, most recent last, each
      whole (a message over several lines, such as a pydantic C(ValidationError), keeps its lines).
  returned: failure and O(container) is set
  type: list
  elements: str
  sample: ["ValueError: Free memory on device (10.2/79.1 GiB) on startup is less than desired GPU memory utilization (0.9, 71.2 GiB)."]
advice:
  description:
    - On failure with O(container) set, what to change for the failures vLLM is known to hit at start, in the
      variables of this collection (C(vllm_server_shm_size), C(vllm_server_hf_token), an instance's options, ...).
  returned: failure and O(container) is set
  type: list
  elements: str
"""

import json
import re
import time

from ansible.module_utils.basic import AnsibleModule, env_fallback

from ansible_collections.llmops.vllm.plugins.module_utils._openai_endpoint import Endpoint, EndpointError, error_detail, header_safe
from ansible_collections.llmops.vllm.plugins.module_utils._vllm_startup import HANG_ADVICE, HangWatch, advice, exceptions


class VerificationFailed(Exception):
    def __init__(self, message, went_away=False, **facts):
        super(VerificationFailed, self).__init__(message)
        self.message = message
        # the server closed a connection in the middle of an answer: its container may be exiting right now
        self.went_away = went_away
        self.facts = facts


def _round(seconds):
    return round(seconds, 3)


def _fmt_num(value):
    return ("%d" % value) if float(value).is_integer() else ("%s" % value)


def _json_or_none(text):
    try:
        return json.loads(text)
    except ValueError:
        return None


TLS_ADVICE = (" The server's certificate could not be verified: set ca_path to the CA that signed it, client_cert/client_key "
              "if it asks for a client certificate, or validate_certs: false for a test endpoint only.")
PLAIN_HTTP_ADVICE = " The server does not speak TLS on this port: use an http:// URL."


def tls_advice(error):
    # an https:// URL for a plain HTTP server fails in the handshake with these
    if "WRONG_VERSION_NUMBER" in error.message or "record layer failure" in error.message:
        return PLAIN_HTTP_ADVICE
    return TLS_ADVICE


class Verifier(object):
    """Readiness, chat and stream checks against one endpoint; clock and sleep are swappable for tests."""

    # Poll quickly at first, then back off to at most this interval, so readiness is seen within a
    # quarter of a second, leaving most of the second the issue allows to Ansible's own start and exit
    # (benchmarks/readiness.py). Polls are cheap: while vLLM loads, nothing listens on its port.
    FIRST_INTERVAL = 0.05
    MAX_INTERVAL = 0.25

    def __init__(self, endpoint, params, clock=None, sleep=None, watch=None):
        self.ep = endpoint
        self.p = params
        self.clock = clock or time.monotonic
        self.sleep = sleep or time.sleep
        # called between polls; raises VerificationFailed when waiting longer is pointless
        self.watch = watch
        self.started = self.clock()
        self.models = []
        # each listed model's parent in /v1/models (an adapter's base model; None for a base model)
        self.parents = {}

    # ---- readiness -------------------------------------------------------------------------------

    def explain_wait_failure(self, last):
        waited = self.clock() - self.started
        url = self.ep.base_url
        head = "%s did not become ready within %ss (waited %.0fs); last seen: %s." % (
            url, _fmt_num(self.p["timeout"]), waited, last.summary() if last else "nothing")
        if last is None:
            return head
        if last.kind == "refused":
            return head + (
                " Nothing accepts connections there. vLLM only listens once the model is loaded, so either the "
                "model is still loading (raise timeout), or the container exited or restarts in a loop "
                "(docker ps -a, docker logs), or the port is not published on this address (check the port mapping).")
        if last.kind == "unreachable":
            return head + (
                " There is no route to that address: a firewall rejects the connection (for example iptables' "
                "icmp-host-prohibited), the host is down, or the address is wrong. Check the URL, the firewall between "
                "here and the host, and that the host is up; vLLM's own state cannot cause this.")
        if last.kind == "reset":
            return head + (
                " Something accepts connections but closes them without answering: Docker's port proxy is up while "
                "vLLM inside the container does not listen yet (still loading the model: raise timeout) or keeps "
                "crashing and restarting (docker ps -a, docker logs).")
        if last.kind == "timeout":
            return head + (" Connections hang: a firewall may drop them, or the server is overloaded. "
                           "Check that the port is reachable from where this module runs.")
        if last.kind == "tls":
            return head + tls_advice(last)
        if last.kind == "dns":
            return head + " The host name does not resolve from where this module runs: check the URL."
        if last.kind == "http" and last.status == 503:
            return head + (" The server answers but is not healthy (503): vLLM's engine died or is restarting (the "
                           "container log says why, often out of GPU memory), or a proxy in front has no server behind it.")
        if last.kind == "http" and last.status in (502, 504):
            return head + (" A proxy in front of vLLM answers, but cannot reach vLLM behind it (HTTP %s): "
                           "check that vLLM runs and that the proxy points at its port." % last.status)
        return head

    def explain_not_found(self, e):
        return ("%s answered 404: is this a vLLM server, and does the URL carry a path prefix it should not? Set health_path "
                "to '' for servers without /health. A server answers there, so waiting would not help; the server's root "
                "and its /v1 URL (OpenAI's base_url) both work as url."
                % e.url)

    def wait_ready(self):
        interval = self.FIRST_INTERVAL
        last = None
        deadline = self.started + self.p["timeout"]
        while True:
            remaining = deadline - self.clock()
            try:
                return self._probe(max(min(self.p["request_timeout"], remaining), 0.5))
            except EndpointError as e:
                last = e
                if e.kind == "http" and e.status in (401, 403):
                    raise VerificationFailed(self.explain_auth(e), last_seen=e.summary())
                if e.kind == "tls":
                    raise VerificationFailed("%s: %s.%s" % (self.ep.base_url, e.message, tls_advice(e)), last_seen=e.summary())
                if e.kind == "http" and e.status == 404:
                    raise VerificationFailed(self.explain_not_found(e), last_seen=e.summary())
                if e.kind == "protocol" and e.status is None:
                    raise VerificationFailed("%s: %s" % (self.ep.base_url, e.message), last_seen=e.summary())
            if self.watch:
                self.watch(self.clock() - self.started, last)
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise VerificationFailed(self.explain_wait_failure(last), last_seen=last.summary() if last else "")
            self.sleep(min(interval, remaining))
            interval = min(interval * 2, self.MAX_INTERVAL)

    def _probe(self, timeout):
        if self.p["health_path"]:
            status, dummy = self.ep.request("GET", self.p["health_path"], timeout=timeout)
            if status != 200:
                raise EndpointError("http", "HTTP %s from %s" % (status, self.ep.url(self.p["health_path"])), status=status,
                                    url=self.ep.url(self.p["health_path"]))
        status, data, text = self.ep.request_json("GET", "/v1/models", timeout=timeout)
        try:
            models = [entry["id"] for entry in data["data"]]
        except (TypeError, KeyError):
            raise VerificationFailed("%s/v1/models answered, but not with an OpenAI model list: %s" % (self.ep.base_url, text[:300]),
                                     last_seen="HTTP %s" % status)
        ready_at = self.clock() - self.started
        wanted = self.p["model"]
        if wanted and wanted not in models:
            raise VerificationFailed(
                "%s is ready but does not serve the model '%s'. It serves: %s. Use one of these names "
                "(vLLM names a model by --served-model-name, or by the model id when that is not set)."
                % (self.ep.base_url, wanted, ", ".join(models) or "nothing"),
                models=models, time_to_ready=_round(ready_at), ready=True)
        if not models:
            raise VerificationFailed("%s is ready but lists no models at /v1/models." % self.ep.base_url, models=models, ready=True)
        self.models = models
        self.parents = dict((entry["id"], entry.get("parent")) for entry in data["data"] if isinstance(entry, dict))
        return models, ready_at

    def adapter(self, name, base):
        """Check one LoRA adapter: listed with base as its parent, and answering a chat completion under its name."""
        if name not in self.models:
            listed = ", ".join(self.models) or "nothing"
            raise VerificationFailed(
                "%s does not serve the LoRA adapter '%s': /v1/models lists %s. vLLM loads the adapters of --lora-modules "
                "at start; check the instance's lora.adapters and the server's log." % (self.ep.base_url, name, listed))
        if self.parents.get(name) != base:
            raise VerificationFailed(
                "%s lists the LoRA adapter '%s' with the parent %r, not the base model '%s': it is served on top of "
                "another model than expected." % (self.ep.base_url, name, self.parents.get(name), base))
        chat = self.chat(name)
        return dict(name=name, parent=base, reply=chat["content"], latency=chat["latency"])

    def explain_auth(self, e):
        if self.ep.api_key:
            return ("%s refused the API key (HTTP %s at %s). Give the key the server was started with "
                    "(vLLM's --api-key or VLLM_API_KEY); the key itself is not shown here." % (self.ep.base_url, e.status, e.url))
        return ("%s requires an API key (HTTP %s at %s), and none was given. Set api_key (or VLLM_API_KEY) "
                "to the key the server was started with." % (self.ep.base_url, e.status, e.url))

    # ---- chat ------------------------------------------------------------------------------------

    def request_body(self, model, stream):
        body = {
            "model": model,
            "messages": [{"role": "user", "content": self.p["prompt"]}],
            "max_tokens": self.p["max_tokens"],
            "temperature": self.p["temperature"],
        }
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        body.update(self.p["extra_body"] or {})
        return body

    def explain_chat_error(self, e, model, what):
        url = self.ep.base_url
        detail = error_detail(e.body) if e.kind == "http" else ""
        if e.kind == "http" and e.status in (401, 403):
            return self.explain_auth(e)
        if e.kind == "http" and e.status == 404:
            return ("%s: the %s for model '%s' answered 404 (%s). The server does not serve that name; it serves: %s."
                    % (url, what, model, detail or "not found", ", ".join(self.models) or "nothing"))
        if e.kind == "http" and e.status == 400 and "chat template" in detail.lower():
            return ("%s: the model '%s' has no chat template, so vLLM cannot answer /v1/chat/completions (%s). "
                    "Give vLLM a template with its chat-template option, serve a chat/instruct variant of the model, "
                    "or use the completions API (/v1/completions) with it instead." % (url, model, detail))
        if e.kind == "http":
            return "%s: the %s failed with HTTP %s: %s" % (url, what, e.status, detail or "no details in the answer")
        if e.kind == "timeout":
            return ("%s: the %s did not finish within %ss. The server is up but slow (overloaded, or a long "
                    "max_tokens); raise request_timeout or lower max_tokens." % (url, what, _fmt_num(self.p["request_timeout"])))
        if e.kind in ("reset", "refused"):
            return ("%s: the %s broke off (%s). The server went away in the middle of the request: "
                    "the container may have crashed, been killed or restarted (see its log)." % (url, what, e.message))
        if e.kind == "tls":
            return "%s: %s.%s" % (url, e.message, tls_advice(e))
        return "%s: the %s failed: %s" % (url, what, e.message)

    def chat(self, model):
        started = self.clock()
        try:
            dummy, data, text = self.ep.request_json("POST", "/v1/chat/completions", body=self.request_body(model, False))
        except EndpointError as e:
            raise VerificationFailed(self.explain_chat_error(e, model, "chat completion"), went_away=e.kind == "reset",
                                     last_seen=e.summary())
        latency = self.clock() - started
        problems = check_completion_shape(data)
        if problems:
            raise VerificationFailed("%s: the chat completion does not have the OpenAI shape: %s. Answer: %s"
                                     % (self.ep.base_url, "; ".join(problems), text[:500]))
        choice = data["choices"][0]
        content = choice["message"]["content"]
        self.check_regex(content, "chat completion")
        usage = data["usage"]
        return dict(
            content=content,
            finish_reason=choice.get("finish_reason"),
            latency=_round(latency),
            usage=usage,
            tokens_per_second=_round(usage["completion_tokens"] / latency) if latency > 0 else None,
            id=data.get("id"),
        )

    def stream(self, model):
        pieces = []
        chunks = 0
        ttft = None
        finish_reason = None
        usage = None
        done = False
        started = self.clock()
        events = self.ep.stream_events("/v1/chat/completions", self.request_body(model, True))
        try:
            for dummy, payload in events:
                if payload == "[DONE]":
                    done = True
                    break
                chunk = _json_or_none(payload)
                if isinstance(chunk, dict) and chunk.get("error"):
                    raise VerificationFailed(
                        "%s: the server reported an error in the middle of the streamed chat completion, after %d chunks: %s"
                        % (self.ep.base_url, chunks, error_detail(payload)), last_seen=error_detail(payload))
                if not isinstance(chunk, dict) or chunk.get("object") != "chat.completion.chunk":
                    raise VerificationFailed("%s: a streamed event is not a chat.completion.chunk: %s" % (self.ep.base_url, payload[:300]))
                chunks += 1
                if chunk.get("usage"):
                    usage = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        if ttft is None:
                            ttft = self.clock() - started
                        pieces.append(delta)
                    if choice.get("finish_reason"):
                        finish_reason = choice["finish_reason"]
        except EndpointError as e:
            if e.kind == "reset" and chunks:
                raise VerificationFailed(self.explain_broken_stream(chunks, pieces, e.message), went_away=True, last_seen=e.summary())
            raise VerificationFailed(self.explain_chat_error(e, model, "streamed chat completion"), went_away=e.kind == "reset",
                                     last_seen=e.summary())
        latency = self.clock() - started
        content = "".join(pieces)
        if not done:
            raise VerificationFailed(self.explain_broken_stream(chunks, pieces, "the server closed the connection"),
                                     went_away=True, last_seen="stream closed without data: [DONE]")
        if not content.strip():
            raise VerificationFailed("%s: the streamed chat completion assembled into empty content (%d chunks)."
                                     % (self.ep.base_url, chunks))
        self.check_regex(content, "streamed chat completion")
        result = dict(content=content, chunks=chunks, time_to_first_token=_round(ttft), latency=_round(latency),
                      finish_reason=finish_reason)
        if usage:
            result["usage"] = usage
            # The whole request, as for the non-streamed one: on a fast server a short reply arrives in one
            # burst, and a rate over the time after the first token would be meaningless.
            if latency > 0:
                result["tokens_per_second"] = _round(usage.get("completion_tokens", 0) / latency)
        return result

    def explain_broken_stream(self, chunks, pieces, how):
        return ("%s: the streamed chat completion broke off after %d chunks (%d characters of content) without "
                "'data: [DONE]' (%s). The server went away in the middle of the reply: the container may have "
                "crashed, been killed or restarted (see its log)." % (self.ep.base_url, chunks, len("".join(pieces)), how))

    def check_regex(self, content, what):
        pattern = self.p["content_regex"]
        if pattern and not re.search(pattern, content):
            raise VerificationFailed("%s: the %s's content does not match %r. Content: %r"
                                     % (self.ep.base_url, what, pattern, content[:500]))

    def version(self):
        try:
            dummy, data, dummy = self.ep.request_json("GET", "/version", timeout=min(self.p["request_timeout"], 10))
        except EndpointError:
            return None
        return data.get("version") if isinstance(data, dict) else None


def check_completion_shape(data):
    """List what makes data not an OpenAI chat.completion (empty when it is one)."""
    problems = []
    if not isinstance(data, dict):
        return ["the answer is not a JSON object"]
    if data.get("object") != "chat.completion":
        problems.append("object is %r, not 'chat.completion'" % data.get("object"))
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        problems.append("choices is empty or missing")
    else:
        message = choices[0].get("message") if isinstance(choices[0], dict) else None
        if not isinstance(message, dict):
            problems.append("choices[0].message is missing")
        else:
            if message.get("role") != "assistant":
                problems.append("choices[0].message.role is %r, not 'assistant'" % message.get("role"))
            content = message.get("content")
            if not isinstance(content, str) or not content.strip():
                problems.append("choices[0].message.content is empty")
        if isinstance(choices[0], dict) and not choices[0].get("finish_reason"):
            problems.append("choices[0].finish_reason is missing")
    usage = data.get("usage")
    if not isinstance(usage, dict):
        problems.append("usage is missing")
    else:
        counts = [usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")]
        if not all(isinstance(c, int) for c in counts):
            problems.append("usage lacks prompt_tokens, completion_tokens or total_tokens")
        elif counts[0] + counts[1] != counts[2]:
            problems.append("usage does not add up: %d + %d != %d" % tuple(counts))
        elif counts[1] < 1:
            problems.append("usage counts no completion tokens")
    return problems


def error_lines(log, limit=3):
    """The distinct exception messages of a log, most recent last (see _vllm_startup.exceptions)."""
    return exceptions(log, limit)


class Container(object):
    """The local Docker container behind the endpoint, seen through the docker CLI."""

    # a container that restarted this many times while we waited is crash-looping
    RESTART_LOOP = 3
    # seconds between two looks at the container while waiting (each costs a docker inspect)
    CHECK_EVERY = 2.0
    # after a connection broke off: how long Docker may take to report the container's exit or restart
    SETTLE = 3.0
    # seconds between two reads of what a running container logged while waiting (a docker logs each; the
    # hangs they look for last minutes); the first read takes this many lines, then the lines since the last
    LOG_EVERY = 15.0
    LOG_FIRST = 1000

    def __init__(self, module, name, lines):
        self.module = module
        self.name = name
        self.lines = lines
        self.docker = module.get_bin_path("docker")
        self.first_restarts = None
        self.last_check = None
        self.last_log_read = None
        self.hangs = HangWatch()
        self.hang = None

    def state(self):
        """(status, exit code, restart count), or None when docker cannot tell."""
        if not self.docker:
            return None
        rc, out, dummy = self.module.run_command(
            [self.docker, "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}", self.name])
        parts = out.split()
        if rc != 0 or len(parts) != 3:
            return None
        return parts[0], int(parts[1]), int(parts[2])

    def describe(self):
        if not self.docker:
            return "unknown: there is no docker command where this module runs"
        current = self.state()
        if current is None:
            return ("not found where this module runs (a module delegated to another machine cannot see it: "
                    "leave container unset there)")
        return "%s (exit code %d, restarted %d times)" % current

    def log(self, lines):
        if not self.docker:
            return []
        rc, out, err = self.module.run_command([self.docker, "logs", "--tail", str(lines), self.name])
        return (out + err).splitlines() if rc == 0 else []

    def watch(self, waited, last):
        """Stop waiting for a container that exited for good or restarts in a loop."""
        if self.docker is None or (self.last_check is not None and waited - self.last_check < self.CHECK_EVERY):
            return
        self.last_check = waited
        current = self.state()
        if current is None:
            return
        status, code, restarts = current
        if self.first_restarts is None:
            self.first_restarts = restarts
        if status in ("exited", "dead"):
            raise VerificationFailed("The container %s %s with exit code %d after %.0fs, so the endpoint cannot become ready."
                                     % (self.name, status, code, waited), last_seen=last.summary() if last else "")
        if restarts - self.first_restarts >= self.RESTART_LOOP:
            raise VerificationFailed("The container %s restarted %d times in %.0fs: vLLM crashes at start, so waiting longer "
                                     "will not help." % (self.name, restarts - self.first_restarts, waited),
                                     last_seen=last.summary() if last else "")
        if status == "running":
            self.watch_log(waited, last)

    def watch_log(self, waited, last):
        """Stop waiting for a start that hangs where vLLM's log shows it will not go on (_vllm_startup.HangWatch)."""
        if self.last_log_read is not None and waited - self.last_log_read < self.LOG_EVERY:
            return
        self.last_log_read = waited
        since = ["--since", self.hangs.last_stamp] if self.hangs.last_stamp else ["--tail", str(self.LOG_FIRST)]
        rc, out, err = self.module.run_command([self.docker, "logs", "--timestamps"] + since + [self.name])
        if rc != 0:
            return
        self.hangs.feed((out + err).splitlines())
        self.hang = self.hangs.hang(time.time())
        if self.hang:
            raise VerificationFailed("The container %s runs, but its start hangs after %.0fs: %s" % (self.name, waited, self.hang),
                                     last_seen=last.summary() if last else "")

    def settle(self):
        """Wait a moment for a container whose server just went away to show it: the connection closes as the
        process dies, a little before Docker reports the container exited or restarting."""
        first = self.state()
        deadline = time.monotonic() + self.SETTLE
        current = first
        while current is not None and current[0] == "running" and current[2] == first[2] and time.monotonic() < deadline:
            time.sleep(0.2)
            current = self.state()

    def explain(self, result, settle=False):
        """Text to append to a failure message; also fills result's container_state and container_log."""
        if settle and self.docker:
            self.settle()
        state = self.describe()
        result["container_state"] = state
        log = self.log(max(self.lines, 300))
        result["container_log"] = log[-self.lines:] if self.lines > 0 else []
        text = " Container %s: %s." % (self.name, state)
        errors = error_lines(log)
        result["container_errors"] = errors
        result["advice"] = ([HANG_ADVICE] if self.hang else []) + advice(errors)
        if errors:
            text += " Errors in its log: " + " | ".join(errors)
        if result["advice"]:
            text += "\nWhat to change: " + " ".join(result["advice"])
        if result["container_log"]:
            text += "\nLast log lines:\n" + "\n".join(result["container_log"])
        return text


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", default="http://127.0.0.1:8000"),
            model=dict(type="str"),
            api_key=dict(type="str", no_log=True, fallback=(env_fallback, ["VLLM_API_KEY", "OPENAI_API_KEY"])),
            timeout=dict(type="float", default=600),
            request_timeout=dict(type="float", default=60),
            health_path=dict(type="str", default="/health"),
            chat=dict(type="bool", default=True),
            stream=dict(type="bool", default=True),
            prompt=dict(type="str", default="Say hello in one short sentence."),
            max_tokens=dict(type="int", default=16, no_log=False),
            temperature=dict(type="float", default=0.0),
            extra_body=dict(type="dict", default={}),
            content_regex=dict(type="str"),
            adapters=dict(type="list", elements="str", default=[]),
            container=dict(type="str"),
            container_log_lines=dict(type="int", default=30),
            headers=dict(type="dict", default={}),
            validate_certs=dict(type="bool", default=True),
            ca_path=dict(type="path"),
            client_cert=dict(type="path"),
            client_key=dict(type="path", no_log=False),
            use_proxy=dict(type="bool", default=True),
            http_agent=dict(type="str", default="llmops.vllm.verify_endpoint"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["api_key"] is not None:
        # a key read from a file ends in a newline that no client sends; inside the key, such a character
        # would make http.client raise an exception that quotes the whole header
        p["api_key"] = p["api_key"].strip()
        # Ansible hides the values it was given for no_log options; the stripped key is a new value
        module.no_log_values.add(p["api_key"])
        if not header_safe(p["api_key"]):
            module.fail_json(msg="api_key holds a line break, another control character or a non-ASCII character inside it, "
                                 "which no client can send in an HTTP header: give the key the server was started with, "
                                 "printable ASCII only. The key itself is not shown.", ready=False)
    if not re.match(r"^https?://[^/\s]+", p["url"]):
        module.fail_json(msg="url must start with http:// or https:// and name a host, not %r" % p["url"], ready=False)
    if p["content_regex"]:
        try:
            re.compile(p["content_regex"])
        except re.error as e:
            module.fail_json(msg="content_regex is not a valid regular expression: %s" % e, ready=False)
    if p["timeout"] <= 0 or p["request_timeout"] <= 0:
        module.fail_json(msg="timeout and request_timeout must be positive numbers of seconds", ready=False)
    if p["max_tokens"] < 1:
        module.fail_json(msg="max_tokens must be at least 1, not %d" % p["max_tokens"], ready=False)

    endpoint = Endpoint(p["url"], api_key=p["api_key"], headers=p["headers"], validate_certs=p["validate_certs"],
                        ca_path=p["ca_path"], client_cert=p["client_cert"], client_key=p["client_key"],
                        use_proxy=p["use_proxy"], request_timeout=p["request_timeout"], http_agent=p["http_agent"])
    container = Container(module, p["container"], p["container_log_lines"]) if p["container"] else None
    verifier = Verifier(endpoint, p, watch=container.watch if container else None)
    result = dict(changed=False, url=endpoint.base_url, ready=False)
    try:
        models, ready_at = verifier.wait_ready()
        result.update(ready=True, time_to_ready=_round(ready_at), models=models, model=p["model"] or models[0])
        result["version"] = verifier.version()
        if p["chat"]:
            chat = verifier.chat(result["model"])
            result.update(chat=chat, reply=chat["content"], latency=chat["latency"],
                          completion_tokens=chat["usage"]["completion_tokens"], tokens_per_second=chat["tokens_per_second"])
        if p["stream"]:
            stream = verifier.stream(result["model"])
            result.update(stream=stream, time_to_first_token=stream["time_to_first_token"])
            if not p["chat"]:
                result.update(reply=stream["content"], latency=stream["latency"],
                              completion_tokens=(stream.get("usage") or {}).get("completion_tokens"),
                              tokens_per_second=stream.get("tokens_per_second"))
        if p["adapters"]:
            result["adapters"] = [verifier.adapter(name, result["model"]) for name in p["adapters"]]
    except VerificationFailed as e:
        result.update(e.facts)
        msg = e.message
        if container:
            msg += container.explain(result, settle=e.went_away)
        module.fail_json(msg=endpoint.scrub(msg), **result)
    except Exception as e:  # a bug must not print the key in a traceback Ansible shows without scrubbing
        import traceback

        msg = "verify_endpoint failed unexpectedly at %s: %s: %s" % (endpoint.base_url, type(e).__name__, endpoint.scrub(str(e)))
        module.fail_json(msg=msg, exception=endpoint.scrub(traceback.format_exc()), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()

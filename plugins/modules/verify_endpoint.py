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
  - llmops.vllm.attributes.read_only
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

from ansible.module_utils.basic import AnsibleModule, env_fallback

from ansible_collections.llmops.vllm.plugins.module_utils._verify_endpoint import run_module


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
    run_module(module)


if __name__ == "__main__":
    main()

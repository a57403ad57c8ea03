# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)
#
# This module_utils is PRIVATE to the collection. It can change without notice
# and must not be used by anything outside llmops.vllm.
#
# What llmops.vllm.verify_endpoint does: wait for an OpenAI-compatible endpoint (vLLM's server) to become
# ready, send it a chat completion and a streamed one, judge their answers, and, on the GPU host, watch
# and explain the container behind it. The module holds only its documentation and argument spec.

from __future__ import annotations

import json
import re
import time

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

# What a server that never became ready is told, by how the last attempt failed (tls: tls_advice; http: by status).
UNREADY_ADVICE = {
    "refused": " Nothing accepts connections there. vLLM only listens once the model is loaded, so either the "
               "model is still loading (raise timeout), or the container exited or restarts in a loop "
               "(docker ps -a, docker logs), or the port is not published on this address (check the port mapping).",
    "unreachable": " There is no route to that address: a firewall rejects the connection (for example iptables' "
                   "icmp-host-prohibited), the host is down, or the address is wrong. Check the URL, the firewall "
                   "between here and the host, and that the host is up; vLLM's own state cannot cause this.",
    "reset": " Something accepts connections but closes them without answering: Docker's port proxy is up while "
             "vLLM inside the container does not listen yet (still loading the model: raise timeout) or keeps "
             "crashing and restarting (docker ps -a, docker logs).",
    "timeout": " Connections hang: a firewall may drop them, or the server is overloaded. "
               "Check that the port is reachable from where this module runs.",
    "dns": " The host name does not resolve from where this module runs: check the URL.",
}


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
        if last.kind in UNREADY_ADVICE:
            return head + UNREADY_ADVICE[last.kind]
        if last.kind == "tls":
            return head + tls_advice(last)
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


def check_params(module):
    """Fail the module on parameters no request could use; strip the API key and hide it from the output."""
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


def run_module(module):
    """Verify the endpoint the module's parameters name; end the module with exit_json or fail_json."""
    check_params(module)
    p = module.params
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

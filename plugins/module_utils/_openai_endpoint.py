# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)
#
# This module_utils is PRIVATE to the collection. It can change without notice
# and must not be used by anything outside llmops.vllm.
#
# HTTP access to an OpenAI-compatible endpoint (vLLM's server) through
# ansible.module_utils.urls, so the managed host needs no requests library.

from __future__ import annotations

import errno
import json
import re
import socket
import ssl
import time

from ansible.module_utils.common.text.converters import to_native, to_text
from http.client import HTTPException
from urllib.error import HTTPError, URLError

from ansible.module_utils.urls import open_url


class EndpointError(Exception):
    """A request to the endpoint failed; kind says how, for diagnostics."""

    # kinds: refused, unreachable, timeout, tls, dns, reset, http, protocol
    def __init__(self, kind, message, status=None, body=None, url=None):
        super(EndpointError, self).__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.body = body
        self.url = url

    def summary(self):
        """What was seen, in a few words (for 'last seen' lines)."""
        if self.kind == "http":
            detail = error_detail(self.body)
            return "HTTP %s%s" % (self.status, (": " + detail) if detail else "")
        return self.message


def error_detail(body):
    """The human part of an OpenAI-style or vLLM error body, or a short raw excerpt."""
    if not body:
        return ""
    try:
        data = json.loads(body)
    except ValueError:
        return to_text(body).strip()[:300]
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data))
        if isinstance(err, dict):
            return to_text(err.get("message") or json.dumps(err))[:500]
        return to_text(err)[:500]
    return to_text(body).strip()[:300]


# No route to the host or its network: a firewall that rejects (icmp-host-prohibited), a host that is
# down, or a wrong address; never a server that is still starting.
_UNREACHABLE_ERRNOS = (errno.EHOSTUNREACH, errno.ENETUNREACH, getattr(errno, "EHOSTDOWN", errno.EHOSTUNREACH),
                       getattr(errno, "ENETDOWN", errno.ENETUNREACH))


def _reason_kind(reason):
    """Classify the reason of a URLError or a socket-level exception."""
    if isinstance(reason, OSError) and reason.errno in _UNREACHABLE_ERRNOS:
        return "unreachable"
    if isinstance(reason, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in to_native(reason) or "SSL" in type(reason).__name__:
        return "tls"
    if isinstance(reason, ConnectionRefusedError):
        return "refused"
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(reason, socket.gaierror):
        return "dns"
    if isinstance(reason, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return "reset"
    text = to_native(reason).lower()
    if "refused" in text:
        return "refused"
    if "timed out" in text:
        return "timeout"
    if "certificate" in text or "ssl" in text:
        return "tls"
    if "no route to host" in text or "network is unreachable" in text or "host is down" in text:
        return "unreachable"
    if "name or service not known" in text or "nodename nor servname" in text or "temporary failure in name resolution" in text:
        return "dns"
    return "reset"


_KIND_TEXT = {
    "refused": "connection refused",
    "unreachable": "host unreachable",
    "timeout": "timed out",
    "tls": "TLS error",
    "dns": "host name not found",
    "reset": "connection broken",
}


def base_url(url):
    """The server's root from a URL with or without OpenAI's /v1 (what OpenAI clients take as base_url)."""
    url = url.rstrip("/")
    if url.endswith("/v1"):
        url = url[:-3].rstrip("/")
    return url


def header_safe(value):
    """Whether value can be sent in an HTTP header by every client: printable ASCII, no control characters.

    http.client refuses a newline in a header value with an exception that quotes the value; httpx (the
    OpenAI client's) refuses non-ASCII. A key that cannot travel in a header is one no client can send.
    """
    return all(0x20 <= ord(c) < 0x7f for c in value)


def scrub(text, secrets):
    """text with every secret replaced by ********, also as Python writes it inside a repr (a key with a
    newline shows as 'key\\n' in "Invalid header value b'Bearer key\\n'")."""
    text = to_text(text, errors="surrogate_or_replace")
    for secret in secrets:
        if not secret:
            continue
        forms = {secret, secret.strip(), repr(secret)[1:-1], repr(to_native(secret).encode("utf-8", "backslashreplace"))[2:-1]}
        for form in sorted((f for f in forms if len(f) >= 4), key=len, reverse=True):
            text = text.replace(form, "********")
    return text


_CREDENTIAL_HEADER = re.compile(r"auth|token|key|secret|cookie|passw", re.I)


class Endpoint(object):
    """An OpenAI-compatible server at base_url (its root; a trailing /v1 is taken off)."""

    def __init__(self, base_url_, api_key=None, headers=None, validate_certs=True, ca_path=None,
                 client_cert=None, client_key=None, use_proxy=True, request_timeout=60, http_agent=None, opener=None):
        self.base_url = base_url(base_url_)
        self.api_key = api_key
        self.headers = dict(headers or {})
        self.validate_certs = validate_certs
        self.ca_path = ca_path
        self.client_cert = client_cert
        self.client_key = client_key
        self.use_proxy = use_proxy
        self.request_timeout = request_timeout
        self.http_agent = http_agent
        # tests patch open_url; keep a handle that can be swapped
        self._open = opener or open_url

    def url(self, path):
        return self.base_url + path

    def _headers(self, body):
        headers = {"Accept": "application/json"}
        headers.update(self.headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = "Bearer %s" % self.api_key
        return headers

    def open(self, method, path, body=None, timeout=None):
        """Send a request; return the open response. Raise EndpointError on any failure."""
        url = self.url(path)
        data = json.dumps(body).encode("utf-8") if body is not None else None
        try:
            return self._open(
                url,
                data=data,
                method=method,
                headers=self._headers(body),
                timeout=timeout or self.request_timeout,
                validate_certs=self.validate_certs,
                ca_path=self.ca_path,
                client_cert=self.client_cert,
                client_key=self.client_key,
                use_proxy=self.use_proxy,
                follow_redirects="safe",
                http_agent=self.http_agent,
            )
        except HTTPError as e:
            try:
                payload = e.read()
            except Exception:  # the body of an error is a courtesy
                payload = b""
            raise EndpointError("http", "HTTP %s from %s" % (e.code, url), status=e.code,
                                body=to_text(payload, errors="surrogate_or_replace"), url=url)
        except URLError as e:
            kind = _reason_kind(e.reason)
            raise EndpointError(kind, "%s (%s)" % (_KIND_TEXT[kind], self.scrub(to_native(e.reason))), url=url)
        except (socket.timeout, TimeoutError):
            raise EndpointError("timeout", "timed out after %ss" % (timeout or self.request_timeout), url=url)
        except ssl.SSLError as e:
            raise EndpointError("tls", "TLS error (%s)" % self.scrub(to_native(e)), url=url)
        except (ConnectionError, HTTPException, OSError) as e:
            kind = _reason_kind(e)
            raise EndpointError(kind, "%s (%s)" % (_KIND_TEXT[kind], self.scrub(to_native(e)) or type(e).__name__), url=url)
        except (ValueError, UnicodeError) as e:
            # http.client refuses a header value with a newline or a character outside Latin-1, quoting it
            raise EndpointError("protocol", "a request header cannot be sent (%s): %s" % (type(e).__name__, self.scrub(to_native(e))),
                                url=url)

    def scrub(self, text):
        """text without the API key or the values of extra headers that carry credentials."""
        return scrub(text, [self.api_key] + [to_text(v) for k, v in self.headers.items() if _CREDENTIAL_HEADER.search(k)])

    def request(self, method, path, body=None, timeout=None):
        """Send a request and return (status, text of the answer)."""
        response = self.open(method, path, body=body, timeout=timeout)
        try:
            raw = response.read()
        except (socket.timeout, TimeoutError):
            raise EndpointError("timeout", "timed out reading the answer of %s" % self.url(path), url=self.url(path))
        except (ConnectionError, HTTPException, OSError) as e:
            raise EndpointError("reset", "connection broken while reading %s (%s)" % (self.url(path), to_native(e) or type(e).__name__),
                                url=self.url(path))
        finally:
            _close(response)
        return getattr(response, "status", None) or response.getcode(), to_text(raw, errors="surrogate_or_replace")

    def request_json(self, method, path, body=None, timeout=None):
        """Send a request and return (status, parsed JSON or None, raw text)."""
        status, text = self.request(method, path, body=body, timeout=timeout)
        if not text.strip():
            return status, None, text
        try:
            return status, json.loads(text), text
        except ValueError:
            raise EndpointError("protocol", "%s answered with something that is not JSON: %r" % (self.url(path), text[:200]),
                                status=status, body=text, url=self.url(path))

    def stream_events(self, path, body, timeout=None):
        """POST body and yield (seconds since the request was sent, data string) per server-sent event."""
        started = time.monotonic()
        response = self.open("POST", path, body=body, timeout=timeout)
        try:
            while True:
                try:
                    line = response.readline()
                except (socket.timeout, TimeoutError):
                    raise EndpointError("timeout", "the stream from %s stalled for more than %ss" % (self.url(path), timeout or self.request_timeout),
                                        url=self.url(path))
                except (ConnectionError, HTTPException, OSError) as e:
                    raise EndpointError("reset", "the stream from %s broke off (%s)" % (self.url(path), to_native(e) or type(e).__name__),
                                        url=self.url(path))
                if not line:
                    return
                text = to_text(line, errors="surrogate_or_replace").strip()
                if text.startswith("data:"):
                    yield time.monotonic() - started, text[5:].strip()
        finally:
            # also when the caller stops reading early: a half-read stream must not keep the connection
            _close(response)


def _close(response):
    close = getattr(response, "close", None)
    if close:
        try:
            close()
        except Exception:  # closing is a courtesy; the answer is already read or abandoned
            pass

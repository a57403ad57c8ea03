"""Helpers of the gateway tests: HAProxy's statistics, OpenAI calls through the gateway, and the
bounded load of tests/load/openai_load.py."""

import csv
import io
import json
import os
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "tests", "load"))

from openai_load import Load  # noqa: E402,F401  (re-exported for the tests)

TEST_GATEWAY_KEY = "llmops-test-gateway-key"  # the fleet's gateway_api_key: not a secret, throwaway test hosts
# The fleet's gateway_stats_user / gateway_stats_password (inventories/local-fleet): the statistics page
# and HAProxy's Prometheus exporter answer 401 without them.
# The load under which the fleet's upgrades and partial runs must lose no request: paced, 2 requests a second
# with up to 8 in flight (tests/load/openai_load.py), so that the 2-core test machine keeps the CPU for the vLLM
# restarts the test watches, while requests keep arriving through every drain and restart. A closed loop of 4
# workers kept the CPU busy and made each restart several times slower (docs/testing.md).
PACED_LOAD = {"concurrency": 8, "rate": 2.0, "count": 100000, "seconds": 1800}
# The longest a paced load may go without starting a request: longer means every worker hung on a reply.
PACED_LOAD_MAX_GAP_S = 30

TEST_STATS_USER = "llmops-stats"
TEST_STATS_PASSWORD = "llmops-test-stats-password"


class Gateway(object):
    """The gateway as seen from the machine running the tests: its API and its statistics page."""

    def __init__(self, address, port=8080, stats_port=8404, key=TEST_GATEWAY_KEY,
                 stats_user=TEST_STATS_USER, stats_password=TEST_STATS_PASSWORD):
        self.address, self.port, self.stats_port, self.key = address, port, stats_port, key
        self.stats_user, self.stats_password = stats_user, stats_password

    def stats_get(self, path):
        """The body of a GET on the statistics frontend, with its user and password (HTTP basic auth)."""
        import base64

        token = base64.b64encode(("%s:%s" % (self.stats_user, self.stats_password)).encode()).decode()
        request = urllib.request.Request("http://%s:%d%s" % (self.address, self.stats_port, path),
                                         headers={"Authorization": "Basic " + token})
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.read().decode()

    @property
    def base_url(self):
        return "http://%s:%d/v1" % (self.address, self.port)

    def call(self, path, body=None, key=None, method=None):
        """(status, decoded JSON body) of one request to the gateway."""
        key = self.key if key is None else key
        request = urllib.request.Request(
            "http://%s:%d%s" % (self.address, self.port, path), method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers=dict([("Content-Type", "application/json")] + ([("Authorization", "Bearer " + key)] if key else [])))
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def chat(self, model, key=None, user=None, headers=None):
        body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}
        if user:
            body["user"] = user
        return self.call("/v1/chat/completions", body, key=key)

    def stats(self):
        """Rows of HAProxy's CSV statistics (pxname, svname, status, scur, stot, ...)."""
        text = self.stats_get("/stats;csv").lstrip("# ")
        return [row for row in csv.DictReader(io.StringIO(text)) if row.get("svname")]

    def servers(self):
        """{(backend, server): row} of the model backends' servers."""
        return dict(((r["pxname"], r["svname"]), r) for r in self.stats()
                    if r["pxname"].startswith("model") and r["svname"] not in ("FRONTEND", "BACKEND"))

    def backends(self):
        """{backend: [server, ...]}."""
        found = {}
        for backend, server in self.servers():
            found.setdefault(backend, []).append(server)
        return found

    def status(self, backend, server):
        return self.servers()[(backend, server)]["status"]

    def wait_status(self, backend, server, wanted, timeout):
        """Seconds until the server's status starts with wanted; AssertionError after timeout."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.status(backend, server).startswith(wanted):
                return time.monotonic() - start
            time.sleep(0.2)
        raise AssertionError("%s/%s is %s, not %s, after %ss" % (backend, server, self.status(backend, server),
                                                                 wanted, timeout))

    def metrics(self):
        return self.stats_get("/metrics")

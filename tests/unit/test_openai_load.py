"""The load generator of the fleet tests (tests/load/openai_load.py) against a stand-in of vLLM's chat endpoint on
loopback: every reply is read to its end, and a paced load (rate) starts its requests on schedule."""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "load"))
from openai_load import Load  # noqa: E402


class Chat(BaseHTTPRequestHandler):
    """A chat completion of max_tokens tokens after `delay` seconds, streamed or not; `cut` ends streams early."""

    delay = 0.0
    cut = False

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(self.delay)
        tokens = body["max_tokens"]
        usage = {"prompt_tokens": 7, "completion_tokens": tokens, "total_tokens": 7 + tokens}
        base = {"id": "x", "created": 0, "model": body["model"]}
        if not body.get("stream"):
            reply = dict(base, object="chat.completion", usage=usage, choices=[{
                "index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "one " * tokens}}])
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        chunks = [dict(base, object="chat.completion.chunk", choices=[{
            "index": 0, "delta": {"content": "one "}, "finish_reason": None}]) for _ in range(tokens)]
        if not self.cut:
            chunks.append(dict(base, object="chat.completion.chunk", choices=[{
                "index": 0, "delta": {}, "finish_reason": "length"}]))
            chunks.append(dict(base, object="chat.completion.chunk", choices=[], usage=usage))
        for chunk in chunks:
            self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        if not self.cut:
            self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture
def server():
    handler = type("ChatHandler", (Chat,), {})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield handler, "http://127.0.0.1:%d/v1" % httpd.server_address[1]
    httpd.shutdown()


def test_a_paced_load_starts_its_requests_on_schedule(server):
    handler, url = server
    handler.delay = 0.3  # slower than the pace: a closed loop of 4 workers would send about 13 a second
    load = Load(url, "k", ["m"], concurrency=4, count=1000, seconds=2.0, max_tokens=4, rate=5).start()
    summary = load.wait()
    assert summary["failed"] == 0, summary["failures"]
    # 5 a second for 2 s: requests 0 to 9 (10 would start at 2.0 s, when the load stops sending)
    assert summary["sent"] == 10, summary
    assert summary["max_gap_s"] <= 0.3, summary


def test_an_unpaced_load_sends_as_fast_as_its_workers_go(server):
    handler, url = server
    handler.delay = 0.05
    summary = Load(url, "k", ["m"], concurrency=4, count=1000, seconds=1.0, max_tokens=4).start().wait()
    assert summary["failed"] == 0, summary["failures"]
    assert summary["sent"] > 30, summary


def test_the_largest_gap_shows_a_load_that_stalled(server):
    handler, url = server
    handler.delay = 1.0  # every worker busy: the schedule slips
    summary = Load(url, "k", ["m"], concurrency=1, count=1000, seconds=1.5, max_tokens=4, rate=10).start().wait()
    assert summary["max_gap_s"] >= 0.9, summary


def test_a_stream_without_its_end_is_a_failure(server):
    handler, url = server
    handler.cut = True
    summary = Load(url, "k", ["m"], concurrency=1, count=2, seconds=10, max_tokens=4, stream_every=1).start().wait()
    assert summary["failed"] == 2, summary
    assert "without a finish_reason" in summary["failures"][0]


def test_a_stopped_paced_load_sends_nothing_more(server):
    handler, url = server
    load = Load(url, "k", ["m"], concurrency=2, count=1000, seconds=60, max_tokens=4, rate=1).start()
    time.sleep(1.5)
    summary = load.wait(stop=True)
    assert summary["sent"] <= 3, summary
    assert summary["failed"] == 0, summary["failures"]

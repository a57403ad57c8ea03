#!/usr/bin/env python3
"""A bounded load of real OpenAI-client requests: a fixed number of workers send streaming and
non-streaming chat completions, each read to its end (a finish_reason, and the usage of the whole reply,
streamed replies too) until COUNT requests were sent or SECONDS passed, then print what
was sent, what failed and the p50/p99 latency. With RATE, the requests start on a fixed schedule
(RATE a second, the workers the most in flight) instead of each worker sending its next at once: a
paced load leaves the test machine's CPU to what the test watches (a vLLM restart during an upgrade)
while requests keep arriving through all of it; the largest gap between two starts is in the summary. Only for the test hosts of this repository
(loopback or the llmops-test docker network).

    python3 tests/load/openai_load.py --base-url http://127.0.0.1:8080/v1 --api-key KEY \\
        --model tiny-chat --concurrency 8 --count 200 --seconds 120 [--rate 2] [--json out.json]
"""

import argparse
import json
import statistics
import sys
import threading
import time

import openai


def percentile(values, q):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100.0 * (len(ordered) - 1))))]


def check_usage(usage, finish_reason, max_tokens):
    """A whole reply's usage: tokens were read and written, and a reply cut by max_tokens wrote exactly that many."""
    if not usage.prompt_tokens or not usage.completion_tokens:
        raise RuntimeError("usage without tokens: %s" % usage)
    if usage.completion_tokens > max_tokens or (finish_reason == "length" and usage.completion_tokens != max_tokens):
        raise RuntimeError("finish_reason %s with %d completion tokens for max_tokens %d"
                           % (finish_reason, usage.completion_tokens, max_tokens))


class Load(object):
    """Runs the workers in threads; start() returns at once, wait() joins them and returns the summary."""

    def __init__(self, base_url, api_key, models, concurrency=4, count=100, seconds=60.0, max_tokens=16,
                 stream_every=2, timeout=120.0, rate=None):
        self.base_url, self.api_key, self.models = base_url, api_key, list(models)
        self.concurrency, self.count, self.seconds = concurrency, count, seconds
        self.max_tokens, self.stream_every, self.timeout = max_tokens, stream_every, timeout
        self.rate = rate
        self.lock = threading.Lock()
        self.sent = 0
        self.in_flight = 0
        self.latencies = []
        self.failures = []
        self.events = []  # (start, end, ok, model, stream)
        self.threads = []
        self.stop = threading.Event()
        self.started = None

    def _next(self):
        with self.lock:
            if self.stop.is_set() or self.sent >= self.count or time.monotonic() - self.started > self.seconds:
                return None
            if self.rate and self.sent / float(self.rate) >= self.seconds:
                return None  # its start would come after the load's end
            number = self.sent
            self.sent += 1
            self.in_flight += 1
        if self.rate:
            # request N starts N/RATE seconds after the start, or as soon as a worker is free when all were busy
            delay = self.started + number / float(self.rate) - time.monotonic()
            if delay > 0 and self.stop.wait(delay):
                with self.lock:  # stopped while it waited: not sent
                    self.sent -= 1
                    self.in_flight -= 1
                return None
        return number

    def _one(self, client, number):
        model = self.models[number % len(self.models)]
        stream = self.stream_every > 0 and number % self.stream_every == 0
        messages = [{"role": "user", "content": "Count to five, request %d." % number}]
        if stream:
            # include_usage: vLLM sends one last chunk with the usage of the whole reply
            chunks = client.chat.completions.create(model=model, messages=messages, max_tokens=self.max_tokens,
                                                    stream=True, stream_options={"include_usage": True})
            received = 0
            finish_reason, usage = None, None
            for chunk in chunks:
                received += 1
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish_reason = chunk.choices[0].finish_reason
                if chunk.usage is not None:
                    usage = chunk.usage
            if finish_reason is None:
                raise RuntimeError("the stream ended without a finish_reason after %d chunks" % received)
            if usage is None:
                raise RuntimeError("the stream ended without its usage chunk after %d chunks" % received)
        else:
            reply = client.chat.completions.create(model=model, messages=messages, max_tokens=self.max_tokens)
            if not reply.choices or reply.choices[0].finish_reason is None:
                raise RuntimeError("a reply without a finished choice")
            finish_reason, usage = reply.choices[0].finish_reason, reply.usage
            if usage is None:
                raise RuntimeError("a reply without usage")
        check_usage(usage, finish_reason, self.max_tokens)
        return model, stream

    def _worker(self):
        client = openai.OpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0, timeout=self.timeout)
        while True:
            number = self._next()
            if number is None:
                return
            start = time.monotonic()
            ok, error, model, stream = True, None, self.models[number % len(self.models)], None
            try:
                model, stream = self._one(client, number)
            except Exception as exc:  # every failure counts, whatever raised it
                ok, error = False, "%s: %s" % (type(exc).__name__, str(exc)[:200])
            end = time.monotonic()
            with self.lock:
                self.in_flight -= 1
                self.events.append((start - self.started, end - self.started, ok, model, stream))
                if ok:
                    self.latencies.append(end - start)
                else:
                    self.failures.append(error)

    def start(self):
        self.started = time.monotonic()
        self.threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(self.concurrency)]
        for thread in self.threads:
            thread.start()
        return self

    def wait(self, stop=False):
        if stop:
            self.stop.set()
        for thread in self.threads:
            thread.join(self.seconds + self.timeout + 10)
        return self.summary()

    def max_gap(self):
        """The longest time, in seconds, between two request starts (and from the load's start to the first)."""
        starts = sorted([0.0] + [event[0] for event in self.events])
        return max([b - a for a, b in zip(starts, starts[1:])] or [0.0])

    def summary(self):
        with self.lock:
            elapsed = time.monotonic() - self.started
            return {"sent": self.sent, "failed": len(self.failures), "ok": len(self.latencies),
                    "p50_s": percentile(self.latencies, 50), "p99_s": percentile(self.latencies, 99),
                    "seconds": round(elapsed, 2), "requests_per_s": round(len(self.latencies) / elapsed, 3) if elapsed else 0,
                    "max_gap_s": round(self.max_gap(), 2), "failures": self.failures[:20]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", required=True, help="OpenAI base URL, e.g. http://127.0.0.1:8080/v1")
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--model", action="append", required=True, help="served model name (repeat for several)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--count", type=int, default=100, help="requests to send at most")
    parser.add_argument("--seconds", type=float, default=60.0, help="stop sending after this long")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--stream-every", type=int, default=2, help="every Nth request streams (0: none)")
    parser.add_argument("--rate", type=float, help="start this many requests a second (default: each worker at once)")
    parser.add_argument("--json", help="also write the summary to this file")
    args = parser.parse_args(argv)
    load = Load(args.base_url, args.api_key, args.model, args.concurrency, args.count, args.seconds,
                args.max_tokens, args.stream_every, rate=args.rate).start()
    summary = load.wait()
    p50 = "%.3f s" % summary["p50_s"] if summary["p50_s"] is not None else "-"
    p99 = "%.3f s" % summary["p99_s"] if summary["p99_s"] is not None else "-"
    print("sent %d, failed %d, p50 %s, p99 %s, %.2f requests/s over %.1f s" % (
        summary["sent"], summary["failed"], p50, p99, summary["requests_per_s"], summary["seconds"]))
    for failure in summary["failures"]:
        print("  failure: %s" % failure)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""A light load generator for benchmarks/gateway.py: CONCURRENCY keep-alive HTTP/1.1 connections in
one asyncio thread, each sending non-streaming chat completions one after the other, COUNT requests
in all. It costs the client a small fraction of the CPU that the `openai` client's threads cost,
so on a small machine the load generator takes less of the core the gateway runs on. A reply counts
as ok only with status 200 and a body holding a finished choice, as the openai client's mode checks.
Only for loopback test servers.
"""

import asyncio
import json
import time
from urllib.parse import urlsplit

from openai_load import percentile


async def _read_reply(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict((k.strip().lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line))
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            parts.append(chunk[:-2])
        body = b"".join(parts)
    else:
        raise RuntimeError("a reply without a length")
    return status, headers, body


async def _worker(state, host, port, path, api_key, model, max_tokens):
    reader = writer = None
    while True:
        if state["sent"] >= state["count"]:
            break
        number = state["sent"]
        state["sent"] += 1
        body = json.dumps({"model": model, "max_tokens": max_tokens,
                           "messages": [{"role": "user", "content": "Count to five, request %d." % number}]}).encode()
        request = ("POST %s HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n"
                   "Content-Length: %d\r\n\r\n" % (path, host, port, api_key, len(body))).encode() + body
        start = time.monotonic()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            status, headers, reply = await _read_reply(reader)
            if status != 200:
                raise RuntimeError("HTTP %d: %s" % (status, reply[:200]))
            choices = json.loads(reply).get("choices") or []
            if not choices or choices[0].get("finish_reason") is None:
                raise RuntimeError("a reply without a finished choice")
            state["latencies"].append(time.monotonic() - start)
            if headers.get("connection", "").lower() == "close":
                writer.close()
                reader = writer = None
        except Exception as exc:  # every failure counts
            state["failures"].append("%s: %s" % (type(exc).__name__, str(exc)[:200]))
            if writer is not None:
                writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


def run(base_url, api_key, model, concurrency=4, count=60, max_tokens=8):
    """Returns the same summary as tests/load/openai_load.py's Load.wait()."""
    url = urlsplit(base_url)
    path = url.path.rstrip("/") + "/chat/completions"
    state = {"sent": 0, "count": count, "latencies": [], "failures": []}

    async def main():
        await asyncio.gather(*[_worker(state, url.hostname, url.port, path, api_key, model, max_tokens)
                               for _ in range(concurrency)])

    started = time.monotonic()
    asyncio.run(main())
    elapsed = time.monotonic() - started
    return {"sent": state["sent"], "failed": len(state["failures"]), "ok": len(state["latencies"]),
            "p50_s": percentile(state["latencies"], 50), "p99_s": percentile(state["latencies"], 99),
            "seconds": round(elapsed, 2), "requests_per_s": round(len(state["latencies"]) / elapsed, 3),
            "failures": state["failures"][:20]}

#!/usr/bin/env python3
"""A merchant's webhook endpoint for the demo: HTTPS, verifies every posflow signature exactly as
docs/notifier.md tells merchants to, de-duplicates on the idempotency key, and keeps counts in a
JSON file. Standard library only.

    webhook-receiver.py --port 19466 --cert server.crt --key server.key --stats stats.json
    (secrets: POSFLOW_DEMO_WEBHOOK_SECRET, one for every merchant of the demo)
"""
import argparse
import hashlib
import hmac
import json
import os
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_SECS = 300


def verify(secret: bytes, header: str, body: bytes, now: float) -> bool:
    """The snippet in docs/notifier.md: HMAC-SHA256 over "<t>." + body, constant-time compare,
    a timestamp no older than five minutes (a replayed request is refused), any v1 matching (two
    during a secret rotation)."""
    try:
        parts = [p.split("=", 1) for p in header.split(",")]
        t = int(next(v for k, v in parts if k == "t"))
        expected = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
        return abs(now - t) <= TOLERANCE_SECS and any(
            hmac.compare_digest(expected, v) for k, v in parts if k == "v1")
    except (StopIteration, ValueError):
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--stats", required=True)
    args = ap.parse_args()
    secret = os.environ["POSFLOW_DEMO_WEBHOOK_SECRET"].encode()
    lock = threading.Lock()
    stats = {"requests": 0, "bad_signatures": 0, "events": {}, "keys": set()}

    def save():
        out = dict(stats, keys=len(stats["keys"]))
        tmp = args.stats + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f)
        os.replace(tmp, args.stats)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            ok = verify(secret, self.headers.get("posflow-signature", ""), body, time.time())
            with lock:
                stats["requests"] += 1
                if not ok:
                    stats["bad_signatures"] += 1
                else:
                    key = self.headers.get("idempotency-key", "")
                    if key not in stats["keys"]:  # a repeat is acknowledged, not counted twice
                        stats["keys"].add(key)
                        kind = self.headers.get("posflow-event-type", "?")
                        stats["events"][kind] = stats["events"].get(kind, 0) + 1
                save()
            self.send_response(200 if ok else 401)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    save()
    server.serve_forever()


if __name__ == "__main__":
    main()

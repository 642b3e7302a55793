#!/usr/bin/env python3
"""Demo central policy service for `make run`: OPA's data API with one fixed policy.

tokengate's `authz_service` POSTs the OPA-Envoy input to OPA's data API and reads the
decision back. This server answers that API the way OPA would for one document,
`demo/authz`, with a policy written in Python instead of Rego (the end-to-end tests use a
real Rego engine; the filter can't tell the difference):

    POST /v1/data/demo/authz   {"input": {"attributes": {"request": {"http": {"method", "path",
                                "host", "headers"}}}, "parsed_path": [...],
                                "parsed_query": {...}, "identity": {"provider", "claims"}}}
                               -> {"result": {"allowed": bool, "headers": {...}}}
                               (the OPA-Envoy plugin's decision object)
    POST /v1/data/<other>      {} -- an undefined document, as OPA answers (tokengate treats
                               it as an error, never as an allow)
    GET  /v1/stats             {"requests": N, "decisions": {"allow": N, "deny": N}} -- for
                               tests: how many decisions were asked for (not counted)
    GET  /v1/last              the last input received, as sent: what a policy sees
                               (not counted)
    GET  /health               200 {} (not counted)

The policy, the equivalent of this Rego (v1):

    package demo.authz
    default allowed := false
    method := input.attributes.request.http.method
    allowed if { input.identity.claims.sub; method in {"GET", "HEAD"} }
    allowed if { input.identity.claims.sub; method in {"POST", "PUT", "PATCH"}
                 "write" in split(input.identity.claims.scope, " ") }
    # DELETE, and anything else: never allowed.
    headers := {"x-policy": sprintf("demo/authz: %s", [reason])}   # reason: see decide()

On allow, `headers` (x-policy) go upstream; on deny, tokengate answers 403 with
`error="insufficient_scope"` and sends `headers` (x-policy) to the client. Python standard
library only; listens on 127.0.0.1 only.

    python3 envoy/demo/policy.py --port 8181
"""

import argparse
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DATA_PREFIX = "/v1/data/"
POLICY = "demo/authz"
MAX_BODY = 65536


def decide(doc):
    """The decision for an input document: (allowed, reason)."""
    inp = doc.get("input") if isinstance(doc, dict) else None
    if not isinstance(inp, dict):
        return False, "no input"
    http = ((inp.get("attributes") or {}).get("request") or {}).get("http") or {}
    method = http.get("method", "")
    identity = inp.get("identity") or {}
    claims = identity.get("claims") or {}
    subject = claims.get("sub")
    scope = claims.get("scope")
    words = scope.split() if isinstance(scope, str) else []
    if not isinstance(subject, str) or not subject:
        return False, "no subject"
    if method in ("GET", "HEAD"):
        return True, f"{method} is allowed for any subject"
    if method in ("POST", "PUT", "PATCH"):
        if "write" in words:
            return True, f"{method} is allowed with scope write"
        return False, f"{method} needs scope write"
    return False, f"{method or 'this method'} is never allowed"


class Policy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive with Envoy; every answer has Content-Length
    server_version = "tokengate-demo-policy"
    sys_version = ""

    lock = threading.Lock()
    requests = 0
    decisions = {"allow": 0, "deny": 0}
    last_input = None

    def version_string(self):
        return self.server_version

    def send_json(self, status, doc):
        body = json.dumps(doc, indent=2).encode() + b"\n"
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("cache-control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self.send_json(200, {})
        elif path == "/v1/stats":
            with self.lock:
                doc = {"requests": Policy.requests, "decisions": dict(Policy.decisions)}
            self.send_json(200, doc)
        elif path == "/v1/last":
            with self.lock:
                doc = Policy.last_input
            self.send_json(200, doc if doc is not None else {})
        else:
            self.send_json(404, {"code": "resource_not_found", "message": "not found"})

    do_HEAD = do_GET

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        try:
            length = int(self.headers.get("content-length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            self.send_json(400, {"code": "invalid_parameter", "message": "bad body length"})
            return
        body = self.rfile.read(length) if length else b""
        if not path.startswith(DATA_PREFIX):
            self.send_json(404, {"code": "resource_not_found", "message": "not found"})
            return
        try:
            doc = json.loads(body or b"{}")
        except ValueError:
            self.send_json(400, {"code": "invalid_parameter", "message": "body is not JSON"})
            return
        if path[len(DATA_PREFIX):].strip("/") != POLICY:
            self.send_json(200, {})  # an undefined document: OPA answers {} (no "result")
            return
        allowed, reason = decide(doc)
        headers = {"x-policy": f"{POLICY}: {'allow' if allowed else 'deny'} ({reason})"}
        with self.lock:
            Policy.requests += 1
            Policy.decisions["allow" if allowed else "deny"] += 1
            Policy.last_input = doc
        print(f"policy.py: {headers['x-policy']}", flush=True)
        self.send_json(200, {"result": {"allowed": allowed, "headers": headers}})

    def log_message(self, format, *args):  # quiet: one line per decision, printed above
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8181, help="port (default 8181, OPA's)")
    args = parser.parse_args()

    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    try:
        server = ThreadingHTTPServer((args.host, args.port), Policy)
    except OSError as e:
        sys.exit(f"policy.py: cannot listen on {args.host}:{args.port}: {e}")

    # Exit quietly (status 0) on SIGTERM as well as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"policy.py: OPA data API on http://{args.host}:{args.port}{DATA_PREFIX}{POLICY}",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Demo identity provider for `make run`: OIDC discovery and a JWKS, nothing else.

    GET /demo/.well-known/openid-configuration
        {"issuer": "http://127.0.0.1:<port>/demo",
         "jwks_uri": "http://127.0.0.1:<port>/demo/jwks.json", ...}
    GET /demo/jwks.json   the JWKS file named on the command line, re-read on every
                          request (rewrite the file to rotate keys), with
                          cache-control: max-age=300
    GET /demo/stats       {"requests": {"<path>": count, ...}} -- for tests: how many
                          times each path was asked for (this path itself not counted)
    anything else         404

tokengate fetches the discovery document through the Envoy cluster "demo_idp", checks
that its "issuer" is exactly the provider's issuer, then fetches "jwks_uri". It does not
issue tokens: the demo mints them with `tokengate token` and the private keys next to the
JWKS file. Python standard library only; listens on 127.0.0.1 only.

    python3 envoy/demo/idp.py --port 9000 .run/jwks.json
"""

import argparse
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PREFIX = "/demo"
DISCOVERY_PATH = PREFIX + "/.well-known/openid-configuration"
JWKS_PATH = PREFIX + "/jwks.json"
STATS_PATH = PREFIX + "/stats"
# The algorithms of the demo keys (envoy/demo/render.sh: DEMO_KIDS).
SIGNING_ALGS = ["RS256", "EdDSA"]
MAX_COUNTED = 100


class Idp(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive with Envoy; every answer has Content-Length
    server_version = "tokengate-demo-idp"
    sys_version = ""

    def version_string(self):
        return self.server_version

    # Set by main().
    base_url = ""
    jwks_file = ""
    counts = {}
    lock = threading.Lock()

    def send_json(self, status, doc, extra_headers=()):
        body = json.dumps(doc, indent=2).encode() + b"\n"
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        for name, value in extra_headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path != STATS_PATH:
            # Bounded: past MAX_COUNTED distinct paths, new ones are counted as "(other)".
            key = path if path in self.counts or len(self.counts) < MAX_COUNTED else "(other)"
            with self.lock:
                self.counts[key] = self.counts.get(key, 0) + 1

        if path == DISCOVERY_PATH:
            self.send_json(
                200,
                {
                    "issuer": self.base_url,
                    "jwks_uri": self.base_url + "/jwks.json",
                    "id_token_signing_alg_values_supported": SIGNING_ALGS,
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                },
                [("cache-control", "max-age=300")],
            )
        elif path == JWKS_PATH:
            try:
                with open(self.jwks_file, "rb") as f:
                    body = f.read()
                json.loads(body)  # never serve a half-written file as if it were a JWKS
            except (OSError, ValueError) as e:
                sys.stderr.write(f"idp.py: cannot serve {self.jwks_file}: {e}\n")
                self.send_json(503, {"error": "jwks unavailable"})
                return
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.send_header("cache-control", "max-age=300")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        elif path == STATS_PATH:
            with self.lock:
                counts = dict(self.counts)
            self.send_json(200, {"requests": counts}, [("cache-control", "no-store")])
        else:
            self.send_json(404, {"error": "not found"})

    do_HEAD = do_GET

    def log_message(self, format, *args):  # quiet: no line per request
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jwks", help="the JWKS file to serve at /demo/jwks.json")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9000, help="port (default 9000)")
    args = parser.parse_args()

    Idp.base_url = f"http://{args.host}:{args.port}{PREFIX}"
    Idp.jwks_file = args.jwks

    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    try:
        server = ThreadingHTTPServer((args.host, args.port), Idp)
    except OSError as e:
        sys.exit(f"idp.py: cannot listen on {args.host}:{args.port}: {e}")

    # Exit quietly (status 0) on SIGTERM as well as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"idp.py: issuer {Idp.base_url}, serving {args.jwks}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Demo upstream for `make run`: answers every request with 200 and a JSON echo of it.

    {"method": "GET", "path": "/api/orders?page=2",
     "identity": {"x-user-id": ..., "x-user-scope": ..., "x-user-roles": ...,
                  "x-jwt-payload": "<base64url>", "x-jwt-payload-decoded": {...claims...},
                  "bearer-jwt-decoded": {"header": {...}, "claims": {...}}},
     "headers": {...every request header, lower-case names...}}

It shows what reaches a service behind tokengate: the identity headers the filter set, and
that the token itself (authorization header, access_token cookie or query parameter) was
removed. For the exchanges (opaque token or session in, JWT out), "bearer-jwt-decoded" is
the header and claims of the JWT the filter put in `authorization: Bearer ...` (decoded,
not verified: it is for looking at). Python standard library only; listens on 127.0.0.1 only.

    python3 envoy/demo/echo.py --port 8000
"""

import argparse
import base64
import binascii
import json
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

IDENTITY_HEADERS = ("x-user-id", "x-user-scope", "x-user-roles", "x-jwt-payload")


def decode_payload(value):
    """base64url (no padding) JSON -> object; None if it is not that."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        return json.loads(raw)
    except (binascii.Error, ValueError):
        return None


def decode_bearer_jwt(authorization):
    """`Bearer <JWT>` -> {"header": ..., "claims": ...}; None for anything else."""
    scheme, _, token = (authorization or "").partition(" ")
    parts = token.strip().split(".")
    if scheme.lower() != "bearer" or len(parts) != 3:
        return None
    header, claims = decode_payload(parts[0]), decode_payload(parts[1])
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return None
    return {"header": header, "claims": claims}


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive with Envoy; every answer has Content-Length
    server_version = "tokengate-demo-echo"
    sys_version = ""

    def handle_any(self):
        length = int(self.headers.get("content-length") or 0)
        if length > 0:
            self.rfile.read(length)  # drain the body so the connection can be reused

        headers = {}
        for name, value in self.headers.items():
            name = name.lower()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value

        identity = {name: headers.get(name) for name in IDENTITY_HEADERS}
        payload = headers.get("x-jwt-payload")
        identity["x-jwt-payload-decoded"] = decode_payload(payload) if payload else None
        identity["bearer-jwt-decoded"] = decode_bearer_jwt(headers.get("authorization"))

        body = json.dumps(
            {"method": self.command, "path": self.path, "identity": identity, "headers": headers},
            indent=2,
        ).encode() + b"\n"
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any

    def log_message(self, format, *args):  # quiet: no line per request
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    args = parser.parse_args()

    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    try:
        server = ThreadingHTTPServer((args.host, args.port), Echo)
    except OSError as e:
        sys.exit(f"echo.py: cannot listen on {args.host}:{args.port}: {e}")

    # Exit quietly (status 0) on SIGTERM as well as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"echo.py: listening on http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()

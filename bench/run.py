#!/usr/bin/env python3
"""tokengate benchmark harness (`make bench`). Python 3 standard library only.

One Envoy (--concurrency 1, pinned to one CPU when `taskset` exists) with one listener per
variant, every route a `direct_response` 200, so what is measured is the HTTP filter
chain and nothing upstream. wrk (pinned to another CPU) drives each listener in turn with
the same load, variants interleaved, in rounds (the order reversed every other round so a
drift in the machine's load does not favour one end of the list). Then: Envoy start to
first answer with and without the filter, the module's size raw and after wasm-opt, and
the memory left after floods of unique tokens once the caches are full.

It is a benchmark, not a test: a missed target is reported, never an error. It exits
non-zero only when it could not measure (a tool missing, Envoy not starting, a listener
answering with the wrong status, which would make its numbers meaningless).

Variants, for each of RS256, ES256 and EdDSA (keys and tokens made by the tokengate CLI,
kept in bench/.work and reused while they have a day left):
  passthrough       no HTTP filter but the router
  floor             bench/floor: a Wasm filter that reads one header and continues
  native            envoy.filters.http.jwt_authn, no jwt_cache_config, unique tokens
  native-cache      jwt_authn with jwt_cache_config, one token repeated
  tg-cached         tokengate, one token repeated (its cache answers)
  tg-cached-keep    the same with forward.keep_token: no header edit at all (each edit of
                    request headers by a Wasm filter clears Envoy's route cache)
  tg-cached-fwd     tokengate with a realistic provider: forward.claims `sub` -> x-user-id,
                    `scope` -> x-user-scope, `realm_access.roles` -> x-user-roles and
                    forward.payload_header x-jwt-payload; one token (carrying the roles)
                    repeated: judged against floor (>= 0.95x) and native-cache-fwd
  native-cache-fwd  jwt_authn + jwt_cache_config forwarding the same (claim_to_headers for
                    the three claims, forward_payload_header), the same token repeated
  tg-cold           tokengate, unique tokens cycling, more than its cache holds
  native-badsig     jwt_authn, tokens signed by another key with the same kid (401)
  tg-badsig         tokengate, the same bad tokens (401)
And two more next to EdDSA's tg-cached, which they are judged against (≥ 0.9×):
  tg-exchange-hit   tokengate with an `introspection` exchange, one opaque token repeated
                    (its exchange cache answers); the introspection endpoint is a stdlib
                    server in this process on 127.0.0.1, reached through an Envoy cluster
                    `auth`, that counts the callouts (about one per VM: the first request)
  tg-minted-hit     the same exchange with `mint` (EdDSA, a key from `tokengate keygen`):
                    a cached hit also sets the minted JWT in `x-internal-jwt`
And two authorization rows next to EdDSA's tg-cached, the same provider and token:
  tg-authz-3        a rule whose `authz` is three conditions that hold (a scope word, a
                    `sub` prefix, the `x-tenant` header every variant sends): ≥ 0.95×
  tg-central-hit    the same rule with `central: true`: the policy service (a stdlib
                    server in this process answering OPA's `POST /v1/data/...` with
                    `{"result": true}`, through an Envoy cluster `opa`) is asked about once
                    per VM, then the decision cache (`cache_secs` 3600) answers: ≥ 0.9×

And one revocation row next to EdDSA's tg-cached, the same provider and key:
  tg-status-hit     the provider with `revocation.status_list`, one cached token carrying
                    `status.status_list` (index 3 of a 1-bit list, VALID): every request looks
                    its entry up in the VM's fresh copy of the list; the list (a Status List
                    Token minted by the CLI, ttl 3600 s) is served by a stdlib server in this
                    process through an Envoy cluster `lists` and fetched about once: ≥ 0.95×

Settings (environment): BENCH_DURATION (s, 5), BENCH_CONNECTIONS (16), BENCH_THREADS
(wrk threads, 1), BENCH_ROUNDS (2), BENCH_WARMUP (s per variant before round 1, 1),
BENCH_COLD_TOKENS (unique valid tokens per algorithm, 12000), BENCH_BAD_TOKENS (2000),
BENCH_ONLY (regular expression on variant names, to run a subset), BENCH_ENVOY_CPU (0),
BENCH_LOAD_CPU (1), BENCH_STARTUP_RUNS (3), BENCH_MEMORY_FLOODS (2), BENCH_OUT
(bench/results/latest.md; a .json with the raw numbers is written beside it), ENVOY,
TOKENGATE_CLI, TOKENGATE_WASM, WASM_OPT.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import datetime
import hashlib
import http.client
import http.server
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATUS_LIST_FILE: Path | None = None  # set by main: the revocation row's list token
BENCH = ROOT / "bench"
WORK = BENCH / ".work"
LUA = BENCH / "tokens.lua"
FLOOR_DIR = BENCH / "floor"
FLOOR_WASM = FLOOR_DIR / "target" / "wasm32-wasip1" / "release" / "tokengate_bench_floor.wasm"


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        sys.exit(f"bench: {name}={value!r} is not an integer")


DURATION = env_int("BENCH_DURATION", 5)
CONNECTIONS = env_int("BENCH_CONNECTIONS", 16)
THREADS = env_int("BENCH_THREADS", 1)
ROUNDS = env_int("BENCH_ROUNDS", 2)
WARMUP = env_int("BENCH_WARMUP", 1)
# The filter keeps 4096 verified tokens per worker and evicts the oldest first, so a list
# cycling through more tokens than that should (almost) never hit; the run reports the
# hit rate it saw (warm-up and wrk's connection start can still give a few hits).
COLD_TOKENS = env_int("BENCH_COLD_TOKENS", 12000)
BAD_TOKENS = env_int("BENCH_BAD_TOKENS", 2000)
ONLY = os.environ.get("BENCH_ONLY", "")
ENVOY_CPU = os.environ.get("BENCH_ENVOY_CPU", "0")
LOAD_CPU = os.environ.get("BENCH_LOAD_CPU", "1")
STARTUP_RUNS = env_int("BENCH_STARTUP_RUNS", 3)
MEMORY_FLOODS = env_int("BENCH_MEMORY_FLOODS", 2)
OUT = Path(os.environ.get("BENCH_OUT", str(BENCH / "results" / "latest.md")))
CLI = Path(os.environ.get("TOKENGATE_CLI", str(ROOT / "target" / "release" / "tokengate")))
WASM = Path(os.environ.get("TOKENGATE_WASM", str(ROOT / "dist" / "tokengate.wasm")))
WASM_OPT = os.environ.get("WASM_OPT") or "wasm-opt"
WASM_OPT_FLAGS = [
    "-Oz", "--strip-debug", "--enable-bulk-memory", "--enable-sign-ext",
    "--enable-nontrapping-float-to-int", "--enable-mutable-globals", "--enable-multivalue",
    "--enable-reference-types", "--enable-extended-const",
]

ALGS = ["RS256", "ES256", "EdDSA"]
ISSUER = "https://idp.bench.example/realms/bench"
AUDIENCE = "bench-api"
TOKEN_LIFETIME_S = 7 * 86400
# Tokens are reused across runs while they have at least this long left.
TOKEN_MIN_LEFT_S = 86400
FILTER_CACHE_ENTRIES = 4096  # src/token/cache.rs DEFAULT_MAX_ENTRIES, for the report
NATIVE_CACHE_SIZE = 10000

# Exchanges (README "Gateway-centric and session patterns"): the variant kind, the name of
# its exchange (one per listener, so each has its own shared-data slots and its own
# `wasmcustom.tokengate.exchange.<name>.*` counters) and the client id it introspects as.
# Their provider is the one the EXCHANGE_ALG JWT variants use (same issuer, audiences and
# `forward`: none), and their rows are judged against that algorithm's tg-cached row.
EXCHANGES = {"tg-exchange-hit": "introspect", "tg-minted-hit": "minted"}
EXCHANGE_ALG = "EdDSA"
EXCHANGE_SECRET = "bench-secret"
EXCHANGE_CACHE_SECS = 3600  # cache.max_secs: the whole run is hits after the first request
INTROSPECT_PATH = "/introspect"
OPAQUE_SUB = "opaque-000000"
MINT_KID = "gw"
MINT_ISSUER = "https://gateway.bench.internal"
MINT_AUDIENCE = "bench-internal"
MINT_HEADER = "x-internal-jwt"

# Authorization (README "Authorization"): a rule with three `authz` conditions that hold
# for the cached token (its `scope` and `sub` are minted above; TENANT_HEADER is sent
# with every request of every variant by bench/tokens.lua), and the same rule with
# `central: true` asking the harness's policy server, whose decisions are cached for the
# whole run. Their provider is the AUTHZ_ALG JWT variants' and their rows are judged
# against that algorithm's tg-cached row. Kind -> the rule's name (its own
# `wasmcustom.tokengate.rule.<name>.*` counters).
AUTHZ = {"tg-authz-3": "authz3", "tg-central-hit": "central"}
AUTHZ_ALG = "EdDSA"
TENANT_HEADER, TENANT = "x-tenant", "acme"  # as bench/tokens.lua sends it
AUTHZ_TREE = {"all": [
    {"claim": "scope", "contains": "orders:read"},
    {"claim": "sub", "prefix": "cached-"},
    {"header": TENANT_HEADER, "equals": TENANT},
]}
POLICY_PATH = "/v1/data/envoy/authz/allow"
POLICY_CACHE_SECS = 3600  # authz_service.cache_secs (the most it takes): the whole run

# Forwarding (issue 12, "a realistic provider"): three claims, each a different shape (a
# string, a space-separated scope, an array nested in an object, as Keycloak puts realm
# roles), and the whole payload. tokengate's `forward` and jwt_authn's `claim_to_headers` +
# `forward_payload_header` name the same headers. The token of these rows ("fwd") carries
# the roles too; every other variant keeps its own tokens, unchanged.
FORWARD_CLAIMS = {"sub": "x-user-id", "scope": "x-user-scope",
                  "realm_access.roles": "x-user-roles"}
FORWARD_PAYLOAD_HEADER = "x-jwt-payload"
FORWARD_ROLES = ["offline_access", "uma_authorization", "orders-reader"]
# Extra claims minted into a kind of token (NAME=VALUE for `tokengate token --claim`, VALUE
# JSON); the manifest remembers them, so tokens minted with other claims are minted again.
TOKEN_CLAIMS = {"fwd": [f"realm_access.roles={json.dumps(FORWARD_ROLES)}"]}
# A route only the sanity check asks for (wrk always asks for /), on the forwarding
# listeners only: its answer echoes the request headers the filter left, as x-seen-<name>.
FORWARD_CHECK_PATH = "/_bench/forwarded"

# Targets (the issue's). Ratios are of mean req/s.
TARGET_CACHED_VS_FLOOR = 0.95  # with and without forwarding
TARGET_COLD_VS_NATIVE = {"RS256": 0.5, "ES256": 0.3, "EdDSA": 1.0}
TARGET_BAD_VS_NATIVE = {"RS256": 0.5, "EdDSA": 0.5}
TARGET_EXCHANGE_VS_CACHED = 0.9  # an exchange cache hit vs a cached JWT (tg-cached)
TARGET_AUTHZ_VS_CACHED = {"tg-authz-3": 0.95, "tg-central-hit": 0.9}  # vs tg-cached
# The revocation row (issue 14): a cached JWT whose status list entry is looked up on every
# request, vs the same provider's cached JWT without revocation.
STATUS_ALG = "EdDSA"
STATUS_ORIGIN = "http://statuslists.bench"
STATUS_URI = STATUS_ORIGIN + "/lists/1"
TARGET_STATUS_VS_CACHED = 0.95
TARGET_OPT_BYTES = 500 * 1000  # "500 KB", read strictly as 500,000 bytes
TARGET_START_FACTOR, TARGET_START_EXTRA_MS = 2.0, 500.0
# "Flat": after the caches are full, further floods of unique tokens grow the wasm VMs'
# resident memory by at most this much (Envoy's whole RSS is shown beside it).
TARGET_FLAT_BYTES = 1 << 20


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def die(message: str) -> None:
    log(f"error: {message}")
    raise SystemExit(1)


# --- processes ----------------------------------------------------------------------------

HAVE_TASKSET = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pinned(cpu: str, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", cpu] + cmd if HAVE_TASKSET else cmd


STARTED: list[subprocess.Popen] = []


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    if proc in STARTED:
        STARTED.remove(proc)


def stop_all() -> None:
    for proc in list(STARTED):
        stop(proc)
    for server in list(SERVERS):
        server.stop()


def on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def free_ports(count: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def http_get(port: int, path: str = "/", headers: dict | None = None, timeout: float = 5.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --- the introspection endpoint -----------------------------------------------------------

SERVERS: list = []  # the stdlib servers running (Introspection, Policy)
AUTH: "Introspection | None" = None  # the main run's, while it runs
POLICY: "Policy | None" = None  # the main run's, while it runs


class Introspection:
    """RFC 7662 introspection for the exchange variants, on 127.0.0.1 in a thread of this
    process (it answers a handful of callouts a run, so it needs no CPU of its own).

    POST /introspect with HTTP Basic client credentials (each exchange has its own client
    id) and form `token=`: the one opaque token of the run is active, as OPAQUE_SUB of the
    provider's issuer, for an hour; any other token is `{"active": false}`; wrong
    credentials 401 `invalid_client`. Counts the introspections per client id."""

    def __init__(self, token: str, clients: list[str]):
        self.token, self.clients = token, set(clients)
        self.counts: collections.Counter = collections.Counter()
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive with Envoy; every answer has a length

            def log_message(self, *_args):
                pass

            def answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("cache-control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self.answer(404, {"error": "not_found"})

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                if length > 65536:
                    self.close_connection = True
                    self.answer(413, {"error": "too_large"})
                    return
                form = urllib.parse.parse_qs(self.rfile.read(length).decode(errors="replace"))
                if self.path != INTROSPECT_PATH:
                    self.answer(404, {"error": "not_found"})
                    return
                client = outer.client_of(self.headers.get("authorization") or "")
                with outer.lock:
                    outer.counts[client or "(refused)"] += 1
                if client is None:
                    self.answer(401, {"error": "invalid_client"})
                    return
                if form.get("token") != [outer.token]:
                    self.answer(200, {"active": False})
                    return
                now = int(time.time())
                self.answer(200, {
                    "active": True, "sub": OPAQUE_SUB, "iss": ISSUER, "aud": AUDIENCE,
                    "scope": "orders:read orders:write", "client_id": client,
                    "token_type": "Bearer", "iat": now, "exp": now + 3600,
                })

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.2}, daemon=True)
        self.thread.start()
        SERVERS.append(self)

    def client_of(self, authorization: str) -> str | None:
        """The client id of valid HTTP Basic credentials (RFC 6749 §2.3.1), else None."""
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            pair = base64.b64decode(value.strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        client, _, secret = (urllib.parse.unquote_plus(x) for x in pair.partition(":"))
        return client if client in self.clients and secret == EXCHANGE_SECRET else None

    def count(self, client: str | None = None) -> int:
        with self.lock:
            return self.counts[client] if client else sum(self.counts.values())

    def snapshot(self) -> dict:
        with self.lock:
            return dict(self.counts)

    def stop(self) -> None:
        if self in SERVERS:
            SERVERS.remove(self)
            self.server.shutdown()  # returns once serve_forever has (within poll_interval)
            self.server.server_close()
            self.thread.join(timeout=10)


class Policy:
    """A stand-in for OPA's data API for the central variant, on 127.0.0.1 in a thread of
    this process (a handful of callouts a run, like the introspection server).

    POST /v1/data/<anything> with a JSON body holding an `input` object that has the
    identity tokengate verified: `{"result": true}` (allow); any other body: 400. Counts
    the requests (all of them, per path) and keeps the last input for the report."""

    def __init__(self):
        self.counts: collections.Counter = collections.Counter()
        self.last_input: dict | None = None
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive with Envoy; every answer has a length

            def log_message(self, *_args):
                pass

            def answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self.answer(404, {})

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                if length > 65536:
                    self.close_connection = True
                    self.answer(413, {})
                    return
                body = self.rfile.read(length)
                with outer.lock:
                    outer.counts[self.path] += 1
                if not self.path.startswith("/v1/data/"):
                    self.answer(404, {})
                    return
                try:
                    doc = json.loads(body)
                except ValueError:
                    doc = None
                given = doc.get("input") if isinstance(doc, dict) else None
                if not isinstance(given, dict) or not isinstance(given.get("identity"), dict):
                    self.answer(400, {"code": "invalid_parameter"})
                    return
                with outer.lock:
                    outer.last_input = given
                self.answer(200, {"result": True})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.2}, daemon=True)
        self.thread.start()
        SERVERS.append(self)

    def count(self) -> int:
        with self.lock:
            return sum(self.counts.values())

    def snapshot(self) -> dict:
        with self.lock:
            return dict(self.counts)

    def stop(self) -> None:
        if self in SERVERS:
            SERVERS.remove(self)
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=10)


# --- keys and tokens ----------------------------------------------------------------------

def run_cli(args: list[str]) -> str:
    result = subprocess.run([str(CLI)] + args, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        die(f"{CLI} {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def kid_of(alg: str) -> str:
    return f"bench-{alg.lower()}"


def ensure_keys() -> dict:
    """bench/.work/keys: the real keys; keys-other: keys with the same kids (bad signatures)."""
    keys = {}
    for folder in ("keys", "keys-other"):
        out = WORK / folder
        for alg in ALGS:
            path = out / f"{kid_of(alg)}.jwk"
            if not path.exists():
                log(f"keygen {alg} into {out}")
                run_cli(["keygen", "--alg", alg, "--kid", kid_of(alg), "--out", str(out)])
            keys[(folder, alg)] = path
    return keys


def mint(key: Path, subs: list[str], claims: list[str] = ()) -> list[str]:
    """Tokens from the CLI: `--count` mints many distinct ones (own jti) in one process,
    in as many batches at once as there are CPUs; `sub` names the batch. `claims`: more
    `--claim NAME=VALUE` on top of `scope`."""
    workers = max(1, os.cpu_count() or 1)
    exp_in = f"{TOKEN_LIFETIME_S}s"
    batch = max(1, -(-len(subs) // workers))
    chunks = [subs[i:i + batch] for i in range(0, len(subs), batch)]

    def some(chunk: list[str]) -> list[str]:
        out = run_cli(["token", "--key", str(key), "--iss", ISSUER, "--sub", chunk[0],
                       "--aud", AUDIENCE, "--exp-in", exp_in, "--count", str(len(chunk)),
                       "--claim", "scope=orders:read orders:write"]
                      + [arg for claim in claims for arg in ("--claim", claim)])
        return out.split()

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        tokens = [t for part in pool.map(some, chunks) for t in part]
    if len(set(tokens)) != len(subs):
        raise SystemExit(f"bench: minted {len(set(tokens))} distinct tokens, wanted {len(subs)}")
    return tokens


def status_files(keys: dict) -> tuple[Path, Path]:
    """The revocation row's token (status index 3 at STATUS_URI) and its Status List Token
    (1 bit per entry, every entry VALID, ttl 3600 s), minted by the CLI each run."""
    key = keys[("keys", STATUS_ALG)]
    token = run_cli(["token", "--key", str(key), "--iss", ISSUER, "--sub", "status-user",
                     "--aud", AUDIENCE, "--exp-in", f"{TOKEN_LIFETIME_S}s",
                     "--claim", "scope=orders:read orders:write",
                     "--claim", f"status.status_list.uri={STATUS_URI}",
                     "--claim", "status.status_list.idx=3"]).strip()
    lst = base64.urlsafe_b64encode(zlib.compress(bytes(16), 9)).rstrip(b"=").decode()
    listed = run_cli(["token", "--key", str(key), "--iss", ISSUER, "--sub", STATUS_URI,
                      "--typ", "statuslist+jwt", "--exp-in", "2h", "--claim", "ttl=3600",
                      "--claim", "status_list=" + json.dumps({"bits": 1, "lst": lst})]).strip()
    token_path, list_path = WORK / f"{STATUS_ALG}-status.txt", WORK / "statuslist.jwt"
    token_path.write_text(token + "\n")
    list_path.write_text(listed)
    return token_path, list_path


class StatusListServer:
    """The issuer of the revocation row's status list: GET /lists/1 answers the Status
    List Token; counts the requests."""

    def __init__(self, list_token: str):
        outer = self
        self.requests = 0
        self.lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args):
                pass

            def do_GET(self):
                with outer.lock:
                    outer.requests += 1
                body = list_token.encode() if self.path == "/lists/1" else b"not found"
                self.send_response(200 if self.path == "/lists/1" else 404)
                self.send_header("content-type", "application/statuslist+jwt")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def count(self) -> int:
        with self.lock:
            return self.requests

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ensure_tokens(keys: dict) -> dict:
    """Token files per algorithm: cached (1), cold (COLD_TOKENS), bad (BAD_TOKENS), fwd (1,
    with TOKEN_CLAIMS["fwd"]: the forwarding rows').

    Reused across runs while the keys are the same and the tokens have time left (and, for
    a kind with extra claims, were minted with the same ones)."""
    folder = WORK / "tokens"
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    now = int(time.time())
    for alg in ALGS:
        good, other = keys[("keys", alg)], keys[("keys-other", alg)]
        manifest_path = folder / f"{alg}.json"
        manifest = {}
        if manifest_path.exists():
            try:
                manifest = json.loads(manifest_path.read_text())
            except ValueError:
                manifest = {}
        fresh = (manifest.get("key") == file_sha(good)
                 and manifest.get("other") == file_sha(other)
                 and manifest.get("exp", 0) - now >= TOKEN_MIN_LEFT_S)
        wanted = {"cached": 1, "cold": COLD_TOKENS, "bad": BAD_TOKENS, "fwd": 1}
        paths = {kind: folder / f"{alg}-{kind}.txt" for kind in wanted}
        for kind, count in wanted.items():
            have = manifest.get(kind, 0) if fresh and paths[kind].exists() else 0
            claims = TOKEN_CLAIMS.get(kind, [])
            if claims and manifest.get(f"{kind}_claims") != claims:
                have = 0
            if have >= count:
                continue
            started = time.monotonic()
            key = other if kind == "bad" else good
            subs = [f"{kind}-{i:06d}" for i in range(count)]
            log(f"minting {count} {alg} {kind} token(s)")
            tokens = mint(key, subs, claims)
            paths[kind].write_text("\n".join(tokens) + "\n")
            log(f"  {count} {alg} {kind} token(s) in {time.monotonic() - started:.1f} s")
            if not fresh:
                # New keys or expiring tokens: everything else is minted again too.
                manifest = {"key": file_sha(good), "other": file_sha(other),
                            "exp": now + TOKEN_LIFETIME_S}
                fresh = True
            manifest[kind] = count
            if claims:
                manifest[f"{kind}_claims"] = claims
            manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
        for kind, path in paths.items():
            lines = [t for t in path.read_text().split("\n") if t]
            if len(lines) > wanted[kind]:
                # Fewer than minted asked for: a prefix of the file.
                path = folder / f"{alg}-{kind}-{wanted[kind]}.txt"
                path.write_text("\n".join(lines[: wanted[kind]]) + "\n")
            files[(alg, kind)] = path
    return files


def ensure_mint_key() -> dict:
    """The gateway's own signing key for the minted variant (private JWK), made by the CLI
    in its own folder (keygen adds the public half to the folder's jwks.json)."""
    out = WORK / "keys-mint"
    path = out / f"{MINT_KID}.jwk"
    if not path.exists():
        log(f"keygen EdDSA (mint) into {out}")
        run_cli(["keygen", "--alg", "EdDSA", "--kid", MINT_KID, "--out", str(out)])
    return json.loads(path.read_text())


def opaque_token_file() -> Path:
    """One opaque token (not three base64url parts, so no provider takes it), new every
    run: what the exchange variants send; only the introspection server knows it."""
    path = WORK / "tokens" / "opaque.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("tgo_" + base64.urlsafe_b64encode(os.urandom(24)).decode() + "\n")
    return path


def jwks(keys: dict) -> dict:
    jwks_path = WORK / "keys" / "jwks.json"
    return json.loads(jwks_path.read_text())


# --- Envoy configuration ------------------------------------------------------------------

ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


def forward_check_route() -> dict:
    """The forwarding listeners' route for the sanity check (before the `/` route, which is
    all wrk asks for): it answers 200 with each identity header the filter set, and the
    `authorization` it left, echoed as `x-seen-<name>` (Envoy leaves out an empty value)."""
    names = list(FORWARD_CLAIMS.values()) + [FORWARD_PAYLOAD_HEADER, "authorization"]
    return {
        "match": {"path": FORWARD_CHECK_PATH},
        "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
        "response_headers_to_add": [
            {"header": {"key": f"x-seen-{name}", "value": f"%REQ({name})%"},
             "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"} for name in names],
    }


def listener(name: str, port: int, http_filters: list, check_routes: list | None = None) -> dict:
    # Every variant gets the same connection manager and the same direct response: the
    # only difference between listeners is the filter in front of the router. No upstream:
    # on two cores a third process would compete with Envoy and wrk and blur the numbers.
    # `check_routes` (the forwarding listeners') match only paths the sanity check asks for.
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                 "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "codec_type": "AUTO",
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
        "route_config": {
            "name": name,
            "virtual_hosts": [{
                "name": "all",
                "domains": ["*"],
                "routes": (check_routes or []) + [
                    {"match": {"prefix": "/"},
                     "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}],
            }],
        },
        "http_filters": http_filters + [ROUTER],
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
    }


def wasm_filter(plugin_name: str, vm_id: str, code: Path, configuration: str) -> dict:
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                # The plugin name (and realm below) differ per listener so each tokengate
                # listener has its own root context, hence its own token cache; they all
                # share one VM per worker (same vm_id and code).
                "name": plugin_name,
                "failure_policy": "FAIL_CLOSED",
                "vm_config": {
                    "vm_id": vm_id,
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(code)}},
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": configuration,
                },
            },
        },
    }


def tokengate_filter(name: str, alg: str, keyset: dict, code: Path = WASM,
                     exchanges: dict | None = None, rules: list | None = None,
                     authz_service: dict | None = None, revocation: dict | None = None,
                     forward: dict | None = None) -> dict:
    # The same checks as the jwt_authn variants: issuer, audience, signature, exp; the
    # token removed before the request goes on (jwt_authn's forward: false); no claims
    # forwarded, except with `forward` (the forwarding rows: claims and payload_header).
    # The exchange variants add `exchanges` to this same document (no rules: the implicit
    # rule takes the provider or the exchange).
    document = {
        "realm": name,
        "providers": {"bench": {
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "jwks": {"inline": keyset},
            "algorithms": [alg],
        }},
    }
    if exchanges:
        document["exchanges"] = exchanges
    if rules:
        document["rules"] = rules
    if authz_service:
        document["authz_service"] = authz_service
    if revocation:
        document["providers"]["bench"]["revocation"] = revocation
    if forward:
        document["providers"]["bench"]["forward"] = forward
    return wasm_filter(name, "tokengate", code, json.dumps(document))


def authz_document(kind: str, policy_port: int) -> tuple[list, dict | None]:
    """The `rules` (and `authz_service`) of an authorization variant: one rule for every
    request, the cached-JWT variant's provider, AUTHZ_TREE; for tg-central-hit also
    `central: true`, asking the harness's policy server through cluster `opa`, decisions
    kept POLICY_CACHE_SECS. The input holds the `x-tenant` header (a real policy would
    read it) and the same method, path, host and identity on every request: one input."""
    rule = {"name": AUTHZ[kind], "match": {}, "authn": {"any": ["bench"]}, "authz": AUTHZ_TREE}
    service = None
    if kind == "tg-central-hit":
        rule["central"] = True
        service = {"uri": f"http://127.0.0.1:{policy_port}{POLICY_PATH}", "cluster": "opa",
                   "timeout_ms": 2000, "cache_secs": POLICY_CACHE_SECS, "on_error": "deny",
                   "include_headers": [TENANT_HEADER]}
    return [rule], service


def exchange_document(kind: str, auth_port: int, mint_key: dict | None) -> dict:
    """The `exchanges` of an exchange variant: introspection of the opaque token at the
    harness's server through cluster `auth`, the answer held 3600 s; for tg-minted-hit
    also `mint` (EdDSA), the minted JWT (for as long as the cache entry) in MINT_HEADER."""
    name = EXCHANGES[kind]
    exchange = {
        "mode": "introspection",
        "endpoint": {"uri": f"http://127.0.0.1:{auth_port}{INTROSPECT_PATH}",
                     "cluster": "auth", "timeout_ms": 2000},
        "client": {"id": f"bench-{name}", "secret": EXCHANGE_SECRET},
        "provider": "bench",
        "audiences": [AUDIENCE],
        "cache": {"max_secs": EXCHANGE_CACHE_SECS},
    }
    if kind == "tg-minted-hit":
        exchange["upstream"] = {"header": MINT_HEADER, "prefix": "Bearer "}
        # ttl_secs bounds the cache entry too (default 300 s, less than a full run).
        exchange["mint"] = {"issuer": MINT_ISSUER, "alg": "EdDSA", "key": mint_key,
                            "ttl_secs": EXCHANGE_CACHE_SECS, "audience": MINT_AUDIENCE}
    return {name: exchange}


def auth_cluster(port: int, name: str = "auth") -> dict:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{
            "endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                        "port_value": port}}}}]}]},
    }


def floor_filter(name: str) -> dict:
    return wasm_filter(name, "floor", FLOOR_WASM, "{}")


def tokengate_forward() -> dict:
    """The forwarding rows' `forward`: the three claims and the payload (keep_token false,
    as in every row: the token is removed)."""
    return {"claims": dict(FORWARD_CLAIMS), "payload_header": FORWARD_PAYLOAD_HEADER}


def native_filter(keyset: dict, cache: bool, forward: bool = False) -> dict:
    provider = {
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "local_jwks": {"inline_string": json.dumps(keyset)},
        "forward": False,
        "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
    }
    if cache:
        provider["jwt_cache_config"] = {"jwt_cache_size": NATIVE_CACHE_SIZE}
    if forward:
        # jwt_authn (1.40, authenticator.cc addJWTClaimToHeader): claim_name is a dotted
        # path into nested objects; strings as they are, numbers and booleans as text, and
        # an array or object as standard base64 of its JSON (tokengate joins an array of
        # strings with ","). The payload: the token's base64url segment, unpadded
        # (pad_forward_payload_header false), as tokengate's payload_header.
        provider["claim_to_headers"] = [{"header_name": header, "claim_name": claim}
                                        for claim, header in FORWARD_CLAIMS.items()]
        provider["forward_payload_header"] = FORWARD_PAYLOAD_HEADER
    return {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"bench": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}],
        },
    }


def envoy_config(admin_port: int, listeners: list, clusters: list | None = None) -> dict:
    resources: dict = {"listeners": listeners}
    if clusters:
        resources["clusters"] = clusters
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": resources,
    }


# --- variants -----------------------------------------------------------------------------

class Variant:
    def __init__(self, kind: str, alg: str, tokens: str, expect: int, label: str):
        self.kind, self.alg, self.tokens, self.expect, self.label = kind, alg, tokens, expect, label
        self.name = f"{kind}_{alg.lower()}".replace("-", "_")
        self.port = 0
        self.runs: list[dict] = []
        self.warnings: list[str] = []
        self.seen: dict = {}  # forwarding rows: the identity headers the sanity check saw

    @property
    def tokengate(self) -> bool:
        return self.kind.startswith("tg")

    @property
    def exchange(self) -> str | None:
        """The name of this listener's exchange (exchange variants only)."""
        return EXCHANGES.get(self.kind)

    @property
    def rule(self) -> str | None:
        """The name of this listener's rule (authorization variants only)."""
        return AUTHZ.get(self.kind)

    @property
    def central(self) -> bool:
        return self.kind == "tg-central-hit"

    @property
    def forwarding(self) -> bool:
        """A row whose filter forwards claims and the payload (FORWARD_CLAIMS)."""
        return self.kind in ("tg-cached-fwd", "native-cache-fwd")


def variants() -> list[Variant]:
    out = []
    for alg in ALGS:
        out += [
            # Each tokengate variant right next to the one it is judged against, so the
            # two see the same moment of a noisy machine (ratios are taken per round).
            Variant("passthrough", alg, "cached", 200, "passthrough (router only)"),
            Variant("floor", alg, "cached", 200, "floor wasm filter"),
            Variant("tg-cached", alg, "cached", 200, "tokengate, cached (1 token)"),
            # The token kept (forward.keep_token): no header edit at all. Every edit a Wasm
            # filter makes to request headers clears Envoy's route cache (the router then
            # matches the route again): this row tells that cost from the filter's own.
            Variant("tg-cached-keep", alg, "cached", 200,
                    "tokengate, cached (1 token), token kept: no header edit"),
            # A realistic provider (issue 12): three claims and the payload forwarded, by
            # tokengate and by jwt_authn with its cache, next to each other.
            Variant("tg-cached-fwd", alg, "fwd", 200,
                    "tokengate, cached (1 token), forwarding 3 claims + payload"),
            Variant("native-cache-fwd", alg, "fwd", 200,
                    "jwt_authn + jwt_cache_config (1 token), forwarding 3 claims + payload"),
        ]
        if alg == AUTHZ_ALG:
            # Right after the cached JWT they are judged against: the same token.
            out += [
                Variant("tg-authz-3", alg, "cached", 200,
                        "tokengate, cached (1 token), rule with 3 `authz` conditions"),
                Variant("tg-central-hit", alg, "cached", 200,
                        "tokengate, cached (1 token), 3 conditions + `central`, "
                        "decision cache hit"),
            ]
        if alg == STATUS_ALG:
            out.append(Variant("tg-status-hit", alg, "status", 200,
                               "tokengate, cached (1 token), status list entry looked up"))
        if alg == EXCHANGE_ALG:
            # Right after the cached JWT they are judged against.
            out += [
                Variant("tg-exchange-hit", alg, "opaque", 200,
                        "tokengate, introspection exchange, cache hit (1 opaque token)"),
                Variant("tg-minted-hit", alg, "opaque", 200,
                        "tokengate, introspection + minted EdDSA JWT, cache hit (1 opaque token)"),
            ]
        out += [
            Variant("native-cache", alg, "cached", 200, "jwt_authn + jwt_cache_config (1 token)"),
            Variant("native", alg, "cold", 200, "jwt_authn, no cache (unique tokens)"),
            Variant("tg-cold", alg, "cold", 200, "tokengate, cold (unique tokens)"),
            Variant("native-badsig", alg, "bad", 401, "jwt_authn, bad-signature flood"),
            Variant("tg-badsig", alg, "bad", 401, "tokengate, bad-signature flood"),
        ]
    if ONLY:
        pattern = re.compile(ONLY)
        out = [v for v in out if pattern.search(v.name) or pattern.search(v.kind)]
    return out


def filters_for(v: Variant, keyset: dict, auth_port: int = 0,
                mint_key: dict | None = None, policy_port: int = 0) -> list:
    if v.kind == "passthrough":
        return []
    if v.kind == "floor":
        return [floor_filter(v.name)]
    if v.kind in ("native", "native-badsig"):
        return [native_filter(keyset, cache=False)]
    if v.kind == "native-cache":
        return [native_filter(keyset, cache=True)]
    if v.kind == "native-cache-fwd":
        return [native_filter(keyset, cache=True, forward=True)]
    if v.kind == "tg-cached-fwd":
        return [tokengate_filter(v.name, v.alg, keyset, forward=tokengate_forward())]
    if v.kind == "tg-cached-keep":
        return [tokengate_filter(v.name, v.alg, keyset, forward={"keep_token": True})]
    if v.exchange:
        return [tokengate_filter(v.name, v.alg, keyset,
                                 exchanges=exchange_document(v.kind, auth_port, mint_key))]
    if v.rule:
        rules, service = authz_document(v.kind, policy_port)
        return [tokengate_filter(v.name, v.alg, keyset, rules=rules, authz_service=service)]
    if v.kind == "tg-status-hit":
        revocation = {"status_list": {"origins": {STATUS_ORIGIN: "lists"},
                                      "max_ttl_secs": 3600, "timeout_ms": 1000}}
        return [tokengate_filter(v.name, v.alg, keyset, revocation=revocation)]
    return [tokengate_filter(v.name, v.alg, keyset)]


# --- Envoy --------------------------------------------------------------------------------

def envoy_command() -> list[str]:
    configured = os.environ.get("ENVOY", "").strip()
    if configured:
        return shlex.split(configured)
    venv = ROOT / ".venv" / "bin" / "envoy"
    if venv.exists():
        return [str(venv)]
    found = shutil.which("envoy")
    if found:
        return [found]
    die("no Envoy: set ENVOY, or run `make envoy` first")
    return []


def start_envoy(cmd: list[str], config: dict, tag: str, level: str = "info") -> subprocess.Popen:
    config_path = WORK / f"envoy-{tag}.json"
    config_path.write_text(json.dumps(config, indent=1))
    log_path = WORK / f"envoy-{tag}.log"
    log_path.unlink(missing_ok=True)  # Envoy appends; the report reads this run's lines
    args = pinned(ENVOY_CPU, cmd + [
        "-c", str(config_path), "--concurrency", "1", "--disable-hot-restart",
        "-l", level, "--log-path", str(log_path)])
    out = open(WORK / f"envoy-{tag}.out", "w")
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    out.close()
    STARTED.append(proc)
    return proc


def wait_ready(proc: subprocess.Popen, admin_port: int, tag: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (WORK / f"envoy-{tag}.out").read_text()[-3000:]
            die(f"Envoy exited ({proc.returncode}) before it was ready:\n{tail}")
        try:
            status, _ = http_get(admin_port, "/ready", timeout=1)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    die(f"Envoy not ready after {timeout:.0f} s (see {WORK / f'envoy-{tag}.log'})")


def envoy_pid(proc: subprocess.Popen) -> int:
    """The Envoy process itself (the venv's wrapper execs it; func-e runs it as a child)."""
    def comm(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return ""

    if comm(proc.pid).startswith("envoy"):
        return proc.pid
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        if comm(int(child)).startswith("envoy"):
            return int(child)
    return proc.pid


def stats(admin_port: int) -> dict:
    # tokengate tallies its request counters in the VM and flushes them on a 50 ms tick.
    time.sleep(0.3)
    _, body = http_get(admin_port, "/stats", timeout=10)
    out = {}
    for line in body.decode(errors="replace").splitlines():
        name, sep, value = line.partition(": ")
        if sep and re.fullmatch(r"-?\d+", value.strip()):
            out[name] = int(value)
    return out


def memory(pid: int) -> dict:
    """Envoy's resident memory, and the size of each wasm VM's linear memory.

    V8 reserves a wasm memory as one huge mapping (8 GiB, for guard regions) and makes the
    part in use readable and writable: the `rw-p` mapping just before a `---p` reservation
    of 4 GiB or more is one VM's linear memory, its size the VM's `memory.size` (it only
    grows). Without such mappings (another V8 build) "wasm" is empty and the report falls
    back to the process's RSS."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    maps = []  # [start, end, perms, rss]
    try:
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            parts = line.split()
            if parts and "-" in parts[0] and not parts[0].endswith(":") and len(parts) >= 5:
                start, end = (int(x, 16) for x in parts[0].split("-"))
                maps.append([start, end, parts[1], 0])
            elif line.startswith("Rss:") and maps:
                maps[-1][3] = int(parts[1]) * 1024
    except (OSError, ValueError):
        maps = []
    vms = []
    for before, reservation in zip(maps, maps[1:]):
        if (reservation[2] == "---p" and reservation[1] - reservation[0] >= (4 << 30)
                and before[2] == "rw-p" and before[1] == reservation[0]):
            vms.append({"size": before[1] - before[0], "rss": before[3]})
    return {"rss": rss, "wasm": sum(vm["size"] for vm in vms), "vms": vms}


# --- load ---------------------------------------------------------------------------------

UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(output: str) -> dict:
    def num(pattern: str, default=None):
        m = re.search(pattern, output)
        return float(m.group(1)) if m else default

    latency = {}
    for pct, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$",
                                       output, re.M):
        latency[pct] = float(value) * UNITS[unit]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       output)
    return {
        "rps": num(r"Requests/sec:\s+([\d.]+)", 0.0),
        "requests": int(num(r"(\d+) requests in", 0)),
        "non2xx": int(num(r"Non-2xx or 3xx responses: (\d+)", 0)),
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
        "p50": latency.get("50"),
        "p99": latency.get("99"),
    }


def run_wrk(port: int, tokens: Path, duration: float) -> dict:
    cmd = pinned(LOAD_CPU, [
        "wrk", f"-t{THREADS}", f"-c{max(CONNECTIONS, THREADS)}", f"-d{duration}s",
        "--latency", "--timeout", "5s", "-s", str(LUA),
        f"http://127.0.0.1:{port}/", "--", str(tokens), str(THREADS)])
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120)
    if result.returncode != 0 or "Requests/sec" not in result.stdout:
        die(f"wrk failed ({result.returncode}): {result.stderr.strip()} {result.stdout.strip()}")
    parsed = parse_wrk(result.stdout)
    parsed["raw"] = result.stdout
    return parsed


def counter_delta(before: dict, after: dict, name: str) -> int:
    return after.get(name, 0) - before.get(name, 0)


def introspections(v: Variant) -> int:
    """The introspection server's count for this variant's exchange so far."""
    return AUTH.count(f"bench-{v.exchange}") if AUTH and v.exchange else 0


def policy_calls(v: Variant | None = None) -> int:
    """The policy server's count so far (for a variant: only if it is the central one)."""
    return POLICY.count() if POLICY and (v is None or v.central) else 0


def measure(v: Variant, admin_port: int, token_files: dict, duration: float, round_no: int):
    asked = introspections(v)
    asked_policy = policy_calls(v)
    before = stats(admin_port)
    result = run_wrk(v.port, token_files[(v.alg, v.tokens)], duration)
    after = stats(admin_port)
    prefix = f"http.{v.name}."
    result["round"] = round_no
    result["rq_2xx"] = counter_delta(before, after, prefix + "downstream_rq_2xx")
    result["rq_4xx"] = counter_delta(before, after, prefix + "downstream_rq_4xx")
    result["rq_5xx"] = counter_delta(before, after, prefix + "downstream_rq_5xx")
    if v.exchange:
        # The exchange's own cache counters (the JWT cache's do not move for opaque tokens).
        exchange = f"wasmcustom.tokengate.exchange.{v.exchange}."
        result["hit"] = counter_delta(before, after, exchange + "hit")
        result["miss"] = counter_delta(before, after, exchange + "miss")
        result["bad_signature"] = 0
        result["introspections"] = introspections(v) - asked
        if result["introspections"]:
            v.warnings.append(f"round {round_no}: {result['introspections']} introspection(s)")
    elif v.tokengate:
        result["hit"] = counter_delta(before, after, "wasmcustom.tokengate.cache.hit")
        result["miss"] = counter_delta(before, after, "wasmcustom.tokengate.cache.miss")
        result["bad_signature"] = counter_delta(
            before, after, "wasmcustom.tokengate.denied.bad_signature")
    if v.rule:
        rule = f"wasmcustom.tokengate.rule.{v.rule}."
        result["rule_allowed"] = counter_delta(before, after, rule + "allowed")
        result["rule_denied"] = counter_delta(before, after, rule + "denied")
        if result["rule_denied"]:
            v.warnings.append(f"round {round_no}: rule {v.rule} denied {result['rule_denied']}")
    if v.central:
        service = "wasmcustom.tokengate.authz_service."
        result["decision_hit"] = counter_delta(before, after, service + "cache_hit")
        result["decisions"] = sum(counter_delta(before, after, service + event)
                                  for event in ("allowed", "denied", "failure"))
        result["policy_failures"] = counter_delta(before, after, service + "failure")
        result["policy_calls"] = policy_calls(v) - asked_policy
        if result["policy_calls"]:
            v.warnings.append(f"round {round_no}: {result['policy_calls']} policy request(s)")
        if result["policy_failures"]:
            v.warnings.append(f"round {round_no}: {result['policy_failures']} policy "
                              "failure(s)")
    if v.kind.startswith("native"):
        result["jwt_denied"] = counter_delta(before, after, prefix + "jwt_authn.denied")
    result.pop("raw", None)
    v.runs.append(result)
    answered = result["rq_2xx"] + result["rq_4xx"] + result["rq_5xx"]
    wrong = answered - (result["rq_2xx"] if v.expect == 200 else result["rq_4xx"])
    if wrong:
        v.warnings.append(f"round {round_no}: {wrong} answer(s) not {v.expect}")
    # Counters are read right after wrk stops: a request cut off mid-way may be counted by
    # the filter and not by the connection manager, so allow one per connection.
    if v.kind == "tg-badsig" and abs(result["bad_signature"] - result["rq_4xx"]) > CONNECTIONS:
        v.warnings.append(f"round {round_no}: {result['rq_4xx'] - result['bad_signature']} "
                          "refusal(s) not for the signature")
    if result["socket_errors"]:
        v.warnings.append(f"round {round_no}: {result['socket_errors']} socket error(s)")
    extra = ""
    if v.tokengate and result["hit"] + result["miss"]:
        extra = f", cache hits {100 * result['hit'] / (result['hit'] + result['miss']):.0f}%"
    if v.exchange:
        extra += f", {result['introspections']} introspection(s)"
    if v.central and result["decisions"]:
        extra += (f", decision cache hits {100 * result['decision_hit'] / result['decisions']:.0f}%"
                  f", {result['policy_calls']} policy request(s)")
    log(f"round {round_no} {v.name:22s} {result['rps']:9.0f} req/s  "
        f"p50 {fmt_ms(result['p50'])}  p99 {fmt_ms(result['p99'])}{extra}")


def fmt_ms(value) -> str:
    if value is None:
        return "–"
    return f"{value:.2f} ms" if value < 10 else f"{value:.1f} ms"


# --- the phases ---------------------------------------------------------------------------

def b64_json(text: str, urlsafe: bool):
    """The JSON in base64 (padded or not), or None."""
    try:
        raw = (base64.urlsafe_b64decode if urlsafe else base64.b64decode)(
            text + "=" * (-len(text) % 4))
        return json.loads(raw)
    except ValueError:
        return None


def check_forwarding(v: Variant, token: str) -> list[str]:
    """Ask a forwarding listener's check route with the run's token: every identity header
    must be there with the token's value (an array as the filter writes it: tokengate joins
    strings with ",", jwt_authn gives base64 of the JSON) and the token gone. Keeps what it
    saw in v.seen; returns what makes the row's numbers meaningless (a header missing, the
    token left); a value in another form than expected is a warning on the row."""
    claims = b64_json(token.split(".")[1], urlsafe=True) or {}
    conn = http.client.HTTPConnection("127.0.0.1", v.port, timeout=5)
    try:
        conn.request("GET", FORWARD_CHECK_PATH,
                     headers={"authorization": f"Bearer {token}", TENANT_HEADER: TENANT})
        response = conn.getresponse()
        response.read()
        status = response.status
        seen = {name[len("x-seen-"):]: value for name, value in response.getheaders()
                if name.lower().startswith("x-seen-")}
    finally:
        conn.close()
    v.seen = seen
    failed = []
    if status != 200:
        return [f"{v.name}: {FORWARD_CHECK_PATH}: {status} (expected 200)"]
    if "authorization" in seen:
        failed.append(f"{v.name}: the token was not removed")
    for claim, header in FORWARD_CLAIMS.items():
        value = claims
        for part in claim.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        got = seen.get(header)
        if got is None:
            failed.append(f"{v.name}: no {header} (claim {claim} = {json.dumps(value)})")
        elif isinstance(value, list):
            ok = (got == ",".join(value) if v.tokengate
                  else b64_json(got, urlsafe=False) == value)
            if not ok:
                v.warnings.append(f"{header}: {got!r} for {json.dumps(value)}")
        elif got != value:
            v.warnings.append(f"{header}: {got!r}, not {value!r}")
    payload = seen.get(FORWARD_PAYLOAD_HEADER)
    if payload is None:
        failed.append(f"{v.name}: no {FORWARD_PAYLOAD_HEADER}")
    elif b64_json(payload, urlsafe=True) != claims:
        v.warnings.append(f"{FORWARD_PAYLOAD_HEADER} is not the token's claims")
    return failed


def sanity(vs: list[Variant], token_files: dict) -> None:
    """One request per listener, with the headers wrk sends: the status each variant is
    meant to see. An exchange or central listener gets a second one, which its cache
    should answer without a callout. An authorization listener also gets one without
    the tenant header, which its rule must refuse (403) without asking the policy: the
    conditions are really evaluated."""
    failed = []
    for v in vs:
        token = token_files[(v.alg, v.tokens)].read_text().split("\n", 1)[0]
        headers = {"authorization": f"Bearer {token}", TENANT_HEADER: TENANT}
        tries = 2 if v.exchange or v.central else 1
        for i in range(tries):
            asked, asked_policy = introspections(v), policy_calls(v)
            status, body = http_get(v.port, "/", headers)
            if status != v.expect:
                failed.append(f"{v.name}: {status} {body[:200]!r} (expected {v.expect})")
                break
            if v.exchange and i == tries - 1 and introspections(v) != asked:
                v.warnings.append("a repeated token was introspected again")
            if v.central and i == tries - 1 and policy_calls(v) != asked_policy:
                v.warnings.append("a repeated request was sent to the policy again")
        if v.rule:
            asked_policy = policy_calls(v)
            status, body = http_get(v.port, "/", {"authorization": f"Bearer {token}"})
            if status != 403:
                failed.append(f"{v.name}: without {TENANT_HEADER}: {status} {body[:200]!r} "
                              "(expected 403 from the rule's authz)")
            elif policy_calls(v) != asked_policy:
                v.warnings.append("a local authz refusal asked the policy")
        if v.forwarding:
            failed += check_forwarding(v, token)
            log(f"sanity: {v.name} forwards " + ", ".join(
                f"{name}: {value[:60]}" for name, value in v.seen.items()))
        if v.exchange:
            log(f"sanity: {v.name}: {introspections(v)} introspection(s) after {tries} requests")
        if v.central:
            log(f"sanity: {v.name}: {policy_calls(v)} policy request(s) after {tries} "
                "requests (and a local refusal)")
            seen = POLICY.last_input if POLICY else None
            http_in = ((seen or {}).get("attributes") or {}).get("request", {}).get("http", {})
            claims = ((seen or {}).get("identity") or {}).get("claims") or {}
            if http_in.get("headers") != {TENANT_HEADER: TENANT} or not claims.get("sub"):
                v.warnings.append("the policy's input is not what was expected: "
                                  f"{json.dumps(seen)[:300]}")
    if failed:
        die("listeners answer wrongly, numbers would mean nothing:\n  " + "\n  ".join(failed))


def main_run(cmd: list[str], keyset: dict, token_files: dict, vs: list[Variant]) -> dict:
    global AUTH, POLICY
    ports = free_ports(len(vs) + 1)
    admin_port = ports[0]
    for v, port in zip(vs, ports[1:]):
        v.port = port
    exchanging = [v for v in vs if v.exchange]
    clusters, auth_port, mint_key = [], 0, None
    if exchanging:
        opaque = token_files[(EXCHANGE_ALG, "opaque")].read_text().split("\n", 1)[0]
        AUTH = Introspection(opaque, [f"bench-{v.exchange}" for v in exchanging])
        auth_port = AUTH.port
        clusters = [auth_cluster(auth_port)]
        log(f"introspection server on 127.0.0.1:{auth_port}{INTROSPECT_PATH}")
        if any(v.kind == "tg-minted-hit" for v in exchanging):
            mint_key = ensure_mint_key()
    lists = None
    if any(v.kind == "tg-status-hit" for v in vs):
        lists = StatusListServer(STATUS_LIST_FILE.read_text())
        clusters.append(auth_cluster(lists.port, "lists"))
        log(f"status list server on 127.0.0.1:{lists.port}/lists/1")
    centrals = [v for v in vs if v.central]
    policy_port = 0
    if centrals:
        POLICY = Policy()
        policy_port = POLICY.port
        clusters.append(auth_cluster(policy_port, "opa"))
        log(f"policy server on 127.0.0.1:{policy_port}{POLICY_PATH}")
    config = envoy_config(
        admin_port,
        [listener(v.name, v.port, filters_for(v, keyset, auth_port, mint_key, policy_port),
                  [forward_check_route()] if v.forwarding else None)
         for v in vs],
        clusters)
    log(f"starting Envoy with {len(vs)} listeners (admin 127.0.0.1:{admin_port})")
    proc = start_envoy(cmd, config, "bench")
    info: dict = {}
    try:
        wait_ready(proc, admin_port, "bench")
        pid = envoy_pid(proc)
        try:
            info["envoy_binary"] = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            info["envoy_binary"] = None
        sanity(vs, token_files)
        calls: dict = {"sanity": {v.name: introspections(v) for v in exchanging}}
        policy: dict = {"sanity": policy_calls()}
        if WARMUP > 0:
            log(f"warm-up: {WARMUP:g} s per variant")
            for v in vs:
                run_wrk(v.port, token_files[(v.alg, v.tokens)], WARMUP)
        calls["warm-up"] = {v.name: introspections(v) for v in exchanging}
        policy["warm-up"] = policy_calls()
        for r in range(1, ROUNDS + 1):
            order = vs if r % 2 == 1 else list(reversed(vs))
            for v in order:
                measure(v, admin_port, token_files, DURATION, r)
        if exchanging:
            calls["total"] = {v.name: introspections(v) for v in exchanging}
            calls["by_client"] = AUTH.snapshot()
            info["introspection"] = calls
            log("introspection requests (after sanity / after warm-up / in all): " + ", ".join(
                f"{v.name} {calls['sanity'][v.name]} / {calls['warm-up'][v.name]} / "
                f"{calls['total'][v.name]}" for v in exchanging))
        if centrals:
            policy["total"] = policy_calls()
            policy["by_path"] = POLICY.snapshot()
            policy["last_input"] = POLICY.last_input
            info["policy"] = policy
            log(f"policy requests (after sanity / after warm-up / in all): {policy['sanity']} / "
                f"{policy['warm-up']} / {policy['total']}")
        info["memory"] = memory_phase(vs, admin_port, pid, token_files)
        info["wasm_stats"] = {k: v for k, v in stats(admin_port).items()
                              if k.startswith("wasm.") and "tokengate" not in k}
        log_text = (WORK / "envoy-bench.log").read_text(errors="replace")
        m = re.search(r"tokengate (\S+) \(revision (\S+)\) starting", log_text)
        info["module_version"] = f"{m.group(1)} (revision {m.group(2)})" if m else None
    finally:
        stop(proc)
        if AUTH:
            AUTH.stop()
        if POLICY:
            POLICY.stop()
        if lists:
            lists.stop()
    return info


def flood(v: Variant, admin_port: int, tokens: Path, misses: int, max_s: float) -> int:
    """Unique tokens at a tokengate listener until its cache has missed `misses` times (or
    `max_s` passed): 2 s bursts, the misses read from the filter's counters."""
    seen, started = 0, time.monotonic()
    while seen < misses and time.monotonic() - started < max_s:
        before = stats(admin_port)
        run_wrk(v.port, tokens, 2)
        seen += counter_delta(before, stats(admin_port), "wasmcustom.tokengate.cache.miss")
    return seen


def memory_phase(vs: list[Variant], admin_port: int, pid: int, token_files: dict) -> dict:
    """Fill every cold listener's cache (at least as many misses as it holds, counting the
    rounds'), then flood each again, MEMORY_FLOODS times, each flood at least one cache's
    worth of new tokens, and see whether the VMs' memory moves."""
    cold = [v for v in vs if v.kind == "tg-cold"]
    if not cold or MEMORY_FLOODS <= 0:
        return {}
    for v in cold:
        had = sum(r.get("miss", 0) for r in v.runs)
        if had < FILTER_CACHE_ENTRIES:
            log(f"memory: filling {v.name}'s cache ({had} misses so far)")
            flood(v, admin_port, token_files[(v.alg, "cold")], FILTER_CACHE_ENTRIES - had, 120)
    samples = [memory(pid)]

    def show(what: str, sample: dict) -> None:
        vms = ", ".join(f"{vm['size'] / 2**20:.1f}" for vm in sample["vms"])
        log(f"memory: {what}: Envoy RSS {sample['rss'] / 2**20:.0f} MiB, wasm linear "
            f"memories {vms or '?'} MiB")

    show("caches full", samples[0])
    misses = []
    for i in range(MEMORY_FLOODS):
        got = 0
        for v in cold:
            got += flood(v, admin_port, token_files[(v.alg, "cold")], FILTER_CACHE_ENTRIES, 120)
        misses.append(got)
        samples.append(memory(pid))
        show(f"after flood {i + 1} ({got} new verifications)", samples[-1])
    return {"samples": samples, "misses": misses, "listeners": [v.name for v in cold],
            "tokens": COLD_TOKENS}


def startup_phase(binary: list[str], keyset: dict, token_files: dict, opt_wasm) -> dict:
    """Spawn to first 200 on a listener: without any filter but the router ("without"),
    with tokengate in front of it ("with", the module as built), and for reference with
    the floor filter and with the module after wasm-opt; the variants alternate."""
    token = token_files[("RS256", "cached")].read_text().split("\n", 1)[0]
    headers = {"authorization": f"Bearer {token}"}
    setups = {
        "without": lambda: [],
        "floor": lambda: [floor_filter("startup")],
        "with": lambda: [tokengate_filter("startup", "RS256", keyset)],
    }
    if opt_wasm:
        setups["with-opt"] = lambda: [tokengate_filter("startup", "RS256", keyset, opt_wasm)]
    times: dict = {k: [] for k in setups}
    for _ in range(STARTUP_RUNS):
        for which, filters in setups.items():
            admin_port, port = free_ports(2)
            config = envoy_config(admin_port, [listener("startup", port, filters())])
            tag = f"startup-{which}"
            started = time.monotonic()
            proc = start_envoy(binary, config, tag, level="warning")
            answered = None
            try:
                while time.monotonic() - started < 60:
                    if proc.poll() is not None:
                        die(f"Envoy exited during the start-up measurement (see {WORK / tag}.out)")
                    try:
                        status, _ = http_get(port, "/", headers, timeout=5)
                        if status == 200:
                            answered = time.monotonic() - started
                            break
                    except OSError:
                        time.sleep(0.002)
            finally:
                stop(proc)
            if answered is None:
                die("no answer from Envoy within 60 s while measuring start-up")
            times[which].append(answered * 1000)
            log(f"start-up {which}: {answered * 1000:.0f} ms")
    return {k: {"runs": v, "median": statistics.median(v)} for k, v in times.items()}


def size_phase() -> dict:
    out = {"raw": WASM.stat().st_size, "opt": None, "wasm_opt": None}
    tool = shutil.which(WASM_OPT)
    if tool:
        target = WORK / "tokengate.opt.wasm"
        result = subprocess.run([tool] + WASM_OPT_FLAGS + [str(WASM), "-o", str(target)],
                                capture_output=True, text=True, timeout=600)
        if result.returncode == 0:
            out["opt"] = target.stat().st_size
            version = subprocess.run([tool, "--version"], capture_output=True, text=True)
            out["wasm_opt"] = version.stdout.strip()
        else:
            log(f"wasm-opt failed: {result.stderr.strip()[:500]}")
    else:
        log("wasm-opt not found (apt-get install binaryen): size after wasm-opt not measured")
    return out


# --- report -------------------------------------------------------------------------------

def mean(values):
    values = [x for x in values if x is not None]
    return sum(values) / len(values) if values else None


def all_miss_rps(cold: Variant, cached: Variant | None):
    """What the cold listener would do if its cache never answered.

    Its cache keeps part of a cycling list (see COLD_TOKENS), so a cold run is a mix of
    hits and misses. Per round, with h its hit rate and the cached listener's req/s of the
    same round as the cost of a hit: 1/miss = (1/cold - h/cached) / (1 - h)."""
    if cached is None:
        return None
    estimates = []
    for run, base in zip(cold.runs, cached.runs):
        total = run["hit"] + run["miss"]
        h = run["hit"] / total if total else 0.0
        if h < 0.02:
            estimates.append(run["rps"])
            continue
        if h >= 0.98 or not run["rps"] or not base["rps"]:
            return None
        per_miss = (1 / run["rps"] - h / base["rps"]) / (1 - h)
        if per_miss <= 0:
            return None
        estimates.append(1 / per_miss)
    return mean(estimates)


def summary(v: Variant, vs: list[Variant] | None = None) -> dict:
    rps = [r["rps"] for r in v.runs]
    out = {
        "rps": mean(rps),
        "rounds": rps,
        "p50": mean(r["p50"] for r in v.runs),
        "p99": mean(r["p99"] for r in v.runs),
        "spread": (max(rps) - min(rps)) / mean(rps) if rps and mean(rps) else 0,
    }
    if v.tokengate:
        hits = sum(r["hit"] for r in v.runs)
        total = hits + sum(r["miss"] for r in v.runs)
        out["hit_rate"] = hits / total if total else None
    if v.central:
        hits = sum(r["decision_hit"] for r in v.runs)
        total = sum(r["decisions"] for r in v.runs)
        out["decision_hit_rate"] = hits / total if total else None
    if v.kind == "tg-cold" and vs:
        cached = next((c for c in vs if c.kind == "tg-cached" and c.alg == v.alg and c.runs),
                      None)
        out["all_miss_rps"] = all_miss_rps(v, cached)
    return out


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def verdict(ok) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def report(vs, env, startup, size, info, elapsed) -> tuple[str, dict]:
    by = {(v.kind, v.alg): summary(v, vs) for v in vs if v.runs}

    def ratio(kind, alg, base_kind):
        # The median of the per-round ratios: a round measures a variant and its base
        # seconds apart, while the machine's speed drifts over minutes (rounds of one
        # variant here differed by up to 50% on a shared VM; their ratios much less).
        a, b = by.get((kind, alg)), by.get((base_kind, alg))
        if not a or not b or not a["rps"] or not b["rps"]:
            return None
        pairs = [x / y for x, y in zip(a["rounds"], b["rounds"]) if x and y]
        if len(pairs) != len(a["rounds"]) or len(pairs) != len(b["rounds"]):
            return a["rps"] / b["rps"]
        return statistics.median(pairs)

    native_base = {"tg-cached": "native-cache", "tg-cached-fwd": "native-cache-fwd",
                   "tg-cold": "native", "tg-badsig": "native-badsig"}
    lines = [
        f"# tokengate benchmark — {env['date']}",
        "",
        f"- machine: {env['nproc']} CPUs, {env['cpu']}; load average {env['load_start']} at "
        f"the start, {env['load_end']} at the end (other work on the machine shows up as noise)",
        f"- Envoy: {env['envoy_version']}, `--concurrency 1`"
        + (f", pinned to CPU {ENVOY_CPU}" if HAVE_TASKSET else ", not pinned (no taskset or one CPU)"),
        f"- load: {env['wrk']}" + (f", pinned to CPU {LOAD_CPU}" if HAVE_TASKSET else "")
        + f"; `-t{THREADS} -c{max(CONNECTIONS, THREADS)}`, {DURATION} s per variant per round, "
        f"{ROUNDS} round(s) (order reversed every other round), {WARMUP:g} s warm-up each",
        f"- tokengate: {env['tokengate_version']}, git {env['git_rev']}"
        + (f"; the module says {info.get('module_version')}" if info.get("module_version") else "")
        + f"; `{env['wasm_path']}` sha256 {env['wasm_sha'][:16]}…",
        f"- every route is a `direct_response` 200 (no upstream); tokens: iss/aud/exp/iat/sub/"
        f"scope claims; cold = {COLD_TOKENS} unique tokens per algorithm cycling (the filter "
        f"caches {FILTER_CACHE_ENTRIES} per worker), bad signature = {BAD_TOKENS} tokens signed "
        f"by another key with the same kid; native cache: `jwt_cache_size: {NATIVE_CACHE_SIZE}`",
        f"- run time {elapsed / 60:.1f} min",
    ]
    fwd = [v for v in vs if v.forwarding and v.seen]
    if fwd:
        roles = FORWARD_CLAIMS["realm_access.roles"]
        forms = "; ".join(
            f"{kind}: `{roles}: {seen[roles]}`" for kind, seen in
            {v.kind: v.seen for v in fwd if roles in v.seen}.items())
        lines.append(
            f"- forwarding rows (fwd): their own token, the cached one's claims plus "
            f"`realm_access.roles` {json.dumps(FORWARD_ROLES)}; tokengate `forward.claims` "
            f"{json.dumps(FORWARD_CLAIMS)} and `payload_header` `{FORWARD_PAYLOAD_HEADER}`; "
            f"jwt_authn the same as `claim_to_headers` and `forward_payload_header` (unpadded), "
            f"with `jwt_cache_config`. Both remove the token. The array as each writes it "
            f"(sanity check): {forms}")
    calls = info.get("introspection") or {}
    if calls:
        asked = ", ".join(f"{name} {calls['total'][name]} ({calls['sanity'][name]} by the sanity "
                          "check)" for name in calls["total"])
        lines.append(
            f"- exchange rows: one opaque token, `introspection` (RFC 7662) at a stdlib server "
            f"on 127.0.0.1 through cluster `auth`, `cache.max_secs` {EXCHANGE_CACHE_SECS}; "
            f"provider, `audiences` and `forward` as the {EXCHANGE_ALG} JWT rows; minted: "
            f"EdDSA, `ttl_secs` {EXCHANGE_CACHE_SECS}, into `{MINT_HEADER}` (the one row that "
            f"sets a header upstream). Introspection requests in the whole run: {asked}")
    policy = info.get("policy") or {}
    if any(v.rule for v in vs):
        line = (f"- authorization rows: the {AUTHZ_ALG} provider and cached token, one rule "
                f"(`match: {{}}`) with `authz` `{json.dumps(AUTHZ_TREE)}` (every variant sends "
                f"`{TENANT_HEADER}: {TENANT}`)")
        if policy:
            line += (f"; central: also `central: true`, `authz_service` a stdlib server on "
                     f"127.0.0.1 answering `{{\"result\": true}}` through cluster `opa`, "
                     f"`cache_secs` {POLICY_CACHE_SECS}, `include_headers` [`{TENANT_HEADER}`]. "
                     f"Policy requests in the whole run: {policy['total']} ({policy['sanity']} "
                     "by the sanity check)")
        lines.append(line)
    lines.append("")
    # Busy: others' work before the start, or more than Envoy and wrk (about 2) at the end.
    try:
        first, last = float(env["load_start"].split()[0]), float(env["load_end"].split()[0])
    except (ValueError, IndexError):
        first = last = 0.0
    cpus = env["nproc"] or 1
    if first > 0.5 * cpus or last > cpus + 1:
        lines += [f"> The machine was busy (1-minute load average {first:.1f} at the start, "
                  f"{last:.1f} at the end, on {cpus} CPUs, of which Envoy and wrk account for "
                  "about 2 during the run): expect noise, compare only ratios from this run.",
                  ""]
    lines += [
        "| variant | alg | req/s | per round | p50 | p99 | × passthrough | × floor | × native "
        "| × cached JWT | notes |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for v in vs:
        s = by.get((v.kind, v.alg))
        if not s:
            continue
        rp = ratio(v.kind, v.alg, "passthrough")
        rf = ratio(v.kind, v.alg, "floor") if v.kind not in ("passthrough",) else None
        rn = ratio(v.kind, v.alg, native_base[v.kind]) if v.kind in native_base else None
        rc = ratio(v.kind, v.alg, "tg-cached") if v.exchange or v.rule else None
        notes = []
        if s.get("hit_rate") is not None:
            notes.append(f"{'exchange ' if v.exchange else ''}cache hits "
                         f"{100 * s['hit_rate']:.0f}%")
        if s.get("decision_hit_rate") is not None:
            notes.append(f"decision cache hits {100 * s['decision_hit_rate']:.0f}%")
        if v.central and policy:
            during = sum(r.get("policy_calls", 0) for r in v.runs)
            notes.append(f"policy requests {policy['total']} in all, {during} during the rounds")
        if v.exchange and calls:
            during = sum(r.get("introspections", 0) for r in v.runs)
            notes.append(f"introspections {calls['total'].get(v.name, 0)} in all, "
                         f"{during} during the rounds")
        if s.get("all_miss_rps") and (s.get("hit_rate") or 0) >= 0.02:
            notes.append(f"all misses ≈ {s['all_miss_rps']:.0f} req/s (estimated)")
        if s["spread"] > 0.10:
            notes.append(f"rounds differ by {100 * s['spread']:.0f}%")
        notes += v.warnings
        fmt_r = lambda r: "–" if r is None else f"{r:.2f}"
        lines.append(
            f"| {v.label} | {v.alg} | {s['rps']:.0f} | "
            f"{' / '.join(f'{x:.0f}' for x in s['rounds'])} | {fmt_ms(s['p50'])} | "
            f"{fmt_ms(s['p99'])} | {fmt_r(rp)} | {fmt_r(rf if v.kind != 'floor' else None)} | "
            f"{fmt_r(rn)} | {fmt_r(rc)} | {'; '.join(notes)} |")

    targets = []

    def target(name, measured, goal, ok):
        targets.append((name, measured, goal, ok))

    for alg in ALGS:
        r = ratio("tg-cached", alg, "floor")
        if r is not None:
            target(f"cached valid token vs floor filter, {alg}", f"{r:.3f}×",
                   f"≥ {TARGET_CACHED_VS_FLOOR}×", r >= TARGET_CACHED_VS_FLOOR)
    for alg in ALGS:
        r = ratio("tg-cached-fwd", alg, "floor")
        if r is not None:
            target(f"cached, forwarding 3 claims + payload vs floor filter, {alg}", f"{r:.3f}×",
                   f"≥ {TARGET_CACHED_VS_FLOOR}×", r >= TARGET_CACHED_VS_FLOOR)
        r = ratio("tg-cached-fwd", alg, "native-cache-fwd")
        if r is not None:
            target(f"cached, forwarding 3 claims + payload vs native-cache-fwd (jwt_authn + "
                   f"cache, forwarding the same), {alg}", f"{r:.3f}×", "(no target)", None)
    for kind, what in (("tg-exchange-hit", "opaque-token exchange cache hit"),
                       ("tg-minted-hit", "exchange + minted JWT cache hit")):
        r = ratio(kind, EXCHANGE_ALG, "tg-cached")
        if r is not None:
            target(f"{what} vs cached valid JWT ({EXCHANGE_ALG})", f"{r:.3f}×",
                   f"≥ {TARGET_EXCHANGE_VS_CACHED}×", r >= TARGET_EXCHANGE_VS_CACHED)
    for kind, what in (("tg-authz-3", "cached JWT + 3 `authz` conditions"),
                       ("tg-central-hit", "cached JWT + 3 conditions + central, decision "
                                          "cache hit")):
        r = ratio(kind, AUTHZ_ALG, "tg-cached")
        if r is not None:
            goal = TARGET_AUTHZ_VS_CACHED[kind]
            target(f"{what} vs cached valid JWT ({AUTHZ_ALG})", f"{r:.3f}×", f"≥ {goal}×",
                   r >= goal)
    r = ratio("tg-status-hit", STATUS_ALG, "tg-cached")
    if r is not None:
        target(f"cached JWT + status list lookup vs cached valid JWT ({STATUS_ALG})",
               f"{r:.3f}×", f"≥ {TARGET_STATUS_VS_CACHED}×", r >= TARGET_STATUS_VS_CACHED)
    for alg, goal in TARGET_COLD_VS_NATIVE.items():
        r = ratio("tg-cold", alg, "native")
        if r is None:
            continue
        cold, native = by[("tg-cold", alg)], by[("native", alg)]
        hit = cold.get("hit_rate") or 0
        if hit < 0.02:
            target(f"cold {alg} vs jwt_authn without cache", f"{r:.3f}×", f"≥ {goal}×", r >= goal)
        elif cold.get("all_miss_rps"):
            # The verdict on the estimate: the hits the cache still gets would flatter it.
            e = cold["all_miss_rps"] / native["rps"]
            target(f"cold {alg} vs jwt_authn without cache",
                   f"{e:.3f}× with every request a miss (estimated); {r:.3f}× as measured, "
                   f"{100 * hit:.0f}% cache hits", f"≥ {goal}×", e >= goal)
        else:
            target(f"cold {alg} vs jwt_authn without cache",
                   f"{r:.3f}× as measured, {100 * hit:.0f}% cache hits (no estimate)",
                   f"≥ {goal}×", None)
    for alg in ALGS:
        r = ratio("tg-badsig", alg, "native-badsig")
        if r is not None:
            goal = TARGET_BAD_VS_NATIVE.get(alg)
            target(f"bad-signature flood {alg} vs jwt_authn", f"{r:.3f}×",
                   f"≥ {goal}×" if goal else "(no target)",
                   (r >= goal) if goal else None)
    if size.get("opt") is not None:
        target("`.wasm` after wasm-opt -Oz", f"{size['opt']:,} B (raw {size['raw']:,} B)",
               f"≤ {TARGET_OPT_BYTES:,} B", size["opt"] <= TARGET_OPT_BYTES)
    else:
        target("`.wasm` after wasm-opt -Oz", f"not measured (raw {size['raw']:,} B)",
               f"≤ {TARGET_OPT_BYTES:,} B", None)
    if startup:
        w, wo = startup["with"]["median"], startup["without"]["median"]
        limit = TARGET_START_FACTOR * wo + TARGET_START_EXTRA_MS
        extra = "".join(f", {startup[k]['median']:.0f} ms {label}"
                        for k, label in (("with-opt", "with the wasm-opt'd module"),
                                         ("floor", "with the floor filter")) if k in startup)
        target("Envoy start to first answer", f"{w:.0f} ms with tokengate, {wo:.0f} ms without"
               f"{extra} (medians of {len(startup['with']['runs'])})",
               f"≤ 2 × without + 500 ms = {limit:.0f} ms", w <= limit)
    mem = info.get("memory") or {}
    if mem.get("samples"):
        samples = mem["samples"]
        full = samples[0]
        rss_series = " → ".join(f"{x['rss'] / 2**20:.0f}" for x in samples)
        floods = (f"{len(samples) - 1} flood(s) of ≥ {FILTER_CACHE_ENTRIES} new tokens on each "
                  f"cold listener ({', '.join(str(m) for m in mem['misses'])} verifications)")
        if full["vms"]:
            growth = max(x["wasm"] for x in samples[1:]) - full["wasm"]
            series = " → ".join(f"{x['wasm'] / 2**20:.1f}" for x in samples)
            largest = " → ".join(f"{max(vm['size'] for vm in x['vms']) / 2**20:.1f}"
                                 for x in samples)
            measured = (f"wasm linear memory, all {len(full['vms'])} VMs: {series} MiB "
                        f"(largest VM {largest}); Envoy RSS {rss_series} MiB; {floods}")
        else:
            growth = max(x["rss"] for x in samples[1:]) - full["rss"]
            measured = f"Envoy RSS {rss_series} MiB (wasm memories not found); {floods}"
        target("memory under floods of unique tokens, caches full", measured,
               f"grows ≤ {TARGET_FLAT_BYTES >> 20} MiB", growth <= TARGET_FLAT_BYTES)

    lines += ["", "## Targets", "", "| target | measured | goal | |", "|---|---|---|---|"]
    lines += [f"| {n} | {m} | {g} | {verdict(ok)} |" for n, m, g, ok in targets]
    lines += [
        "",
        "req/s: mean of the rounds; p50/p99: mean of the rounds' wrk percentiles. × columns: "
        "the median of the per-round ratios (in each round a tokengate variant runs right "
        "after the variant it is judged against, so both see the same moment of the machine). × native "
        "compares a tokengate row with the jwt_authn row of the same load (cached with "
        "jwt_authn + cache, cached and forwarding with jwt_authn + cache forwarding the same "
        "claims and payload, cold with jwt_authn without cache, bad signatures with bad "
        "signatures). × cached JWT compares an exchange or authorization row with tokengate's "
        "cached-JWT row of the same algorithm: one opaque token answered from the exchange's "
        "cache vs one JWT answered from the JWT cache; the same JWT through a rule with three "
        "`authz` conditions (and `central`, answered from the decision cache) vs through "
        "the implicit rule. Cold rows: the filter's cache may still answer a few requests of a "
        "cycling list, so the cold targets are judged on an estimate with every request a miss: per round, "
        "1/miss = (1/cold − h/cached) / (1 − h), h the hit rate seen, the cached row's req/s "
        "the cost of a hit. Memory: the size of each wasm VM's linear memory (tokengate's and the "
        "floor's, main thread and worker), read from the Envoy process's memory map; it "
        "only grows, so flat means nothing was left behind. This is a benchmark: a missed "
        "target is a finding, not a failure.",
        "",
    ]
    raw = {
        "env": env, "startup": startup, "size": size, "info": info,
        "variants": [{"name": v.name, "kind": v.kind, "alg": v.alg, "label": v.label,
                      "runs": v.runs, "warnings": v.warnings, "forwarded": v.seen or None,
                      "summary": summary(v, vs) if v.runs else None} for v in vs],
        "targets": [{"target": n, "measured": m, "goal": g, "met": ok}
                    for n, m, g, ok in targets],
    }
    return "\n".join(lines), raw


# --- main ---------------------------------------------------------------------------------

def build_floor() -> None:
    log("building the floor filter (bench/floor)")
    result = subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--target", "wasm32-wasip1",
         "--manifest-path", str(FLOOR_DIR / "Cargo.toml")],
        cwd=ROOT, timeout=1800)
    if result.returncode != 0 or not FLOOR_WASM.exists():
        die("could not build bench/floor")


def main() -> int:
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()
    for tool in ("wrk",):
        if not shutil.which(tool):
            die(f"{tool} not found: apt-get install -y wrk (`make bench` installs it: "
                ".ci/deps --bench)")
    if not CLI.exists():
        die(f"{CLI} not found: make cli")
    if not WASM.exists():
        die(f"{WASM} not found: make build")
    if not HAVE_TASKSET:
        log("taskset missing or one CPU: Envoy and wrk are not pinned")
    WORK.mkdir(parents=True, exist_ok=True)
    build_floor()
    cmd = envoy_command()
    keys = ensure_keys()
    token_files = ensure_tokens(keys)
    token_files[(EXCHANGE_ALG, "opaque")] = opaque_token_file()
    global STATUS_LIST_FILE
    token_files[(STATUS_ALG, "status")], STATUS_LIST_FILE = status_files(keys)
    keyset = jwks(keys)
    vs = variants()
    if not vs:
        die(f"BENCH_ONLY={ONLY!r} selects no variant")

    load_start = loadavg()
    info = main_run(cmd, keyset, token_files, vs)
    binary = [info["envoy_binary"]] if info.get("envoy_binary") else cmd
    size = size_phase()
    opt_wasm = WORK / "tokengate.opt.wasm" if size.get("opt") else None
    startup = startup_phase(binary, keyset, token_files, opt_wasm) if STARTUP_RUNS > 0 else {}

    envoy_version = subprocess.run(binary + ["--version"], capture_output=True, text=True,
                                   timeout=60).stdout.strip()
    m = re.search(r"version:\s*(\S+)", envoy_version)
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    dirty = git("status", "--porcelain", "--untracked-files=no")
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "load_start": load_start,
        "load_end": loadavg(),
        "envoy_version": m.group(1) if m else envoy_version or "unknown",
        "wrk": (wrk_version.split(" Copyright")[0].strip() or "wrk"),
        "tokengate_version": run_cli(["version"]).strip().removeprefix("tokengate "),
        "git_rev": (git("rev-parse", "--short=12", "HEAD") or "unknown")
                   + (" (with uncommitted changes)" if dirty else ""),
        "wasm_path": os.path.relpath(WASM, ROOT),
        "wasm_sha": file_sha(WASM),
    }
    text, raw = report(vs, env, startup, size, info, time.monotonic() - started)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    OUT.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
    print(text)
    log(f"written to {os.path.relpath(OUT, ROOT)} (raw numbers: "
        f"{os.path.relpath(OUT.with_suffix('.json'), ROOT)})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        stop_all()

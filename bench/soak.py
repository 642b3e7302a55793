#!/usr/bin/env python3
"""tokengate soak (`make soak`, not part of `make test`). Python 3 standard library only.

One Envoy (--concurrency 1, on 127.0.0.1 only) running dist/tokengate.wasm in front of a
stdlib upstream, for SOAK_SECONDS, with mixed traffic from bounded Python clients:

  cached    the current key's one token, repeated (the filter's cache answers)    → 200
  unique    the current key's SOAK_UNIQUE_TOKENS tokens, cycling (more than the
            4096 the filter caches per worker: mostly misses, full verification)  → 200
  badsig    a unique token with one signature character changed (current kid)     → 401
  unknown   tokens signed by keys whose kid the JWKS never holds                  → 401
  anon      GET /healthz, an `"allow": "anonymous"` rule, no token                → 200

The provider's keys come from a JWKS endpoint in this process (127.0.0.1, through the
Envoy cluster `idp`, `cache_secs` 30, `timeout_ms` 1000, `unknown_kid_refetch_secs` 5)
that re-reads its key set on every request, and that
  - ROTATES every SOAK_ROTATE_SECONDS: the next key is published; SOAK_SWITCH_SECONDS later
    (longer than `cache_secs` plus retries, as an identity provider would wait) the
    clients switch to tokens minted with it (it is now the current key); 10 s later the
    old key is removed. Key algorithms cycle ES256 → EdDSA → RS256.
  - FAILS every SOAK_FAULT_EVERY seconds for SOAK_FAULT_SECONDS, alternately answering 500
    and hanging (each request held SOAK_HANG_SECONDS, longer than the fetch timeout, then
    500). The filter should keep serving the last good keys (stale) meanwhile.

Every SOAK_SAMPLE_SECONDS: wasm linear memory of each VM and Envoy's RSS (bench/run.py's
`memory`), the filter's `wasmcustom.tokengate.*` counters, Envoy's wasm stats and 5xx
counts. Prints the samples and a verdict; exits 0 when the verdict passes, 1 otherwise
(2 when it could not run).

Settings (environment): SOAK_SECONDS (600), SOAK_SAMPLE_SECONDS (10), SOAK_RATE (total
requests/s, 300), SOAK_CLIENTS (client threads, 4), SOAK_UNIQUE_TOKENS (per key, 5000),
SOAK_ROTATE_SECONDS (60), SOAK_SWITCH_SECONDS (45), SOAK_FAULT_EVERY (45),
SOAK_FAULT_SECONDS (8), SOAK_HANG_SECONDS (3), SOAK_FLAT_KIB (wasm memory growth allowed
over the last half, 1024), SOAK_RSS_FLAT_MIB (Envoy RSS growth allowed over the last half,
32), ENVOY, TOKENGATE_CLI, TOKENGATE_WASM.
"""

from __future__ import annotations

import collections
import http.client
import http.server
import json
import random
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  bench/run.py: Envoy, CLI, stats and memory helpers

env_int = bench.env_int
SECONDS = env_int("SOAK_SECONDS", 600)
SAMPLE = env_int("SOAK_SAMPLE_SECONDS", 10)
RATE = env_int("SOAK_RATE", 300)
CLIENTS = env_int("SOAK_CLIENTS", 4)
UNIQUE = env_int("SOAK_UNIQUE_TOKENS", 5000)
ROTATE = env_int("SOAK_ROTATE_SECONDS", 60)
SWITCH = env_int("SOAK_SWITCH_SECONDS", 45)
REMOVE_AFTER = 10  # seconds after the switch, the old key leaves the JWKS
FAULT_EVERY = env_int("SOAK_FAULT_EVERY", 45)
FAULT_SECONDS = env_int("SOAK_FAULT_SECONDS", 8)
HANG = env_int("SOAK_HANG_SECONDS", 3)
FLAT_BYTES = env_int("SOAK_FLAT_KIB", 1024) * 1024
RSS_FLAT_BYTES = env_int("SOAK_RSS_FLAT_MIB", 32) << 20
CACHE_SECS, TIMEOUT_MS, REFETCH_SECS = 30, 1000, 5
ALGS = ["ES256", "EdDSA", "RS256"]
MIX = [("cached", 25), ("unique", 35), ("badsig", 15), ("unknown", 10), ("anon", 15)]
EXPECT = {"cached": 200, "unique": 200, "badsig": 401, "unknown": 401, "anon": 200}
WORK = bench.WORK / "soak"
bench.WORK = WORK  # start_envoy writes its config and logs there


def log(message: str) -> None:
    print(f"soak: {message}", file=sys.stderr, flush=True)


# --- the JWKS endpoint and the upstream -----------------------------------------------------

class Idp:
    """GET /jwks.json: the key set in `self.keys`, read on every request; `self.fault` is
    None, "500" or "hang". Counts answers by kind."""

    def __init__(self):
        self.lock = threading.Lock()
        self.keys: list[dict] = []
        self.fault: str | None = None
        self.counts: collections.Counter = collections.Counter()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args):
                pass

            def send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                with outer.lock:
                    fault, keys = outer.fault, list(outer.keys)
                if self.path != "/jwks.json":
                    self.send(404, b"{}")
                    return
                if fault == "hang":
                    with outer.lock:
                        outer.counts["hang"] += 1
                    time.sleep(HANG)  # bounded; the filter has given up after TIMEOUT_MS
                    self.close_connection = True
                    try:
                        self.send(500, b"{}")
                    except OSError:
                        pass
                    return
                if fault == "500":
                    with outer.lock:
                        outer.counts["500"] += 1
                    self.send(500, b'{"error":"injected"}')
                    return
                with outer.lock:
                    outer.counts["200"] += 1
                self.send(200, json.dumps({"keys": keys}).encode())

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                         daemon=True).start()

    def set(self, keys=None, fault="same") -> None:
        with self.lock:
            if keys is not None:
                self.keys = list(keys)
            if fault != "same":
                self.fault = fault

    def kids(self) -> str:
        with self.lock:
            return ",".join(k["kid"].removeprefix("soak-") for k in self.keys)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Upstream:
    """The service behind the filter: 200 "ok" to anything."""

    def __init__(self):
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("content-length", "3")
                self.end_headers()
                self.wfile.write(b"ok\n")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                         daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- keys and tokens --------------------------------------------------------------------------

def keygen(folder: Path, alg: str, kid: str) -> tuple[Path, dict]:
    """A private key file and its public JWK (`tokengate keygen` into a folder of its own)."""
    if folder.exists():
        shutil.rmtree(folder)
    bench.run_cli(["keygen", "--alg", alg, "--kid", kid, "--out", str(folder)])
    public = json.loads((folder / "jwks.json").read_text())["keys"]
    return folder / f"{kid}.jwk", next(k for k in public if k.get("kid") == kid)


def tamper(token: str) -> str:
    """The same token with one character of the signature changed (not the last, whose
    low bits may be padding): a bad signature under a known kid."""
    head, payload, sig = token.split(".")
    i = len(sig) // 2
    sig = sig[:i] + ("A" if sig[i] != "A" else "B") + sig[i + 1:]
    return ".".join((head, payload, sig))


def generations(count: int) -> list[dict]:
    gens = []
    for n in range(count):
        alg = ALGS[n % len(ALGS)]
        kid = f"soak-{n}-{alg.lower()}"
        key, public = keygen(WORK / "keys" / f"gen-{n}", alg, kid)
        started = time.monotonic()
        tokens = bench.mint(key, [f"soak-{n}-{i:06d}" for i in range(UNIQUE + 1)])
        log(f"key {kid}: {len(tokens)} tokens in {time.monotonic() - started:.1f} s")
        gens.append({"n": n, "kid": kid, "jwk": public, "cached": tokens[0],
                     "unique": tokens[1:], "bad": [tamper(t) for t in tokens[1:1001]]})
    return gens


def unknown_tokens() -> list[str]:
    out = []
    for i, alg in enumerate(("ES256", "EdDSA")):
        key, _ = keygen(WORK / "keys" / f"rogue-{i}", alg, f"rogue-{i}")
        out += bench.mint(key, [f"rogue-{i}-{j:04d}" for j in range(100)])
    return out


# --- Envoy ------------------------------------------------------------------------------------

def envoy_config(admin: int, port: int, idp: Idp, upstream: Upstream) -> dict:
    document = {
        "realm": "soak",
        "providers": {"soak": {
            "issuer": bench.ISSUER,
            "audiences": [bench.AUDIENCE],
            "jwks": {"uri": f"http://127.0.0.1:{idp.port}/jwks.json", "cluster": "idp",
                     "cache_secs": CACHE_SECS, "timeout_ms": TIMEOUT_MS,
                     "unknown_kid_refetch_secs": REFETCH_SECS},
            "algorithms": ALGS,
        }},
        "rules": [
            {"name": "health", "match": {"path": {"prefix": "/healthz"}}, "allow": "anonymous"},
            {"name": "api", "match": {}, "authn": {"any": ["soak"]}},
        ],
    }
    filt = bench.wasm_filter("tokengate", "tokengate", bench.WASM, json.dumps(document))
    lst = bench.listener("soak", port, [filt])
    route = lst["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
    route["virtual_hosts"][0]["routes"] = [
        {"match": {"prefix": "/"}, "route": {"cluster": "backend", "timeout": "5s"}}]
    return bench.envoy_config(admin, [lst], [bench.auth_cluster(idp.port, "idp"),
                                             bench.auth_cluster(upstream.port, "backend")])


# --- clients ----------------------------------------------------------------------------------

class Traffic:
    def __init__(self, port: int, gen: dict, unknown: list[str]):
        self.port = port
        self.gen = gen  # the current key's tokens; replaced whole on a switch
        self.unknown = unknown
        self.lock = threading.Lock()
        self.status: collections.Counter = collections.Counter()  # (kind, status) -> n
        self.wrong: list[str] = []  # the first unexpected answers
        self.wrong_count = collections.Counter()
        self.errors = collections.Counter()
        self.sent = 0
        self.stop_at = 0.0

    def request(self, rng: random.Random, index: int) -> tuple[str, str, dict]:
        kind = rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
        gen = self.gen
        if kind == "anon":
            return kind, "/healthz", {}
        token = {"cached": lambda: gen["cached"],
                 "unique": lambda: gen["unique"][index % len(gen["unique"])],
                 "badsig": lambda: gen["bad"][index % len(gen["bad"])],
                 "unknown": lambda: self.unknown[index % len(self.unknown)]}[kind]()
        return kind, f"/api/{kind}", {"authorization": f"Bearer {token}",
                                      "x-soak-kid": gen["kid"]}

    def client(self, seed: int) -> None:
        rng = random.Random(seed)
        per_thread = RATE / CLIENTS
        conn = None
        index = seed * 7919
        next_at = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= self.stop_at:
                break
            if next_at > now:
                time.sleep(min(next_at - now, self.stop_at - now))
                continue
            next_at += 1.0 / per_thread
            index += 1
            kind, path, headers = self.request(rng, index)
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                status = resp.status
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                if conn is not None:
                    conn.close()
                conn = None
                with self.lock:
                    self.errors[f"{kind}: {type(e).__name__}"] += 1
                continue
            with self.lock:
                self.sent += 1
                self.status[(kind, status)] += 1
                if status != EXPECT[kind]:
                    self.wrong_count[kind] += 1
                    if len(self.wrong) < 20:
                        self.wrong.append(
                            f"t={time.monotonic() - T0:.0f}s {kind} kid={headers.get('x-soak-kid')}"
                            f" → {status} {body[:120]!r}")
        if conn is not None:
            conn.close()

    def snapshot(self):
        with self.lock:
            return self.sent, dict(self.status), sum(self.wrong_count.values()), \
                sum(self.errors.values())


# --- the run ----------------------------------------------------------------------------------

T0 = time.monotonic()


def wasm_stats(s: dict) -> dict:
    return {k: v for k, v in s.items()
            if k.startswith(("wasm.", "wasm_vm.")) or ".wasm." in k and "wasmcustom" not in k}


def tg(s: dict, name: str) -> int:
    return s.get(f"wasmcustom.tokengate.{name}", 0)


def sample(admin: int, pid: int, traffic: Traffic, idp: Idp, t: float) -> dict:
    s = bench.stats(admin)
    m = bench.memory(pid)
    sent, status, wrong, errors = traffic.snapshot()
    return {"t": t, "rss": m["rss"], "wasm": m["wasm"], "vms": [v["size"] for v in m["vms"]],
            "stats": s, "wasm_stats": wasm_stats(s), "sent": sent, "status": status,
            "wrong": wrong, "errors": errors, "kids": idp.kids(), "fault": idp.fault or "-"}


def table(samples: list[dict]) -> str:
    cols = ["t s", "wasm MiB", "RSS MiB", "req", "allowed", "bad_sig", "unk_kid", "keys_unav",
            "hit", "miss", "jwks ok", "jwks fail", "stale", "VMs", "5xx", "wrong", "jwks kids",
            "fault"]
    rows = []
    prev = None
    for x in samples:
        s = x["stats"]
        vm = {k.rsplit(".", 1)[-1]: v for k, v in x["wasm_stats"].items()
              if k.startswith("wasm.envoy.wasm.runtime.v8.")}
        rows.append([
            f"{x['t']:.0f}", f"{x['wasm'] / 2**20:.2f}", f"{x['rss'] / 2**20:.1f}",
            str(x["sent"] - (prev["sent"] if prev else 0)),
            str(tg(s, "allowed")), str(tg(s, "denied.bad_signature")),
            str(tg(s, "denied.unknown_kid")), str(tg(s, "denied.keys_unavailable")),
            str(tg(s, "cache.hit")), str(tg(s, "cache.miss")),
            str(tg(s, "jwks.fetch.success")), str(tg(s, "jwks.fetch.failure")),
            str(tg(s, "jwks.stale_served")),
            f"{vm.get('created', '?')}/{vm.get('active', '?')}",
            str(s.get("http.soak.downstream_rq_5xx", 0)), str(x["wrong"]), x["kids"], x["fault"]])
        prev = x
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = lambda r: "| " + " | ".join(v.rjust(w) for v, w in zip(r, widths)) + " |"
    return "\n".join([line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(r) for r in rows])


def main() -> int:
    global T0
    signal.signal(signal.SIGTERM, bench.on_signal)
    signal.signal(signal.SIGINT, bench.on_signal)
    for path, what in ((bench.CLI, "make cli"), (bench.WASM, "make build")):
        if not path.exists():
            log(f"{path} not found: {what}")
            return 2
    WORK.mkdir(parents=True, exist_ok=True)
    cmd = bench.envoy_command()
    count = 1 + max(0, (SECONDS - 10) // ROTATE + 1)
    log(f"{SECONDS} s; making {count} keys ({', '.join(ALGS)} in turn) and their tokens")
    gens = generations(count)
    unknown = unknown_tokens()

    idp, upstream = Idp(), Upstream()
    idp.set(keys=[gens[0]["jwk"]])
    admin, port = bench.free_ports(2)
    proc = bench.start_envoy(cmd, envoy_config(admin, port, idp, upstream), "soak")
    bench.wait_ready(proc, admin, "soak")
    pid = bench.envoy_pid(proc)
    traffic = Traffic(port, gens[0], unknown)
    # The first fetch: a valid token must pass before the clock starts.
    deadline = time.monotonic() + 20
    while True:
        status, _ = bench.http_get(port, "/api/warm",
                                   {"authorization": f"Bearer {gens[0]['cached']}"}, timeout=5)
        if status == 200:
            break
        if time.monotonic() > deadline:
            log(f"the first valid token still gets {status} after 20 s")
            return 2
        time.sleep(0.5)

    T0 = time.monotonic()
    end = T0 + SECONDS
    traffic.stop_at = end
    events: list[str] = []
    clients = [threading.Thread(target=traffic.client, args=(i,), daemon=True)
               for i in range(CLIENTS)]
    for c in clients:
        c.start()

    # The schedule: (time, action), run in order by this thread between samples.
    plan = []
    for n in range(1, count):
        at = 10 + (n - 1) * ROTATE
        plan += [(at, "publish", n), (at + SWITCH, "switch", n), (at + SWITCH + REMOVE_AFTER,
                                                                 "remove", n - 1)]
    for i, at in enumerate(range(FAULT_EVERY // 2, SECONDS - FAULT_SECONDS, FAULT_EVERY)):
        kind = "500" if i % 2 == 0 else "hang"
        plan += [(at, "fault", kind), (at + FAULT_SECONDS, "fault", None)]
    plan += [(t, "sample", None) for t in range(0, SECONDS + 1, SAMPLE)]
    order = {"remove": 0, "publish": 1, "switch": 2, "fault": 3, "sample": 4}
    plan = sorted((p for p in plan if p[0] <= SECONDS), key=lambda p: (p[0], order[p[1]]))

    published = [gens[0]]
    samples = []
    for at, action, arg in plan:
        delay = T0 + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if proc.poll() is not None:
            events.append(f"t={at}s Envoy exited ({proc.returncode})")
            break
        if action == "publish":
            published.append(gens[arg])
            idp.set(keys=[g["jwk"] for g in published])
        elif action == "switch":
            traffic.gen = gens[arg]
        elif action == "remove":
            published = [g for g in published if g["n"] != arg]
            idp.set(keys=[g["jwk"] for g in published])
        elif action == "fault":
            idp.set(fault=arg)
        if action != "sample":
            events.append(f"t={at}s {action} {arg if arg is not None else 'off'}")
            log(events[-1])
            continue
        x = sample(admin, pid, traffic, idp, time.monotonic() - T0)
        samples.append(x)
        log(f"t={x['t']:.0f}s wasm {x['wasm'] / 2**20:.2f} MiB, RSS {x['rss'] / 2**20:.1f} MiB, "
            f"{x['sent']} requests, {x['wrong']} unexpected")
    idp.set(fault=None)
    for c in clients:
        c.join(timeout=30)

    # After the run: a token of the first key, long removed from the JWKS (information).
    after = {}
    if count > 2:
        for kind, tok in (("cached", gens[0]["cached"]), ("unique", gens[0]["unique"][-1])):
            try:
                after[kind] = bench.http_get(port, "/api/removed",
                                             {"authorization": f"Bearer {tok}"}, timeout=5)[0]
            except OSError as e:
                after[kind] = str(e)
    alive = proc.poll() is None
    return report(samples, traffic, idp, events, alive, after)


def report(samples, traffic: Traffic, idp: Idp, events, alive: bool, after: dict) -> int:
    print("\n## Samples\n")
    print(table(samples))
    print("\nwasm MiB: the VMs' linear memory summed (bench/run.py `memory`); VMs: "
          "wasm.envoy.wasm.runtime.v8 created/active; 5xx: http.soak.downstream_rq_5xx; "
          "wrong: client answers not the expected status; filter counters cumulative.\n")
    print("## Events\n")
    for e in events:
        print(f"- {e}")
    first, last = samples[0], samples[-1]
    print("\n## Requests by kind and status\n")
    for kind, want in EXPECT.items():
        got = {st: n for (k, st), n in sorted(last["status"].items()) if k == kind}
        print(f"- {kind} (expect {want}): {got}")
    print(f"- client errors: {dict(traffic.errors) or 0}")
    print(f"- JWKS endpoint answers: {dict(idp.counts)}")
    if traffic.wrong:
        print("- first unexpected answers:")
        for w in traffic.wrong:
            print(f"  - {w}")
    if after:
        print(f"- after the run, tokens of key {0} (removed from the JWKS long before): "
              f"{after} (information; the verdict does not judge it)")
    print("\nAll wasm stats at the end: " + json.dumps(last["wasm_stats"], sort_keys=True))

    checks = []
    half = [x for x in samples if x["t"] >= samples[-1]["t"] / 2]
    base = half[0]
    if base["vms"]:
        grow = max(x["wasm"] for x in half) - base["wasm"]
        checks.append((grow <= FLAT_BYTES, "wasm memory flat over the last half",
                       f"{base['wasm'] / 2**20:.2f} → {max(x['wasm'] for x in half) / 2**20:.2f}"
                       f" MiB (+{grow / 1024:.0f} KiB; allowed {FLAT_BYTES // 1024} KiB)"))
    else:
        checks.append((False, "wasm memory flat over the last half",
                       "the VMs' memory was not found in the process map"))
    rgrow = max(x["rss"] for x in half) - base["rss"]
    checks.append((rgrow <= RSS_FLAT_BYTES, "Envoy RSS flat over the last half",
                   f"+{rgrow / 2**20:.1f} MiB (allowed {RSS_FLAT_BYTES >> 20} MiB)"))
    changed = {k: (first["wasm_stats"].get(k), v) for k, v in last["wasm_stats"].items()
               if first["wasm_stats"].get(k) != v and not k.endswith(("bytes", "size"))}
    checks.append((alive and not changed, "no VM restart, Envoy alive",
                   ("Envoy exited; " if not alive else "")
                   + (f"wasm stats changed: {changed}" if changed
                      else f"{len(last['wasm_stats'])} wasm stats unchanged")))
    five = sum(n for (k, st), n in last["status"].items() if st >= 500)
    envoy5 = last["stats"].get("http.soak.downstream_rq_5xx", 0)
    unav = tg(last["stats"], "denied.keys_unavailable")
    checks.append((five == 0 and envoy5 == 0, "no 5xx (stale keys cover every JWKS fault)",
                   f"{five} seen by clients, {envoy5} by Envoy, {unav} denied.keys_unavailable"))
    valid = {k: sum(n for (kk, st), n in last["status"].items() if kk == k) for k in EXPECT}
    fails = {k: traffic.wrong_count[k] for k in EXPECT}
    checks.append((fails["cached"] + fails["unique"] == 0 and valid["unique"] > 0,
                   "every valid token accepted across rotations",
                   f"{fails['cached']} of {valid['cached']} cached, {fails['unique']} of "
                   f"{valid['unique']} unique not 200"))
    checks.append((fails["badsig"] + fails["unknown"] == 0 and valid["badsig"] > 0,
                   "bad tokens refused with 401",
                   f"{fails['badsig']} of {valid['badsig']} bad-signature, {fails['unknown']} "
                   f"of {valid['unknown']} unknown-kid not 401"))
    checks.append((fails["anon"] == 0, "anonymous route 200",
                   f"{fails['anon']} of {valid['anon']} not 200"))
    checks.append((sum(traffic.errors.values()) == 0, "no client errors",
                   f"{dict(traffic.errors) or 'none'}"))
    s = last["stats"]
    checks.append((tg(s, "jwks.fetch.failure") > 0 and idp.counts["500"] + idp.counts["hang"] > 0,
                   "faults exercised",
                   f"jwks.fetch.failure {tg(s, 'jwks.fetch.failure')}, stale_served "
                   f"{tg(s, 'jwks.stale_served')}, endpoint 500s {idp.counts['500']}, hangs "
                   f"{idp.counts['hang']}"))
    print("\n## Verdict\n")
    for ok, name, why in checks:
        print(f"- {'PASS' if ok else 'FAIL'} {name}: {why}")
    passed = all(ok for ok, _, _ in checks)
    print(f"\n{'PASS' if passed else 'FAIL'} ({SECONDS} s, {last['sent']} requests)")
    return 0 if passed else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        bench.stop_all()

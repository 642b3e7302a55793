#!/usr/bin/env bash
# The browser login in a real browser: headless Chromium opens a protected page of the demo
# (`make run`'s envoy/demo/run.sh, started here on free ports in a scratch directory), is
# sent to the demo IdP's sign-in form, types a user name and the password into it and
# clicks "Sign in" (DevTools protocol input events: a real form submission), comes back
# through the filter's callback, and must end on the page showing the echoed identity.
# Then it checks the session cookie as the browser keeps it (HttpOnly, SameSite=Lax, not
# readable from the page), signs out, and must be sent to the sign-in form again.
#
#   tests/browser/login.sh            needs dist/tokengate.wasm, target/release/tokengate
#                                     and Envoy (`make build cli envoy`)
#
# Environment: ENVOY, TOKENGATE_WASM, TOKENGATE_CLI (as run.sh), CHROMIUM (the browser
# binary; default chromium, installed with apt-get when missing), BROWSER_TIMEOUT (60: the
# bound of every wait, in seconds), KEEP=1 keeps the scratch directory.
# Exit status: 0 when every step passed; on failure, the step, what the page showed, and
# the demo's logs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
TIMEOUT="${BROWSER_TIMEOUT:-60}"
USER_NAME="chromium-user"

die() { echo "login.sh: $*" >&2; exit 1; }
say() { echo "login.sh: $*" >&2; }

# --- Chromium --------------------------------------------------------------------------
find_chromium() {
    local candidate
    for candidate in "${CHROMIUM:-}" chromium chromium-browser google-chrome; do
        [[ -n $candidate ]] && command -v "$candidate" >/dev/null && { command -v "$candidate"; return 0; }
    done
    return 1
}
CHROME="$(find_chromium)" || {
    say "Chromium not found: installing Debian's chromium"
    if [[ $(id -u) == 0 ]]; then
        SUDO=()
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        die "Chromium is missing and apt-get needs root: install it (apt-get install chromium) or set CHROMIUM"
    fi
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 "${SUDO[@]}" apt-get update -qq >/dev/null || die "apt-get update failed"
    timeout 900 "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium >/dev/null \
        || die "apt-get install chromium failed"
    CHROME="$(find_chromium)" || die "chromium still not found after apt-get install"
}
say "browser: $CHROME ($("$CHROME" --version 2>/dev/null || echo unknown version))"

# --- the demo, on free ports -------------------------------------------------------------
[[ -f "${TOKENGATE_WASM:-$ROOT/dist/tokengate.wasm}" ]] || die "dist/tokengate.wasm missing: make build"
[[ -x "${TOKENGATE_CLI:-$ROOT/target/release/tokengate}" ]] || die "target/release/tokengate missing: make cli"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/tokengate-browser.XXXXXX")"
read -r LISTEN_PORT ADMIN_PORT UPSTREAM_PORT IDP_PORT POLICY_PORT < <(python3 - <<'PY'
import socket
sockets = [socket.socket() for _ in range(5)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
for s in sockets:
    s.close()
PY
)
export LISTEN_PORT ADMIN_PORT UPSTREAM_PORT IDP_PORT POLICY_PORT
export RUN_DIR="$WORK/run"

DEMO_PID=""
CHROME_PID=""
cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    # Only what this script started, by process id: Chromium, then the demo (whose own trap
    # stops Envoy, the IdP, the echo and policy services).
    for pid in $CHROME_PID $DEMO_PID; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for ((i = 0; i < 100; i++)); do
        local alive=0
        for pid in $CHROME_PID $DEMO_PID; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [[ $alive == 0 ]] && break
        sleep 0.1
    done
    for pid in $CHROME_PID $DEMO_PID; do
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $rc != 0 ]]; then
        for f in "$WORK/demo.out" "$RUN_DIR/envoy.log" "$RUN_DIR/idp.log" "$WORK/chrome.log"; do
            [[ -s $f ]] || continue
            echo "---- $f (last 25 lines)" >&2
            tail -n 25 "$f" >&2
        done
    fi
    if [[ ${KEEP:-0} == 1 ]]; then
        say "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$ROOT/envoy/demo/run.sh" >"$WORK/demo.out" 2>&1 &
DEMO_PID=$!
deadline=$((SECONDS + TIMEOUT))
until grep -q "tokengate demo is running" "$WORK/demo.out" 2>/dev/null; do
    kill -0 "$DEMO_PID" 2>/dev/null || die "the demo exited during startup"
    ((SECONDS < deadline)) || die "the demo not running after ${TIMEOUT}s"
    sleep 0.2
done
say "demo running: Envoy on $LISTEN_PORT, IdP on $IDP_PORT"

# --- the browser ----------------------------------------------------------------------
# Its own profile (no cookies from anywhere else), DevTools on a port it chooses itself
# (written to DevToolsActivePort). --no-sandbox: root in a container has no user namespace.
"$CHROME" --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run \
    --no-default-browser-check --disable-extensions --disable-background-networking \
    --disable-component-update --disable-sync --password-store=basic \
    --user-data-dir="$WORK/profile" --remote-debugging-address=127.0.0.1 \
    --remote-debugging-port=0 about:blank >"$WORK/chrome.log" 2>&1 &
CHROME_PID=$!
deadline=$((SECONDS + TIMEOUT))
until [[ -s "$WORK/profile/DevToolsActivePort" ]]; do
    kill -0 "$CHROME_PID" 2>/dev/null || die "Chromium exited during startup"
    ((SECONDS < deadline)) || die "Chromium's DevTools not up after ${TIMEOUT}s"
    sleep 0.1
done
DEVTOOLS_PORT="$(head -n 1 "$WORK/profile/DevToolsActivePort")"

# --- the steps, over the DevTools protocol (Python standard library only) -----------------
python3 - "$DEVTOOLS_PORT" "http://localhost:$LISTEN_PORT" "http://127.0.0.1:$IDP_PORT/demo" \
    "$USER_NAME" "$TIMEOUT" <<'PY'
import base64, json, os, socket, struct, sys, time, urllib.request

devtools_port, app, idp, user, timeout = sys.argv[1:6]
TIMEOUT = float(timeout)
WEB = app + "/web/"


class Failure(Exception):
    pass


class Cdp:
    """A minimal WebSocket client (RFC 6455: masked client frames, no extensions) speaking the
    Chrome DevTools protocol to one page."""

    def __init__(self, ws_url):
        rest = ws_url.split("://", 1)[1]
        hostport, path = rest.split("/", 1)
        host, port = hostport.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise Failure("DevTools closed the WebSocket handshake")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise Failure(f"DevTools refused the WebSocket: {head[:200]!r}")
        self.buffer = head.split(b"\r\n\r\n", 1)[1]
        self.next_id = 0
        self.events = []

    def _read(self, n):
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Failure("DevTools closed the connection")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def _frame(self):
        first, second = self._read(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack(">H", self._read(2))[0]
        elif length == 127:
            length = struct.unpack(">Q", self._read(8))[0]
        return first & 0x80, first & 0x0F, self._read(length)

    def receive(self):
        message = b""
        while True:
            fin, opcode, payload = self._frame()
            if opcode == 8:
                raise Failure("DevTools closed the WebSocket")
            if opcode in (0, 1, 2):
                message += payload
                if fin:
                    return json.loads(message)
            # ping/pong frames: ignored (Chrome does not ping its clients)

    def send(self, method, **params):
        self.next_id += 1
        data = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        mask = os.urandom(4)
        header = bytes([0x81])
        if len(data) < 126:
            header += bytes([0x80 | len(data)])
        elif len(data) < 65536:
            header += bytes([0x80 | 126]) + struct.pack(">H", len(data))
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", len(data))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(header + mask + masked)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            message = self.receive()
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise Failure(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)
        raise Failure(f"{method}: no answer within {TIMEOUT}s")

    def evaluate(self, expression):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise Failure(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")


def wait_for(cdp, what, expression, timeout=TIMEOUT):
    """Polls a page expression until it is truthy; the page's URL and text on failure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = cdp.evaluate(expression)
            if value:
                return value
        except Failure:
            pass  # between two documents: try again
        time.sleep(0.1)
    state = page_state(cdp)
    raise Failure(f"timed out after {timeout}s waiting for {what}; the page: {state}")


def page_state(cdp):
    try:
        return cdp.evaluate("JSON.stringify({url: location.href, text: (document.body ? "
                            "document.body.innerText : '').slice(0, 600)})")
    except Failure as e:
        return f"(unreadable: {e})"


def step(message):
    print(f"login.sh: {message}", file=sys.stderr, flush=True)


def click(cdp, element_id):
    """A mouse click in the middle of the element, as a user's (Input events, not JS)."""
    box = cdp.evaluate(f"(() => {{ const r = document.getElementById('{element_id}')"
                       ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
    x, y = box
    for kind in ("mousePressed", "mouseReleased"):
        cdp.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)


def type_into(cdp, element_id, text):
    cdp.evaluate(f"document.getElementById('{element_id}').focus()")
    cdp.send("Input.insertText", text=text)


def idp_requests():
    """The demo IdP's request counts ({"<METHOD> <path>": n}, GETs by bare path)."""
    with urllib.request.urlopen(idp + "/stats", timeout=TIMEOUT) as r:
        return json.load(r)["requests"]


def main():
    with urllib.request.urlopen(f"http://127.0.0.1:{devtools_port}/json/list", timeout=TIMEOUT) as r:
        pages = [t for t in json.load(r) if t.get("type") == "page"]
    if not pages:
        raise Failure("no page target in Chromium")
    cdp = Cdp(pages[0]["webSocketDebuggerUrl"])
    cdp.send("Page.enable")
    cdp.send("Network.enable")

    step(f"1. open {WEB}")
    cdp.send("Page.navigate", url=WEB)
    wait_for(cdp, "the IdP's sign-in form",
             f"location.href.startsWith({json.dumps(idp + '/authorize?')}) && "
             "!!document.getElementById('username') && document.readyState === 'complete'")
    url = cdp.evaluate("location.href")
    for part in ("response_type=code", "code_challenge_method=S256", "state=", "nonce="):
        if part not in url:
            raise Failure(f"the authorization request lacks {part}: {url}")
    cookies = cdp.send("Network.getCookies", urls=[app + "/oauth2/callback"])["cookies"]
    if not any(c["name"].startswith("tg_session.login.") and c["httpOnly"] for c in cookies):
        raise Failure(f"no HttpOnly login cookie for the callback: {[c['name'] for c in cookies]}")

    step(f"2. sign in as {user} (typed, then a click on Sign in)")
    type_into(cdp, "username", user)
    type_into(cdp, "password", "demo")
    click(cdp, "submit")
    wait_for(cdp, "the protected page with the identity",
             f"location.href === {json.dumps(WEB)} && document.body && "
             f"document.body.innerText.includes({json.dumps(user)})")
    text = cdp.evaluate("document.body.innerText")
    try:
        echo = json.loads(text)
    except ValueError:
        raise Failure(f"the page is not the echo's JSON: {text[:300]!r}")
    if echo.get("identity", {}).get("x-user-id") != user:
        raise Failure(f"x-user-id is {echo.get('identity', {}).get('x-user-id')!r}, expected {user}")
    if "tg_session" in echo.get("headers", {}).get("cookie", ""):
        raise Failure("the session cookie reached the upstream")
    step(f"   the page shows x-user-id {user}")

    step("3. the session cookie as the browser keeps it")
    cookies = {c["name"]: c for c in cdp.send("Network.getCookies", urls=[WEB])["cookies"]}
    session = cookies.get("tg_session")
    if session is None:
        raise Failure(f"no tg_session cookie: {sorted(cookies)}")
    if not session["httpOnly"] or session.get("sameSite") != "Lax" or session["path"] != "/":
        raise Failure(f"tg_session attributes: {session}")
    if any(n.startswith("tg_session.login.") for n in cookies):
        raise Failure(f"a login cookie is left: {sorted(cookies)}")
    if "tg_session" in cdp.evaluate("document.cookie"):
        raise Failure("the page's scripts can read the session cookie")

    step("4. reload: still signed in, no trip to the IdP")
    before = idp_requests()
    cdp.send("Page.reload")
    time.sleep(0.3)
    wait_for(cdp, "the page again", f"location.href === {json.dumps(WEB)} && document.readyState === 'complete' "
             f"&& document.body.innerText.includes({json.dumps(user)})")
    after = idp_requests()
    for path in ("/demo/authorize", "POST /demo/token"):
        if after.get(path, 0) != before.get(path, 0):
            raise Failure(f"the reload went to the IdP ({path}): {before} -> {after}")

    step("5. sign out")
    cdp.send("Page.navigate", url=app + "/oauth2/logout")
    wait_for(cdp, "the IdP's signed-out page",
             f"location.href.startsWith({json.dumps(idp + '/logout?')}) && "
             f"!!document.getElementById('signed-out') && document.body.innerText.includes({json.dumps(user)})")
    remaining = [c["name"] for c in cdp.send("Network.getCookies", urls=[WEB])["cookies"]
                 if c["name"].startswith("tg_session")]
    if remaining:
        raise Failure(f"cookies left after logout: {remaining}")

    step("6. the protected page again: the sign-in form")
    cdp.send("Page.navigate", url=WEB)
    wait_for(cdp, "the IdP's sign-in form again",
             f"location.href.startsWith({json.dumps(idp + '/authorize?')}) && !!document.getElementById('username')")
    step("PASS: headless Chromium signed in through the IdP's form and saw its identity")


try:
    main()
except (Failure, OSError, ValueError) as e:
    print(f"login.sh: FAIL: {e}", file=sys.stderr)
    sys.exit(1)
PY

#!/usr/bin/env python3
"""Demo identity provider for `make run`: OIDC discovery, a JWKS, opaque tokens and sessions.

Keys (what tokengate's provider "demo" reads by OIDC discovery):

    GET  /demo/.well-known/openid-configuration
         {"issuer": "http://127.0.0.1:<port>/demo",
          "jwks_uri": "http://127.0.0.1:<port>/demo/jwks.json",
          "introspection_endpoint": ..., "token_endpoint": ..., "revocation_endpoint": ...}
    GET  /demo/jwks.json   the JWKS file named on the command line, re-read on every
                           request (rewrite the file to rotate keys), with
                           cache-control: max-age=300
    GET  /demo/stats       {"requests": {"<METHOD> <path>": count, ...}} -- for tests: how many
                           times each endpoint was asked for (this path itself not counted;
                           GETs are counted under the bare path, session lookups under
                           "/demo/sessions/{id}")

Opaque tokens and sessions (what tokengate's exchanges call; the gateway-centric and
session patterns). Tokens and sessions live in memory until they expire or are revoked:

    POST /demo/opaque      form sub=, scope=, expires_in= (seconds, default 3600),
                           client_id= (default demo-app): issues an opaque access token,
                           {"access_token": "<random>", "token_type": "Bearer", "expires_in": N}.
                           Demo only: anyone may ask, as if they had just logged in
    POST /demo/sessions    form sub=, scope=, expires_in=: starts a session,
                           {"session": "<random id>", "expires_in": N}
    POST /demo/revoke      RFC 7009, form token=: forgets the token or session; always 200
                           (demo: no client authentication)
    POST /demo/introspect  RFC 7662, form token=, HTTP Basic client authentication
                           (client id and secret form-urlencoded, then base64):
                           {"active": true, "sub", "scope", "iss", "exp", "iat", "aud",
                            "client_id", "token_type"} or {"active": false}. With
                           Accept: application/token-introspection+jwt (RFC 9701), the same
                           answer signed: a JWT with typ token-introspection+jwt, iss, aud =
                           the calling client's id, iat, and token_introspection: {...}
    POST /demo/token       RFC 8693 token exchange (HTTP Basic client authentication):
                           grant_type=urn:ietf:params:oauth:grant-type:token-exchange,
                           subject_token=<opaque token>, subject_token_type=
                           urn:ietf:params:oauth:token-type:access_token, optional audience=,
                           scope= (a subset of the token's), requested_token_type=
                           urn:ietf:params:oauth:token-type:jwt -> {"access_token": <JWT>,
                           "issued_token_type": "urn:ietf:params:oauth:token-type:jwt",
                           "token_type": "N_A", "expires_in": N}; a token that is not active
                           -> 400 {"error": "invalid_grant"}
    GET  /demo/sessions/{id}
                           200 with a JWT for the session's user (content-type
                           application/jwt), or 404

Browser login (OIDC authorization code flow with PKCE; what tokengate's `login` section
drives). Clients and their redirect URIs come from --client and --redirect-uri:

    GET  /demo/authorize   response_type=code, client_id, redirect_uri (registered, exact
                           match), scope (with openid), state, nonce, code_challenge,
                           code_challenge_method=S256: an HTML sign-in form (user name, and
                           the password "demo"). Anything wrong with client_id or
                           redirect_uri: a 400 page, never a redirect; anything else wrong:
                           a redirect back with error=...&state=...
    POST /demo/authorize   the form: 302 to redirect_uri?code=...&state=...&iss=<issuer>
                           (RFC 9207). A code is good for one redemption, for 60 seconds
    POST /demo/token       also grant_type=authorization_code (code, redirect_uri,
                           code_verifier: BASE64URL(SHA-256(verifier)) must be the
                           challenge) and grant_type=refresh_token: {"access_token": <JWT,
                           aud --audience>, "id_token": <JWT, aud = the client, nonce>,
                           "refresh_token", "token_type": "Bearer", "expires_in"}; a used,
                           expired or unknown code -> 400 invalid_grant
    GET  /demo/logout      RP-initiated logout: id_token_hint, post_logout_redirect_uri,
                           client_id. Forgets the user's refresh tokens; a "signed out" page
                           with a link to post_logout_redirect_uri when it is on the origin of
                           a registered redirect URI
Revocable JWTs (issue 14; the RevocationEndpoints section below):

    POST /demo/status-tokens   form sub=, scope=, expires_in= (default 3600): a JWT with a
                           Token Status List reference, status.status_list {idx, uri},
                           -> {"access_token": <JWT>, "idx": N}
    GET  /demo/statuslists/1   the Status List Token (typ statuslist+jwt, sub = its URI,
                           iat, exp, ttl = --status-ttl, 2 bits per entry), content-type
                           application/statuslist+jwt
    POST /demo/statuslists/1   form idx=, status= (0 VALID, 1 INVALID = revoked (default),
                           2 SUSPENDED): sets an entry
    POST /demo/backchannel-logout
                           form sub= (and/or sid=), target= (the gateway's back-channel
                           logout URL, http://127.0.0.1 only): signs a logout token (OIDC
                           Back-Channel Logout 1.0, aud = --logout-audience) and POSTs it
                           there as form logout_token; answers with the gateway's status

Wrong client credentials at /introspect or /token: 401 {"error": "invalid_client"}.
The JWTs (signed introspection answers, exchanged tokens, session tokens) are RS256,
signed with --signing-key (a private JWK whose public half is in the served JWKS), so the
filter verifies them with the demo provider's keys. They carry iss = the issuer, and (but
for signed introspection answers) aud = --audience and exp at most --jwt-ttl seconds away,
never past the token's or session's own expiry.

Everything else: 404. Python standard library only; listens on 127.0.0.1 only.

    python3 envoy/demo/idp.py --port 9000 --signing-key .run/demo-rs256.jwk \\
        --audience demo-api --client gateway:s3cret --client web:s3cret \\
        --redirect-uri http://localhost:8080/oauth2/callback .run/jwks.json
"""

import argparse
import base64
import hashlib
import hmac
import html
import json
import re
import secrets
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, unquote_plus, urlencode, urlsplit

PREFIX = "/demo"
DISCOVERY_PATH = PREFIX + "/.well-known/openid-configuration"
JWKS_PATH = PREFIX + "/jwks.json"
STATS_PATH = PREFIX + "/stats"
OPAQUE_PATH = PREFIX + "/opaque"
SESSIONS_PATH = PREFIX + "/sessions"
REVOKE_PATH = PREFIX + "/revoke"
INTROSPECT_PATH = PREFIX + "/introspect"
TOKEN_PATH = PREFIX + "/token"
AUTHORIZE_PATH = PREFIX + "/authorize"  # browser login
END_SESSION_PATH = PREFIX + "/logout"  # browser login
# The algorithms of the demo keys (envoy/demo/render.sh: DEMO_KIDS).
SIGNING_ALGS = ["RS256", "EdDSA"]
MAX_COUNTED = 100
MAX_GRANTS = 10000  # tokens and sessions held at once; past it, new ones are refused
MAX_BODY = 16384

GRANT_TYPE_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPE_ACCESS = "urn:ietf:params:oauth:token-type:access_token"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
INTROSPECTION_JWT = "application/token-introspection+jwt"


# --- RS256 (RSASSA-PKCS1-v1_5 with SHA-256, RFC 8017) with the standard library ---------
def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_int(text):
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


# DER of DigestInfo { sha256, NULL } up to the digest (RFC 8017, 9.2 note 1).
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


class Rs256Key:
    """A private RSA JWK (n, e, d, p, q; as `tokengate keygen --alg RS256` writes it)."""

    def __init__(self, jwk):
        if jwk.get("kty") != "RSA" or jwk.get("alg", "RS256") != "RS256":
            raise ValueError("not an RS256 key (kty RSA)")
        self.kid = jwk.get("kid")
        self.n, self.e, self.d = (b64url_int(jwk[k]) for k in ("n", "e", "d"))
        self.p, self.q = b64url_int(jwk["p"]), b64url_int(jwk["q"])
        if self.p * self.q != self.n:
            raise ValueError("p * q is not n")
        self.dp, self.dq = self.d % (self.p - 1), self.d % (self.q - 1)
        self.qinv = pow(self.q, -1, self.p)
        self.size = (self.n.bit_length() + 7) // 8

    def sign(self, message):
        t = SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
        em = b"\x00\x01" + b"\xff" * (self.size - len(t) - 3) + b"\x00" + t
        m = int.from_bytes(em, "big")
        # CRT, then a check with the public exponent (a faulty signature is never sent).
        s1, s2 = pow(m, self.dp, self.p), pow(m, self.dq, self.q)
        s = s2 + self.q * ((self.qinv * (s1 - s2)) % self.p)
        if pow(s, self.e, self.n) != m:
            raise ValueError("RSA signature check failed")
        return s.to_bytes(self.size, "big")

    def jwt(self, claims, typ="JWT"):
        header = {"alg": "RS256", "typ": typ}
        if self.kid:
            header["kid"] = self.kid
        signing_input = (
            b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        return signing_input + "." + b64url(self.sign(signing_input.encode()))


# --- tokens and sessions -----------------------------------------------------------------
class Grants:
    """Opaque access tokens and sessions, in memory: value -> record."""

    def __init__(self):
        self.lock = threading.Lock()
        self.items = {}

    def issue(self, kind, record):
        value = secrets.token_urlsafe(32)  # base64url, no dots: never looks like a JWT
        with self.lock:
            now = time.time()
            if len(self.items) >= MAX_GRANTS:
                self.items = {k: v for k, v in self.items.items() if v["exp"] > now}
            if len(self.items) >= MAX_GRANTS:
                return None
            self.items[value] = dict(record, kind=kind)
        return value

    def active(self, kind, value):
        """The record of an unexpired, unrevoked token or session of this kind, or None."""
        with self.lock:
            record = self.items.get(value)
        if record is None or record["kind"] != kind or record["exp"] <= time.time():
            return None
        return record

    def revoke(self, value):
        with self.lock:
            self.items.pop(value, None)


# --- browser login: authorization endpoint, code and refresh grants, end session -----------
# Everything of the OIDC authorization code flow lives in this section; Idp only routes to it
# (do_GET, do_POST, the discovery document) and main() configures it.
CODE_TTL = 60  # seconds an authorization code may wait for its redemption
DEMO_PASSWORD = "demo"
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
PKCE = re.compile(r"[A-Za-z0-9._~-]{43,128}")
# What the sign-in form carries from the authorization request to its POST.
AUTHORIZE_PARAMS = ("response_type", "client_id", "redirect_uri", "scope", "state", "nonce",
                    "code_challenge", "code_challenge_method")

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in - tokengate demo IdP</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:sans-serif;max-width:26em;margin:4em auto;padding:0 1em}}
label{{display:block;margin:.8em 0 .2em}}input{{width:100%;padding:.4em;box-sizing:border-box}}
button{{margin-top:1.2em;padding:.5em 1.5em}}.error{{color:#b00}}.hint{{color:#555}}</style>
</head><body>
<h1>Sign in</h1>
<p class="hint">tokengate demo IdP &mdash; <b>{client}</b> asks for: {scope}</p>
{error}
<form method="post" action="{action}">
{hidden}
<label for="username">User name</label>
<input id="username" name="username" autocomplete="username" autofocus required value="{username}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<p class="hint">Any user name; the password is <code>demo</code>.</p>
<button id="submit" type="submit">Sign in</button>
</form></body></html>
"""

SIGNED_OUT_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Signed out - tokengate demo IdP</title></head>
<body style="font-family:sans-serif;max-width:26em;margin:4em auto"><h1>Signed out</h1>
<p id="signed-out">You are signed out{who}.</p>{back}</body></html>
"""


def with_query(url, params):
    """url?name=value&... (values percent-encoded)."""
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params)
    return url + ("&" if "?" in url else "?") + query


def origin_of(url):
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class LoginGrants:
    """Authorization codes and refresh tokens, in memory: value -> record."""

    def __init__(self):
        self.lock = threading.Lock()
        self.codes = {}
        self.refresh = {}

    def new_code(self, record):
        code = secrets.token_urlsafe(32)
        with self.lock:
            now = time.time()
            self.codes = {k: v for k, v in self.codes.items() if v["exp"] > now}
            if len(self.codes) >= MAX_GRANTS:
                return None
            self.codes[code] = dict(record, exp=now + CODE_TTL, used=False)
        return code

    def redeem_code(self, code):
        """The code's record, once: a second redemption (or an expired code) gives None."""
        with self.lock:
            record = self.codes.get(code)
            if record is None or record["used"] or record["exp"] <= time.time():
                return None
            record["used"] = True
            return dict(record)

    def new_refresh(self, record):
        value = secrets.token_urlsafe(32)
        with self.lock:
            if len(self.refresh) >= MAX_GRANTS:
                return None
            self.refresh[value] = dict(record)
        return value

    def refresh_record(self, value):
        with self.lock:
            record = self.refresh.get(value)
            return dict(record) if record else None

    def forget_user(self, sub):
        with self.lock:
            self.refresh = {k: v for k, v in self.refresh.items() if v["sub"] != sub}


class BrowserLogin:
    """The OIDC provider side of the browser login, mixed into Idp (which has send_json,
    send_body, send_error_json, signing_key, base_url, audience, jwt_ttl and clients)."""

    redirect_uris = []  # set by main()
    login_grants = LoginGrants()

    def login_discovery(self):
        """The discovery document's members for the browser login."""
        return {
            "authorization_endpoint": self.base_url + "/authorize",
            "end_session_endpoint": self.base_url + "/logout",
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "profile", "offline_access"],
            "claims_supported": ["sub", "name", "preferred_username", "scope"],
            "authorization_response_iss_parameter_supported": True,
        }

    def send_page(self, status, page):
        self.send_body(status, page.encode(), "text/html; charset=utf-8",
                       [("cache-control", "no-store"), ("x-frame-options", "DENY"),
                        # No form-action: browsers apply it to the redirect after the
                        # form, which goes to the application's origin.
                        ("content-security-policy",
                         "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'")])

    def authorize_request(self, params):
        """Checks an authorization request: (redirect_uri, None) when it is good, (None, page)
        when the client or redirect URI is wrong (never redirect then), (redirect_uri,
        (error, description)) for anything else."""
        client = params.get("client_id", "")
        redirect_uri = params.get("redirect_uri", "")
        if client not in self.clients:
            return None, "unknown client_id"
        if redirect_uri not in self.redirect_uris:
            return None, "redirect_uri is not registered (idp.py --redirect-uri)"
        if params.get("response_type") != "code":
            return redirect_uri, ("unsupported_response_type", "response_type must be code")
        if "openid" not in params.get("scope", "").split():
            return redirect_uri, ("invalid_scope", "scope must include openid")
        if params.get("code_challenge_method") != "S256" or not PKCE.fullmatch(params.get("code_challenge", "")):
            return redirect_uri, ("invalid_request", "PKCE with code_challenge_method=S256 is required")
        if not params.get("state"):
            return redirect_uri, ("invalid_request", "state is required")
        return redirect_uri, None

    def authorize_back(self, redirect_uri, params, answer):
        """302 to the client's redirect URI with answer + state + iss (RFC 9207)."""
        back = list(answer)
        if params.get("state"):
            back.append(("state", params["state"]))
        back.append(("iss", self.base_url))
        self.send_body(302, b"", "text/plain",
                       [("location", with_query(redirect_uri, back)), ("cache-control", "no-store")])

    def login_form(self, params, error="", username=""):
        hidden = "\n".join(
            f'<input type="hidden" name="{name}" value="{html.escape(params.get(name, ""))}">'
            for name in AUTHORIZE_PARAMS)
        page = LOGIN_PAGE.format(
            client=html.escape(params.get("client_id", "")),
            scope=html.escape(params.get("scope", "")),
            error=f'<p class="error" id="error">{html.escape(error)}</p>' if error else "",
            action=html.escape(AUTHORIZE_PATH),
            hidden=hidden,
            username=html.escape(username),
        )
        self.send_page(401 if error else 200, page)

    def authorize_get(self):
        query = self.path.split("?", 1)[1] if "?" in self.path else ""
        params = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        redirect_uri, problem = self.authorize_request(params)
        if redirect_uri is None:
            self.send_page(400, f"<!doctype html><title>Bad request</title><p>{html.escape(problem)}</p>\n")
        elif problem:
            self.authorize_back(redirect_uri, params, [("error", problem[0]), ("error_description", problem[1])])
        else:
            self.login_form(params)

    def authorize_post(self, form):
        redirect_uri, problem = self.authorize_request(form)
        if redirect_uri is None:
            self.send_page(400, f"<!doctype html><title>Bad request</title><p>{html.escape(problem)}</p>\n")
            return
        if problem:
            self.authorize_back(redirect_uri, form, [("error", problem[0]), ("error_description", problem[1])])
            return
        username = form.get("username", "").strip()
        if not USER_NAME.fullmatch(username):
            self.login_form(form, "User names are letters, digits and . _ @ - (up to 64).", username)
            return
        if not hmac.compare_digest(form.get("password", "").encode(), DEMO_PASSWORD.encode()):
            self.login_form(form, "Wrong password (it is \"demo\").", username)
            return
        code = self.login_grants.new_code({
            "client_id": form["client_id"], "redirect_uri": redirect_uri, "sub": username,
            "scope": form["scope"], "nonce": form.get("nonce"),
            "challenge": form["code_challenge"], "auth_time": int(time.time()),
        })
        if code is None:
            self.authorize_back(redirect_uri, form, [("error", "temporarily_unavailable")])
            return
        self.authorize_back(redirect_uri, form, [("code", code)])

    def login_tokens(self, client, record, nonce):
        """The token response for a user's record: access token, ID token, refresh token."""
        now = int(time.time())
        sub, scope = record["sub"], record["scope"]
        sid = hashlib.sha256(f"{sub}/{record['auth_time']}".encode()).hexdigest()[:16]
        access = {
            "iss": self.base_url, "sub": sub, "aud": self.audience, "azp": client,
            "client_id": client, "scope": scope, "name": sub, "preferred_username": sub,
            "realm_access": {"roles": ["user"]}, "sid": sid,
            "iat": now, "exp": now + self.jwt_ttl, "jti": secrets.token_urlsafe(12),
        }
        id_claims = {
            "iss": self.base_url, "sub": sub, "aud": client, "azp": client, "sid": sid,
            "auth_time": record["auth_time"], "iat": now, "exp": now + self.jwt_ttl,
            "name": sub, "preferred_username": sub,
        }
        if nonce:
            id_claims["nonce"] = nonce
        refresh = record.get("refresh_token") or self.login_grants.new_refresh({
            "client_id": client, "sub": sub, "scope": scope, "auth_time": record["auth_time"]})
        if refresh is None:
            self.send_error_json(503, "temporarily_unavailable", "too many sessions")
            return
        self.send_json(200, {
            "access_token": self.signing_key.jwt(access),
            "id_token": self.signing_key.jwt(id_claims),
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": self.jwt_ttl,
            "scope": scope,
        }, [("cache-control", "no-store"), ("pragma", "no-cache")])

    def authorization_code_grant(self, client, form):
        record = self.login_grants.redeem_code(form.get("code", ""))
        if record is None:
            self.send_error_json(400, "invalid_grant", "unknown, used or expired code")
        elif record["client_id"] != client:
            self.send_error_json(400, "invalid_grant", "the code was issued to another client")
        elif form.get("redirect_uri") != record["redirect_uri"]:
            self.send_error_json(400, "invalid_grant", "redirect_uri differs from the authorization request's")
        elif not PKCE.fullmatch(form.get("code_verifier", "")):
            self.send_error_json(400, "invalid_request", "code_verifier missing or malformed")
        elif not hmac.compare_digest(
                b64url(hashlib.sha256(form["code_verifier"].encode()).digest()).encode(),
                record["challenge"].encode()):
            self.send_error_json(400, "invalid_grant", "PKCE verification failed")
        else:
            self.login_tokens(client, record, record.get("nonce"))

    def refresh_token_grant(self, client, form):
        value = form.get("refresh_token", "")
        record = self.login_grants.refresh_record(value)
        if record is None or record["client_id"] != client:
            self.send_error_json(400, "invalid_grant", "unknown refresh token")
            return
        # OIDC Core 12.2: a refreshed ID token carries no nonce; the refresh token stays.
        self.login_tokens(client, dict(record, refresh_token=value), None)

    def end_session(self):
        query = self.path.split("?", 1)[1] if "?" in self.path else ""
        params = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        hint = params.get("id_token_hint", "")
        sub = None
        try:  # whose session: the hint's sub (this IdP signed it; only its sub is used)
            payload = hint.split(".")[1]
            sub = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"]
            self.login_grants.forget_user(sub)
        except (IndexError, ValueError, KeyError, TypeError):
            sub = None
        # A page with a link back rather than a redirect: the way back leads to a protected
        # page, which would show the sign-in form again at once.
        target = params.get("post_logout_redirect_uri", "")
        back = ""
        if target and origin_of(target) in {origin_of(u) for u in self.redirect_uris}:
            back = f'<p><a id="back" href="{html.escape(target)}">Back to the application</a></p>'
        who = f" ({html.escape(str(sub))})" if sub else ""
        self.send_page(200, SIGNED_OUT_PAGE.format(who=who, back=back))


# --- end of the browser login section --------------------------------------------------------


# --- Token Status List and back-channel logout (issue 14) -------------------------------
STATUS_TOKENS_PATH = PREFIX + "/status-tokens"
STATUS_LIST_PATH = PREFIX + "/statuslists/1"
BACKCHANNEL_PATH = PREFIX + "/backchannel-logout"
STATUS_BITS = 2
MAX_STATUS_ENTRIES = 100000
LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"


class StatusList:
    """One status list, STATUS_BITS per entry, packed least significant bits first."""

    def __init__(self):
        self.lock = threading.Lock()
        self.statuses = []

    def allocate(self):
        with self.lock:
            if len(self.statuses) >= MAX_STATUS_ENTRIES:
                return None
            self.statuses.append(0)
            return len(self.statuses) - 1

    def set(self, idx, status):
        with self.lock:
            if not 0 <= idx < len(self.statuses):
                return False
            self.statuses[idx] = status
            return True

    def lst(self):
        per_byte = 8 // STATUS_BITS
        with self.lock:
            packed = bytearray((len(self.statuses) + per_byte - 1) // per_byte or 1)
            for i, status in enumerate(self.statuses):
                packed[i // per_byte] |= status << ((i % per_byte) * STATUS_BITS)
        return b64url(zlib.compress(bytes(packed), 9))


class RevocationEndpoints:
    """The IdP's side of revocable JWTs: status-list tokens, the list, back-channel logout."""

    status_list = StatusList()
    status_ttl = 5
    logout_audience = "gateway"

    def revocation_get(self, path):
        if path != STATUS_LIST_PATH:
            return False
        now = int(time.time())
        claims = {
            "iss": self.base_url,
            "sub": self.base_url + STATUS_LIST_PATH[len(PREFIX):],
            "iat": now,
            "exp": now + 3600,
            "ttl": self.status_ttl,
            "status_list": {"bits": STATUS_BITS, "lst": self.status_list.lst()},
        }
        body = self.signing_key.jwt(claims, typ="statuslist+jwt").encode()
        self.send_body(200, body, "application/statuslist+jwt",
                       [("cache-control", f"max-age={self.status_ttl}")])
        return True

    def revocation_post(self, path, form):
        if path == STATUS_TOKENS_PATH:
            self.issue_status_token(form)
        elif path == STATUS_LIST_PATH:
            try:
                idx, status = int(form.get("idx", "")), int(form.get("status") or 1)
            except ValueError:
                idx, status = -1, -1
            if status not in (0, 1, 2) or not self.status_list.set(idx, status):
                self.send_error_json(400, "invalid_request", "idx: an issued index; status: 0, 1 or 2")
            else:
                self.send_json(200, {"idx": idx, "status": status}, [("cache-control", "no-store")])
        elif path == BACKCHANNEL_PATH:
            self.send_backchannel_logout(form)
        else:
            return False
        return True

    def issue_status_token(self, form):
        try:
            expires_in = int(form.get("expires_in") or 3600)
        except ValueError:
            expires_in = 0
        idx = self.status_list.allocate() if 0 < expires_in <= 86400 else None
        if idx is None:
            self.send_error_json(400, "invalid_request", "expires_in: 1 to 86400 seconds")
            return
        now = int(time.time())
        sub = form.get("sub") or "demo-user"
        claims = {
            "iss": self.base_url, "sub": sub, "aud": self.audience,
            "scope": form.get("scope") or "read", "iat": now, "exp": now + expires_in,
            "sid": "sid-" + secrets.token_urlsafe(8), "jti": secrets.token_urlsafe(12),
            "status": {"status_list": {"idx": idx,
                                       "uri": self.base_url + STATUS_LIST_PATH[len(PREFIX):]}},
        }
        self.send_json(200, {"access_token": self.signing_key.jwt(claims), "idx": idx},
                       [("cache-control", "no-store")])

    def send_backchannel_logout(self, form):
        target = form.get("target", "")
        if not target.startswith("http://127.0.0.1:") or not (form.get("sub") or form.get("sid")):
            self.send_error_json(400, "invalid_request", "sub or sid, and an http://127.0.0.1 target")
            return
        claims = {"iss": self.base_url, "aud": self.logout_audience, "iat": int(time.time()),
                  "jti": secrets.token_urlsafe(12), "events": {LOGOUT_EVENT: {}}}
        for name in ("sub", "sid"):
            if form.get(name):
                claims[name] = form[name]
        token = self.signing_key.jwt(claims, typ="logout+jwt")
        request = urllib.request.Request(
            target, data=urlencode({"logout_token": token}).encode(),
            headers={"content-type": "application/x-www-form-urlencoded"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                status, body = answer.status, answer.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        except (OSError, ValueError) as e:
            self.send_error_json(502, "bad_gateway", f"POST {target}: {e}")
            return
        self.send_json(200, {"gateway_status": status, "gateway_body": body.decode(errors="replace")},
                       [("cache-control", "no-store")])


# --- the IdP -----------------------------------------------------------------------------
class Idp(BrowserLogin, RevocationEndpoints, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive with Envoy; every answer has Content-Length
    server_version = "tokengate-demo-idp"
    sys_version = ""

    def version_string(self):
        return self.server_version

    # Set by main().
    base_url = ""
    jwks_file = ""
    signing_key = None
    audience = ""
    jwt_ttl = 300
    clients = {}
    grants = Grants()
    counts = {}
    lock = threading.Lock()

    # --- answers ---------------------------------------------------------------------
    def send_body(self, status, body, content_type, extra_headers=()):
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        for name, value in extra_headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status, doc, extra_headers=()):
        body = json.dumps(doc, indent=2).encode() + b"\n"
        self.send_body(status, body, "application/json", extra_headers)

    def send_error_json(self, status, error, description=None, extra_headers=()):
        doc = {"error": error}
        if description:
            doc["error_description"] = description
        self.send_json(status, doc, [("cache-control", "no-store")] + list(extra_headers))

    def count(self, key):
        # Bounded: past MAX_COUNTED distinct keys, new ones are counted as "(other)".
        with self.lock:
            key = key if key in self.counts or len(self.counts) < MAX_COUNTED else "(other)"
            self.counts[key] = self.counts.get(key, 0) + 1

    # --- GET ---------------------------------------------------------------------------
    def do_GET(self):
        path = self.path.split("?", 1)[0]
        session_id = None
        if path.startswith(SESSIONS_PATH + "/"):
            session_id = unquote(path[len(SESSIONS_PATH) + 1 :])
            self.count(SESSIONS_PATH + "/{id}")
        elif path != STATS_PATH:
            self.count(path)

        if self.revocation_get(path):
            return
        if path == DISCOVERY_PATH:
            self.send_json(
                200,
                {
                    "issuer": self.base_url,
                    "jwks_uri": self.base_url + "/jwks.json",
                    "introspection_endpoint": self.base_url + "/introspect",
                    "token_endpoint": self.base_url + "/token",
                    "revocation_endpoint": self.base_url + "/revoke",
                    "grant_types_supported": [GRANT_TYPE_EXCHANGE, "authorization_code",
                                              "refresh_token"],
                    "introspection_endpoint_auth_methods_supported": ["client_secret_basic"],
                    "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                    "introspection_signing_alg_values_supported": ["RS256"],
                    "id_token_signing_alg_values_supported": SIGNING_ALGS,
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    **self.login_discovery(),
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
            self.send_body(200, body, "application/json", [("cache-control", "max-age=300")])
        elif path == AUTHORIZE_PATH:
            self.authorize_get()
        elif path == END_SESSION_PATH:
            self.end_session()
        elif path == STATS_PATH:
            with self.lock:
                counts = dict(self.counts)
            self.send_json(200, {"requests": counts}, [("cache-control", "no-store")])
        elif session_id is not None:
            record = self.grants.active("session", session_id)
            if record is None:
                self.send_error_json(404, "not_found", "no such session")
                return
            claims = self.claims_for(record)
            claims["sid"] = hashlib.sha256(session_id.encode()).hexdigest()[:16]
            body = self.signing_key.jwt(claims).encode()
            self.send_body(200, body, "application/jwt", [("cache-control", "no-store")])
        else:
            self.send_json(404, {"error": "not found"})

    do_HEAD = do_GET

    # --- POST --------------------------------------------------------------------------
    def do_POST(self):
        path = self.path.split("?", 1)[0]
        self.count("POST " + path)
        form = self.read_form()
        if form is None:
            return
        if self.revocation_post(path, form):
            return
        if path == OPAQUE_PATH:
            self.issue("access_token", form)
        elif path == SESSIONS_PATH:
            self.issue("session", form)
        elif path == REVOKE_PATH:
            # RFC 7009: 200 whether or not the token was known.
            self.grants.revoke(form.get("token", ""))
            self.send_body(200, b"", "text/plain", [("cache-control", "no-store")])
        elif path == INTROSPECT_PATH:
            client = self.client_id()
            if client is not None:
                self.introspect(client, form)
        elif path == AUTHORIZE_PATH:
            self.authorize_post(form)
        elif path == TOKEN_PATH:
            client = self.client_id()
            if client is None:
                pass
            elif form.get("grant_type") == "authorization_code":
                self.authorization_code_grant(client, form)
            elif form.get("grant_type") == "refresh_token":
                self.refresh_token_grant(client, form)
            else:
                self.token_exchange(client, form)
        else:
            self.send_json(404, {"error": "not found"})

    def read_form(self):
        """The request's form fields (the first value of each), or None after a 400/413."""
        try:
            length = int(self.headers.get("content-length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            self.send_error_json(413 if length > MAX_BODY else 400, "invalid_request", "bad body length")
            return None
        body = self.rfile.read(length) if length else b""
        try:
            fields = parse_qs(body.decode(), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            self.send_error_json(400, "invalid_request", "the body is not UTF-8")
            return None
        return {name: values[0] for name, values in fields.items()}

    def client_id(self):
        """RFC 6749 2.3.1 client_secret_basic: the client's id, or None after a 401."""
        header = self.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        client = secret = None
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True).decode()
                raw_id, sep, raw_secret = decoded.partition(":")
                if sep:
                    client, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
            except (ValueError, UnicodeDecodeError):
                pass
        expected = self.clients.get(client) if client is not None else None
        if expected is None or not hmac.compare_digest(expected.encode(), secret.encode()):
            self.send_error_json(
                401, "invalid_client", "client authentication failed",
                [("www-authenticate", 'Basic realm="demo"')],
            )
            return None
        return client

    def issue(self, kind, form):
        try:
            expires_in = int(form.get("expires_in") or 3600)
        except ValueError:
            expires_in = 0
        if not 0 < expires_in <= 86400:
            self.send_error_json(400, "invalid_request", "expires_in: 1 to 86400 seconds")
            return
        now = int(time.time())
        record = {
            "sub": form.get("sub") or "demo-user",
            "scope": form.get("scope") or "read",
            "client_id": form.get("client_id") or "demo-app",
            "iat": now,
            "exp": now + expires_in,
        }
        value = self.grants.issue(kind, record)
        if value is None:
            self.send_error_json(503, "temporarily_unavailable", "too many tokens")
        elif kind == "session":
            self.send_json(200, {"session": value, "expires_in": expires_in},
                           [("cache-control", "no-store")])
        else:
            self.send_json(200, {"access_token": value, "token_type": "Bearer",
                                 "expires_in": expires_in}, [("cache-control", "no-store")])

    def claims_for(self, record, scope=None, audience=None):
        """The claims of a JWT for a token or session: short-lived, never past its expiry."""
        now = int(time.time())
        return {
            "iss": self.base_url,
            "sub": record["sub"],
            "aud": audience or self.audience,
            "scope": scope if scope is not None else record["scope"],
            "client_id": record["client_id"],
            "iat": now,
            "exp": min(record["exp"], now + self.jwt_ttl),
            "jti": secrets.token_urlsafe(12),
        }

    def introspect(self, client, form):
        record = self.grants.active("access_token", form.get("token", ""))
        if record is None:
            answer = {"active": False}
        else:
            answer = {
                "active": True,
                "sub": record["sub"],
                "scope": record["scope"],
                "iss": self.base_url,
                "aud": self.audience,
                "exp": record["exp"],
                "iat": record["iat"],
                "client_id": record["client_id"],
                "token_type": "Bearer",
            }
        accept = [part.split(";", 1)[0].strip().lower()
                  for part in self.headers.get("accept", "").split(",")]
        if INTROSPECTION_JWT in accept:
            # RFC 9701: the answer signed by the authorization server, for this client.
            claims = {"iss": self.base_url, "aud": client, "iat": int(time.time()),
                      "token_introspection": answer}
            body = self.signing_key.jwt(claims, typ="token-introspection+jwt").encode()
            self.send_body(200, body, INTROSPECTION_JWT, [("cache-control", "no-store")])
        else:
            self.send_json(200, answer, [("cache-control", "no-store")])

    def token_exchange(self, client, form):
        if form.get("grant_type") != GRANT_TYPE_EXCHANGE:
            self.send_error_json(400, "unsupported_grant_type")
            return
        if form.get("subject_token_type") != TOKEN_TYPE_ACCESS or not form.get("subject_token"):
            self.send_error_json(400, "invalid_request", "subject_token of type access_token expected")
            return
        if form.get("requested_token_type", TOKEN_TYPE_JWT) != TOKEN_TYPE_JWT:
            self.send_error_json(400, "invalid_request", "only JWTs are issued")
            return
        record = self.grants.active("access_token", form["subject_token"])
        if record is None:
            self.send_error_json(400, "invalid_grant", "the subject token is not active")
            return
        scope = record["scope"]
        if form.get("scope"):
            granted = set(scope.split())
            if not set(form["scope"].split()) <= granted:
                self.send_error_json(400, "invalid_scope", "more scope than the subject token has")
                return
            scope = form["scope"]
        claims = self.claims_for(record, scope=scope, audience=form.get("audience"))
        claims["act"] = {"sub": client}  # RFC 8693 4.1: who asked for the exchange
        self.send_json(
            200,
            {
                "access_token": self.signing_key.jwt(claims),
                "issued_token_type": TOKEN_TYPE_JWT,
                "token_type": "N_A",
                "expires_in": claims["exp"] - claims["iat"],
            },
            [("cache-control", "no-store")],
        )

    def log_message(self, format, *args):  # quiet: no line per request
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jwks", help="the JWKS file to serve at /demo/jwks.json")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9000, help="port (default 9000)")
    parser.add_argument("--signing-key", required=True,
                        help="private RS256 JWK that signs the JWTs the IdP issues (its public "
                        "half must be in the JWKS)")
    parser.add_argument("--audience", default="demo-api",
                        help="aud of the JWTs the IdP issues (default demo-api)")
    parser.add_argument("--jwt-ttl", type=int, default=300,
                        help="lifetime of the JWTs the IdP issues, in seconds (default 300)")
    parser.add_argument("--client", action="append", default=[], metavar="ID:SECRET",
                        help="a client allowed at /introspect and /token (repeatable)")
    parser.add_argument("--redirect-uri", action="append", default=[], metavar="URI",
                        help="a redirect URI the browser login may send codes to (repeatable)")
    parser.add_argument("--status-ttl", type=int, default=5,
                        help="ttl of the status list token, in seconds (default 5)")
    parser.add_argument("--logout-audience", default="gateway",
                        help="aud of back-channel logout tokens (default gateway)")
    args = parser.parse_args()
    Idp.status_ttl = args.status_ttl
    Idp.logout_audience = args.logout_audience

    Idp.base_url = f"http://{args.host}:{args.port}{PREFIX}"
    Idp.jwks_file = args.jwks
    Idp.audience = args.audience
    Idp.jwt_ttl = args.jwt_ttl
    Idp.redirect_uris = list(args.redirect_uri)
    for entry in args.client:
        client, sep, secret = entry.partition(":")
        if not sep or not client:
            sys.exit(f"idp.py: --client {entry!r}: expected ID:SECRET")
        Idp.clients[client] = secret
    try:
        with open(args.signing_key) as f:
            Idp.signing_key = Rs256Key(json.load(f))
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"idp.py: --signing-key {args.signing_key}: {e}")

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

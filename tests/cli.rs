//! The `tokengate` binary as users and CI scripts run it: `check` warnings, `explain`
//! output and exit codes, `schema` against the committed file. Keys and tokens come from
//! the CLI itself (`keygen`, `token`), in a directory of this test's own.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

const CLI: &str = env!("CARGO_BIN_EXE_tokengate");
const ISSUER: &str = "https://idp.example.com";

fn run(args: &[&str]) -> Output {
    Command::new(CLI).args(args).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A fresh directory with a key pair (`k1.jwk`, `jwks.json`), removed when dropped.
struct Workdir(PathBuf);

impl std::ops::Deref for Workdir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn workdir() -> Workdir {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tokengate-cli-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = run(&[
        "keygen",
        "--alg",
        "ES256",
        "--kid",
        "k1",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    Workdir(dir)
}

fn write(dir: &Path, name: &str, document: &Value) -> String {
    let path = dir.join(name);
    std::fs::write(&path, document.to_string()).unwrap();
    path.to_str().unwrap().to_owned()
}

fn jwks(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("jwks.json")).unwrap()).unwrap()
}

fn token(dir: &Path, issuer: &str, sub: &str, scope: &str) -> String {
    let key = dir.join("k1.jwk");
    let out = run(&[
        "token",
        "--key",
        key.to_str().unwrap(),
        "--iss",
        issuer,
        "--sub",
        sub,
        "--claim",
        &format!("scope={scope}"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_owned()
}

fn config(dir: &Path) -> String {
    write(
        dir,
        "config.json",
        &json!({
            "realm": "api",
            "providers": {
                "corp": { "issuer": ISSUER, "jwks": { "inline": jwks(dir) },
                          "forward": { "claims": { "sub": "x-user-id" } } },
                "partner": { "issuer": "https://partner", "sources": [ { "cookie": "pt" } ],
                             "jwks": { "uri": "http://partner/certs", "cluster": "partner" } }
            },
            "authz_service": { "uri": "http://opa:8181/v1/data/http/authz", "cluster": "opa",
                               "include_headers": ["x-tenant"] },
            "rules": [
                { "name": "health", "match": { "path": { "prefix": "/healthz" } }, "allow": "anonymous" },
                { "name": "owner", "match": { "path": { "template": "/users/{id}" }, "methods": ["GET"] },
                  "authn": { "any": ["corp"] },
                  "authz": { "all": [ { "path_param": "id", "equals_claim": "sub" },
                                      { "claim": "scope", "contains": "users:read" } ] } },
                { "name": "admin", "match": { "path": { "prefix": "/admin" } }, "authn": { "any": ["corp"] },
                  "authz": { "claim": "scope", "contains": "admin" }, "central": true },
                { "name": "partner", "match": { "path": { "prefix": "/partner" } },
                  "authn": { "any": ["partner"] } }
            ]
        }),
    )
}

#[test]
fn check_warns_about_a_shadowed_rule_and_still_exits_zero() {
    let dir = workdir();
    let path = write(
        &dir,
        "shadowed.json",
        &json!({
            "providers": { "corp": { "issuer": ISSUER, "jwks": { "inline": jwks(&dir) } } },
            "rules": [
                { "name": "api", "match": { "path": { "prefix": "/api" } }, "authn": { "any": ["corp"] } },
                { "name": "api-admin", "match": { "path": { "prefix": "/api/admin" } }, "allow": "anonymous" }
            ]
        }),
    );
    let out = run(&["check", &path]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(": ok (1 provider(s), 2 rule(s))"));
    let warnings = stderr(&out);
    assert!(
        warnings.starts_with("warning: ")
            && warnings.contains("rules[1] \"api-admin\" can never match: rules[0] \"api\""),
        "{warnings}"
    );
    // A clean configuration: no warnings at all.
    let out = run(&["check", &config(&dir)]);
    assert!(out.status.success());
    assert_eq!(stderr(&out), "");
}

#[test]
fn explain_shows_rule_conditions_and_header_edits_and_exits_zero_on_allow() {
    let dir = workdir();
    let config = config(&dir);
    let alice = token(&dir, ISSUER, "42", "users:read");
    let out = run(&[
        "explain",
        &config,
        "--method",
        "GET",
        "--path",
        "/users/42",
        "--token",
        &alice,
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    for line in [
        "skipped   rules[0] \"health\": path does not match",
        "rule      rules[1] \"owner\"",
        "authn     verified by \"corp\"",
        "authz     all of 2 condition(s): true",
        "            path parameter {id} equals claim sub: true",
        "decision  allow: the request goes upstream",
        "          remove authorization",
        "          set x-user-id: 42",
    ] {
        assert!(text.contains(line), "{line:?} not in\n{text}");
    }
    assert!(!text.contains(&alice), "the token is not printed");
}

#[test]
fn explain_exits_one_with_the_status_when_refused() {
    let dir = workdir();
    let config = config(&dir);
    let alice = token(&dir, ISSUER, "42", "users:read");
    let other = run(&["explain", &config, "--path", "/users/7", "--token", &alice]);
    let text = stdout(&other);
    assert_eq!(other.status.code(), Some(1), "{text}");
    assert!(text.contains("path parameter {id} equals claim sub: false"));
    assert!(text.contains("claim scope contains \"users:read\": not evaluated"));
    assert!(text.contains("decision  refuse: 403 (forbidden)"));
    let anonymous = run(&["explain", &config, "--path", "/users/42"]);
    assert_eq!(anonymous.status.code(), Some(1));
    assert!(stdout(&anonymous).contains("decision  refuse: 401 (missing)"));
    let traversal = run(&["explain", &config, "--path", "/healthz/%2e%2e/admin"]);
    assert_eq!(traversal.status.code(), Some(1));
    assert!(stdout(&traversal).contains(
        "path      refused with 400 before any rule runs: path holds an encoded slash, backslash or dot"
    ));
    let no_rule = run(&["explain", &config, "--path", "/elsewhere"]);
    assert_eq!(no_rule.status.code(), Some(1));
    assert!(stdout(&no_rule).contains("rule      none matches"));
    assert!(stdout(&no_rule).contains("decision  refuse: 403 (no_rule)"));
}

#[test]
fn explain_shows_the_central_input_and_takes_the_assumed_answer() {
    let dir = workdir();
    let config = config(&dir);
    let admin = token(&dir, ISSUER, "ops", "admin");
    let ask = |central: &str| {
        run(&[
            "explain",
            &config,
            "--method",
            "POST",
            "--path",
            "/admin/users?page=2",
            "--host",
            "api.example.com",
            "--header",
            "X-Tenant: acme",
            "--token",
            &admin,
            "--central",
            central,
        ])
    };
    let allowed = ask("allow");
    let text = stdout(&allowed);
    assert_eq!(allowed.status.code(), Some(0), "{text}");
    let prefix = "central   would ask the service with this input: ";
    let input = text
        .lines()
        .find_map(|line| line.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no central input in\n{text}"));
    let input: Value = serde_json::from_str(input).unwrap();
    assert_eq!(input["input"]["identity"]["provider"], "corp");
    assert_eq!(input["input"]["identity"]["claims"]["sub"], "ops");
    assert_eq!(input["input"]["parsed_query"], json!({"page": ["2"]}));
    let http = &input["input"]["attributes"]["request"]["http"];
    assert_eq!(
        (http["method"].as_str(), http["host"].as_str()),
        (Some("POST"), Some("api.example.com"))
    );
    assert_eq!(http["headers"], json!({"x-tenant": "acme"}));
    assert_eq!(ask("deny").status.code(), Some(1));
    let down = ask("error");
    assert_eq!(down.status.code(), Some(1));
    assert!(stdout(&down).contains("decision  refuse: 503 (authz_unavailable)"));
}

#[test]
fn explain_verifies_a_remote_provider_with_a_jwks_file() {
    let dir = workdir();
    let config = config(&dir);
    let partner = token(&dir, "https://partner", "p1", "x");
    let without = run(&[
        "explain", &config, "--path", "/partner", "--token", &partner,
    ]);
    assert_eq!(without.status.code(), Some(1));
    assert!(stdout(&without).contains("give them with --jwks"));
    let file = dir.join("jwks.json");
    let named = format!("partner={}", file.to_str().unwrap());
    for jwks in [file.to_str().unwrap(), named.as_str()] {
        let with = run(&[
            "explain", &config, "--path", "/partner", "--token", &partner, "--jwks", jwks,
        ]);
        assert_eq!(with.status.code(), Some(0), "{}", stdout(&with));
        assert!(stdout(&with).contains("authn     verified by \"partner\""));
        assert!(
            stdout(&with).contains("          set cookie: ")
                || stdout(&with).contains("remove cookie")
        );
    }
}

#[test]
fn explain_exits_two_on_bad_arguments_or_configuration() {
    let dir = workdir();
    let config = config(&dir);
    for args in [
        vec!["explain"],
        vec!["explain", config.as_str()],
        vec!["explain", config.as_str(), "--path", "/x", "--bogus", "1"],
        vec![
            "explain",
            config.as_str(),
            "--path",
            "/x",
            "--central",
            "maybe",
        ],
        vec![
            "explain",
            config.as_str(),
            "--path",
            "/x",
            "--header",
            "no-colon",
        ],
        vec!["explain", "/nonexistent/config.json", "--path", "/x"],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    let broken = write(&dir, "broken.json", &json!({"providers": {}, "bogus": 1}));
    let out = run(&["explain", &broken, "--path", "/x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("bogus: unknown field"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn schema_prints_the_committed_schema() {
    let out = run(&["schema"]);
    assert!(out.status.success());
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/tokengate.schema.json"),
    )
    .unwrap();
    assert!(
        stdout(&out) == committed,
        "deploy/tokengate.schema.json is stale: tokengate schema > deploy/tokengate.schema.json"
    );
    let schema: Value = serde_json::from_str(&committed).unwrap();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
}

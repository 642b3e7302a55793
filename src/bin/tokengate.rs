//! The tokengate CLI: check a configuration offline with the filter's own code, mint
//! development tokens, generate development keys.

use serde_json::{json, Map, Value};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};
use tokengate::config::Config;
use tokengate::crypto::alg::Alg;
use tokengate::crypto::sign::{generate_jwk, SigningKey};
use tokengate::error::{AuthnError, Refusal};
use tokengate::flow::{Keyring, NoRemoteKeys, Outcome};
use tokengate::policy::explain::{self, AuthnView, CentralAnswer, Explanation, KeyFiles, PathView};
use tokengate::policy::lint;
use tokengate::token::extract::{HeaderEdit, Request};
use tokengate::token::jwks::KeySet;

const USAGE: &str = "\
usage:
  tokengate check CONFIG.json           validate a filter configuration (- for stdin); warn
                                        about rules that can never match or never pass
  tokengate explain CONFIG.json [--method GET] --path PATH [--host HOST] [--header NAME:VALUE]...
                  [--token TOKEN] [--jwks [PROVIDER=]JWKS.json]... [--central allow|deny|error]
                  [--now UNIX_SECS]
                                        what the filter would do with this request, and why:
                                        exit 0 if it passes, 1 if refused, 2 on bad arguments
                                        (--token goes where the matched rule reads tokens;
                                        --jwks: keys of remote providers, all or one;
                                        --central: the policy service's assumed answer)
  tokengate schema                      print the JSON Schema of the configuration document
  tokengate token --key KEY.jwk [--iss ISS] [--sub SUB] [--aud AUD]... [--exp-in 1h]
                  [--nbf-in 0s] [--no-exp] [--typ TYP] [--claim NAME=VALUE]... [--count N]
                                        mint a token (VALUE is JSON if it parses, else a string;
                                        NAME may be a dotted path: realm_access.roles='[\"a\"]';
                                        --count N prints N tokens, one per line, each with its own jti)
  tokengate keygen [--alg RS256|PS256|ES256|ES384|EdDSA|HS256] [--kid KID] [--out DIR]
                                        write DIR/KID.jwk (private) and add its public half
                                        to DIR/jwks.json
  tokengate version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("explain") {
        return match explain_command(args.get(1..).unwrap_or_default()) {
            Ok(passes) => ExitCode::from(if passes { 0 } else { 1 }),
            Err(message) => {
                eprintln!("{message}");
                ExitCode::from(2)
            }
        };
    }
    let result = match args.first().map(String::as_str) {
        Some("check") => check(args.get(1..).unwrap_or_default()),
        Some("token") => token(args.get(1..).unwrap_or_default()),
        Some("keygen") => keygen(args.get(1..).unwrap_or_default()),
        Some("schema") => schema(args.get(1..).unwrap_or_default()),
        Some("version" | "--version") => {
            println!("tokengate {}", tokengate::VERSION);
            Ok(())
        }
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn schema(args: &[String]) -> Result<(), String> {
    if !args.is_empty() {
        return Err(USAGE.to_owned());
    }
    print!("{}", tokengate::config::schema::schema_text());
    Ok(())
}

fn read_input(path: &str) -> Result<Vec<u8>, String> {
    if path == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
            .map_err(|e| format!("stdin: {e}"))?;
        Ok(bytes)
    } else {
        std::fs::read(path).map_err(|e| format!("{path}: {e}"))
    }
}

fn check(args: &[String]) -> Result<(), String> {
    let [path] = args else {
        return Err(USAGE.to_owned());
    };
    let bytes = read_input(path)?;
    match Config::from_json(&bytes) {
        Ok(config) => {
            println!(
                "{path}: ok ({} provider(s), {} rule(s))",
                config.providers.len(),
                config.rules.len()
            );
            for warning in lint::lint(&config) {
                eprintln!("warning: {path}: {}", warning.describe(&config));
            }
            Ok(())
        }
        Err(e) => Err(format!("{path}: {e}")),
    }
}

/// `tokengate explain`: true when the request would pass.
fn explain_command(args: &[String]) -> Result<bool, String> {
    let Some((config_path, flags)) = args.split_first() else {
        return Err(USAGE.to_owned());
    };
    let mut request = Request {
        method: "GET".into(),
        ..Request::default()
    };
    let mut path = None;
    let mut token = None;
    let mut jwks: Vec<String> = Vec::new();
    let mut central = CentralAnswer::Allow;
    let mut now = None;
    let mut i = 0;
    while i < flags.len() {
        let flag = flags.get(i).map(String::as_str).unwrap_or_default();
        let value = value_of(flags, i, flag)?;
        match flag {
            "--method" => request.method = value.to_owned(),
            "--path" => path = Some(value.to_owned()),
            "--host" => request.host = value.to_owned(),
            "--header" => {
                let (name, header_value) = value
                    .split_once(':')
                    .filter(|(name, _)| !name.trim().is_empty())
                    .ok_or_else(|| format!("--header {value:?}: expected NAME:VALUE"))?;
                let name = name.trim().to_ascii_lowercase();
                let header_value = header_value.trim_start().to_owned();
                if name == "host" || name == ":authority" {
                    request.host = header_value;
                } else {
                    request.headers.push((name, header_value));
                }
            }
            "--token" => token = Some(value.to_owned()),
            "--jwks" => jwks.push(value.to_owned()),
            "--central" => {
                central = match value {
                    "allow" => CentralAnswer::Allow,
                    "deny" => CentralAnswer::Deny,
                    "error" => CentralAnswer::Unavailable,
                    _ => return Err(format!("--central {value:?}: allow, deny or error")),
                }
            }
            "--now" => {
                now = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| format!("bad --now {value:?}: seconds since 1970"))?,
                )
            }
            _ => return Err(format!("unknown option {flag:?}\n{USAGE}")),
        }
        i += 2;
    }
    request.path = path.ok_or("--path is required")?;
    let now = match now {
        Some(now) => now,
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs(),
    };
    let config =
        Config::from_json(&read_input(config_path)?).map_err(|e| format!("{config_path}: {e}"))?;
    let keyring = key_files(&config, &jwks)?;
    if let Some(token) = token {
        request = explain::place_token(&config, request, &token);
    }
    let keyring: &dyn Keyring = match &keyring {
        Some(files) => files,
        None => &NoRemoteKeys,
    };
    let explanation = explain::explain(&config, keyring, request, now, central);
    print!(
        "{}",
        render(&config, &explanation, central, !jwks.is_empty())
    );
    Ok(matches!(
        explanation.decision.outcome,
        Outcome::Forward(_) | Outcome::Reply(_)
    ))
}

/// `--jwks FILE` (every remote provider) and `--jwks PROVIDER=FILE` (one).
fn key_files(config: &Config, args: &[String]) -> Result<Option<KeyFiles>, String> {
    if args.is_empty() {
        return Ok(None);
    }
    let mut sets: Vec<Option<KeySet>> = vec![None; config.providers.len()];
    for arg in args {
        let named = arg.split_once('=').and_then(|(name, file)| {
            let index = config.providers.iter().position(|p| p.name == name)?;
            Some((Some(index), file))
        });
        let (only, file) = named.unwrap_or((None, arg.as_str()));
        let parsed = KeySet::parse(&read_input(file)?).map_err(|e| format!("{file}: {e}"))?;
        for (index, slot) in sets.iter_mut().enumerate() {
            let chosen = match only {
                Some(only) => only == index,
                None => explain::is_remote(config, index),
            };
            if chosen {
                *slot = Some(parsed.set.clone());
            }
        }
    }
    Ok(Some(KeyFiles::new(sets)))
}

/// `rules[1] "owner"`, or `rules[1]` for an unnamed rule.
fn rule_label(config: &Config, index: usize) -> String {
    let position = format!("rules[{index}]");
    match config.rules.get(index) {
        Some(rule) if rule.name != position => format!("{position} {:?}", rule.name),
        _ => position,
    }
}

/// The explanation as `tokengate explain` prints it.
fn render(config: &Config, e: &Explanation, central: CentralAnswer, have_jwks: bool) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let host = if e.request.host.is_empty() {
        String::new()
    } else {
        format!(" (host {})", e.request.host)
    };
    let _ = writeln!(
        out,
        "request   {} {}{host}",
        e.request.method, e.request.path
    );
    match &e.path {
        PathView::Checked(path) => {
            let _ = writeln!(out, "path      {path}");
        }
        PathView::Refused(error) => {
            let _ = writeln!(
                out,
                "path      refused with 400 before any rule runs: {}",
                error.description()
            );
        }
        PathView::NotRead => {
            let _ = writeln!(out, "path      not read: no rule looks at it");
        }
    }
    if let Outcome::Reply(reply) = &e.decision.outcome {
        let _ = writeln!(
            out,
            "endpoint  answered by the filter itself, before any rule: {} {}",
            reply.status, reply.content_type
        );
    }
    for (index, part) in &e.skipped {
        let _ = writeln!(
            out,
            "skipped   {}: {part} does not match",
            rule_label(config, *index)
        );
    }
    match e.rule.and_then(|i| config.rules.get(i).map(|r| (i, r))) {
        Some((index, rule)) => {
            let mut notes = Vec::new();
            if rule.dry_run {
                notes.push("dry run");
            }
            if rule.central {
                notes.push("central");
            }
            let notes = if notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", notes.join(", "))
            };
            let _ = writeln!(out, "rule      {}{notes}", rule_label(config, index));
        }
        None if matches!(e.decision.refusal, Some(Refusal::NoRuleMatched)) => {
            let _ = writeln!(out, "rule      none matches");
        }
        None => {}
    }
    let authn = match &e.authn {
        AuthnView::NotReached => None,
        AuthnView::NotNeeded => Some("not needed: the rule allows anonymous requests".to_owned()),
        AuthnView::Verified { by } => Some(format!("verified by {by:?}")),
        AuthnView::Anonymous => Some("no token; authn is optional: anonymous".to_owned()),
        AuthnView::Refused(AuthnError::Missing) => Some("no token".to_owned()),
        AuthnView::Refused(error) => Some(format!("refused: {}", error.description())),
    };
    if let Some(authn) = authn {
        let _ = writeln!(out, "authn     {authn}");
    }
    if matches!(e.authn, AuthnView::Refused(AuthnError::KeysUnavailable)) && !have_jwks {
        let _ = writeln!(
            out,
            "          (the provider fetches its keys: give them with --jwks JWKS.json)"
        );
    }
    if matches!(e.authn, AuthnView::Refused(AuthnError::ExchangeUnavailable)) {
        let _ = writeln!(
            out,
            "          (an exchange asks its auth service, which explain does not call)"
        );
    }
    for (n, line) in e.conditions.iter().enumerate() {
        let result = match line.result {
            Some(true) => "true",
            Some(false) => "false",
            None => "not evaluated",
        };
        let label = if n == 0 { "authz" } else { "" };
        let indent = "  ".repeat(line.depth);
        let _ = writeln!(out, "{label:<9} {indent}{}: {result}", line.text);
    }
    if let Some(input) = &e.central_input {
        // The exact text the filter would POST (its hash is the decision cache's key).
        let _ = writeln!(
            out,
            "central   would ask the service with this input: {input}"
        );
        let assumed = match central {
            CentralAnswer::Allow => "allows",
            CentralAnswer::Deny => "denies",
            CentralAnswer::Unavailable => "does not answer",
        };
        let _ = writeln!(
            out,
            "          assuming the service {assumed} (--central allow|deny|error)"
        );
    }
    match &e.decision.outcome {
        Outcome::Forward(edits) => {
            let _ = writeln!(out, "decision  allow: the request goes upstream");
            if let Some(refusal) = e.decision.dry_run {
                let _ = writeln!(
                    out,
                    "          dry run: the rule would refuse it ({})",
                    refusal.reason()
                );
            }
            for edit in edits {
                let _ = match edit {
                    HeaderEdit::Remove(name) => writeln!(out, "          remove {name}"),
                    HeaderEdit::Set(name, value) => writeln!(out, "          set {name}: {value}"),
                    HeaderEdit::AddToResponse(name, value) => {
                        writeln!(out, "          add to the response {name}: {value}")
                    }
                };
            }
        }
        Outcome::Reply(reply) => {
            let _ = writeln!(out, "decision  answered by the filter: {}", reply.status);
            for (name, value) in reply.headers.iter().filter(|(n, _)| n == "location") {
                let _ = writeln!(out, "          {name}: {value}");
            }
        }
        Outcome::Call(_) => {
            let _ = writeln!(
                out,
                "decision  a login callback: the filter redeems the code at the token endpoint"
            );
        }
        Outcome::Deny(deny) => {
            let reason = e.decision.refusal.map_or("refused", Refusal::reason);
            let _ = writeln!(out, "decision  refuse: {} ({reason})", deny.status);
            if let Some(challenge) = &deny.www_authenticate {
                let _ = writeln!(out, "          www-authenticate: {challenge}");
            }
            for (name, value) in &deny.headers {
                let _ = writeln!(out, "          {name}: {value}");
            }
            let _ = writeln!(out, "          body: {}", deny.body);
        }
        Outcome::Wait(_) => {
            let _ = writeln!(
                out,
                "decision  would wait (keys, an exchange or the policy service)"
            );
        }
    }
    if !e.counters.is_empty() {
        let _ = writeln!(out, "stats     {}", e.counters.join(", "));
    }
    out
}

/// Parses `90`, `90s`, `15m`, `1h`, `2d`, with an optional leading `-`.
fn parse_duration(text: &str) -> Result<i64, String> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (number, unit) = match digits.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => digits.split_at(i),
        None => (digits, "s"),
    };
    let number: i64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?}"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("bad duration unit in {text:?} (s, m, h or d)")),
    };
    Ok(if negative {
        -number * scale
    } else {
        number * scale
    })
}

/// Sets `value` at a dotted `path` inside `claims`, creating objects on the way.
fn set_claim(claims: &mut Map<String, Value>, path: &str, value: Value) -> Result<(), String> {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts
        .pop()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| format!("bad claim name {path:?}"))?;
    let mut object = claims;
    for part in parts {
        let entry = object.entry(part.to_owned()).or_insert_with(|| json!({}));
        object = entry
            .as_object_mut()
            .ok_or_else(|| format!("{part:?} in {path:?} is not an object"))?;
    }
    object.insert(last.to_owned(), value);
    Ok(())
}

fn value_of<'a>(args: &'a [String], i: usize, flag: &str) -> Result<&'a str, String> {
    args.get(i + 1)
        .map(String::as_str)
        .ok_or_else(|| format!("{flag} needs a value"))
}

fn token(args: &[String]) -> Result<(), String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs() as i64;
    let mut key_path = None;
    let mut claims = Map::new();
    let mut audiences: Vec<String> = Vec::new();
    let mut exp_in = Some(3600);
    let mut typ = None;
    let mut count: u64 = 1;
    let mut i = 0;
    while i < args.len() {
        let flag = args.get(i).map(String::as_str).unwrap_or_default();
        match flag {
            "--no-exp" => {
                exp_in = None;
                i += 1;
                continue;
            }
            "--key" => key_path = Some(value_of(args, i, flag)?.to_owned()),
            "--iss" => set_claim(&mut claims, "iss", json!(value_of(args, i, flag)?))?,
            "--sub" => set_claim(&mut claims, "sub", json!(value_of(args, i, flag)?))?,
            "--aud" => audiences.push(value_of(args, i, flag)?.to_owned()),
            "--exp-in" => exp_in = Some(parse_duration(value_of(args, i, flag)?)?),
            "--nbf-in" => set_claim(
                &mut claims,
                "nbf",
                json!(now + parse_duration(value_of(args, i, flag)?)?),
            )?,
            "--typ" => typ = Some(value_of(args, i, flag)?.to_owned()),
            "--count" => {
                let text = value_of(args, i, flag)?;
                count = text.parse().map_err(|_| format!("bad --count {text:?}"))?;
            }
            "--claim" => {
                let pair = value_of(args, i, flag)?;
                let (name, raw) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("--claim {pair:?}: expected NAME=VALUE"))?;
                let value = serde_json::from_str(raw).unwrap_or_else(|_| json!(raw));
                set_claim(&mut claims, name, value)?;
            }
            _ => return Err(format!("unknown option {flag:?}\n{USAGE}")),
        }
        i += 2;
    }
    let key_path = key_path.ok_or("--key is required")?;
    let jwk: Value =
        serde_json::from_slice(&read_input(&key_path)?).map_err(|e| format!("{key_path}: {e}"))?;
    let key = SigningKey::from_jwk(&jwk).map_err(|e| format!("{key_path}: {e}"))?;
    match audiences.as_slice() {
        [] => {}
        [one] => set_claim(&mut claims, "aud", json!(one))?,
        many => set_claim(&mut claims, "aud", json!(many))?,
    }
    set_claim(&mut claims, "iat", json!(now))?;
    if let Some(exp_in) = exp_in {
        set_claim(&mut claims, "exp", json!(now + exp_in))?;
    }
    let mut header = json!({"alg": key.alg.name(), "typ": typ.as_deref().unwrap_or("JWT")});
    if let (Some(kid), Some(obj)) = (&key.kid, header.as_object_mut()) {
        obj.insert("kid".into(), json!(kid));
    }
    if count == 1 {
        println!("{}", key.sign_with_header(&header, &Value::Object(claims))?);
        return Ok(());
    }
    // Many distinct tokens (benchmarks, cache tests): each gets its own `jti`.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for n in 0..count {
        set_claim(&mut claims, "jti", json!(format!("{now}-{n}")))?;
        let token = key.sign_with_header(&header, &Value::Object(claims.clone()))?;
        std::io::Write::write_all(&mut out, format!("{token}\n").as_bytes())
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn keygen(args: &[String]) -> Result<(), String> {
    let mut alg = Alg::RS256;
    let mut kid = None;
    let mut out = ".".to_owned();
    let mut i = 0;
    while i < args.len() {
        let flag = args.get(i).map(String::as_str).unwrap_or_default();
        let value = value_of(args, i, flag)?;
        match flag {
            "--alg" => {
                alg = Alg::from_name(value).ok_or_else(|| format!("unsupported --alg {value:?}"))?
            }
            "--kid" => kid = Some(value.to_owned()),
            "--out" => out = value.to_owned(),
            _ => return Err(format!("unknown option {flag:?}\n{USAGE}")),
        }
        i += 2;
    }
    let kid = kid.unwrap_or_else(|| format!("dev-{}", alg.name().to_ascii_lowercase()));
    let jwk = generate_jwk(alg, &kid)?;
    let public = SigningKey::from_jwk(&jwk)?.public_jwk();
    std::fs::create_dir_all(&out).map_err(|e| format!("{out}: {e}"))?;
    let key_path = format!("{out}/{kid}.jwk");
    write_private(
        &key_path,
        &serde_json::to_string_pretty(&jwk).map_err(|e| e.to_string())?,
    )?;

    // Add to (or replace in) the directory's public key set.
    let jwks_path = format!("{out}/jwks.json");
    let mut keys: Vec<Value> = std::fs::read(&jwks_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.get("keys").and_then(Value::as_array).cloned())
        .unwrap_or_default();
    keys.retain(|k| k.get("kid").and_then(Value::as_str) != Some(kid.as_str()));
    keys.push(public);
    let jwks = serde_json::to_string_pretty(&json!({ "keys": keys })).map_err(|e| e.to_string())?;
    std::fs::write(&jwks_path, jwks + "\n").map_err(|e| format!("{jwks_path}: {e}"))?;
    println!("private key: {key_path}\npublic JWKS: {jwks_path}");
    Ok(())
}

fn write_private(path: &str, contents: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{path}: {e}"))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .map_err(|e| format!("{path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_signs() {
        assert_eq!(parse_duration("90").unwrap(), 90);
        assert_eq!(parse_duration("15m").unwrap(), 900);
        assert_eq!(parse_duration("1h").unwrap(), 3600);
        assert_eq!(parse_duration("-2d").unwrap(), -172800);
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn dotted_claims_build_nested_objects() {
        let mut claims = Map::new();
        set_claim(&mut claims, "realm_access.roles", json!(["a"])).unwrap();
        set_claim(&mut claims, "realm_access.x", json!(1)).unwrap();
        assert_eq!(
            Value::Object(claims),
            json!({"realm_access": {"roles": ["a"], "x": 1}})
        );
    }
}

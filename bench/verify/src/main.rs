//! Native side of the verification benchmark.
//!
//!   verify-bench [--rounds N] [--round-ms MS]   run the suite natively, print its lines
//!   verify-bench report FILE...                 one table from the `bench|` lines of Envoy
//!                                               logs and native runs (median over runs)
//!   verify-bench gen > vectors.json             new vectors: the fixture keys of
//!                                               tests/fixtures/keys plus fresh 3072- and
//!                                               4096-bit RSA keys, signed by the filter's
//!                                               own signing code

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("gen") => native::generate().map(|json| println!("{json}")),
        Some("report") => native::report(args.get(1..).unwrap_or_default()),
        _ => native::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("verify-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use serde_json::{json, Value};
    use std::time::Instant;
    use tokengate::crypto::sign::SigningKey;
    use tokengate_verify_bench::suite::{self, Settings};

    pub fn run(args: &[String]) -> Result<(), String> {
        let mut settings = Settings::default();
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            if flag == "--vectors" {
                settings.vectors = args.next().cloned().unwrap_or_default();
                continue;
            }
            let value = args
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(format!("{flag} needs a number"))?;
            match flag.as_str() {
                "--rounds" => settings.rounds = value as usize,
                "--round-ms" => settings.round_ns = value * 1_000_000,
                other => return Err(format!("unknown flag {other}")),
            }
        }
        let epoch = Instant::now();
        let clock = move || u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        suite::run(None, &clock, settings, &mut |row| {
            println!("{}", row.line("native"))
        })
    }

    /// Median of a non-empty list (the lower middle for an even count).
    fn median(values: &mut [f64]) -> f64 {
        values.sort_by(f64::total_cmp);
        values
            .get((values.len().max(1) - 1) / 2)
            .copied()
            .unwrap_or(0.0)
    }

    /// (engine, vector, case, implementation) -> per-run (median, best, first), in µs.
    type Runs = std::collections::BTreeMap<(String, String, String, String), Vec<(f64, f64, f64)>>;

    pub fn report(files: &[String]) -> Result<(), String> {
        let mut runs = Runs::new();
        let mut order: Vec<String> = Vec::new();
        let mut wrong = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
            for line in text
                .lines()
                .filter_map(|l| l.find("bench|").map(|at| &l[at..]))
            {
                let f: Vec<&str> = line.split('|').collect();
                let [_, engine, vector, implementation, case, first, median, min, _max, _ops, ok] =
                    f[..]
                else {
                    continue;
                };
                let us = |t: &str| t.parse::<f64>().unwrap_or(f64::NAN) / 1000.0;
                if ok != "ok" {
                    wrong.push(line.to_owned());
                }
                if !order.iter().any(|v| v == vector) {
                    order.push(vector.to_owned());
                }
                runs.entry((
                    engine.into(),
                    vector.into(),
                    case.into(),
                    implementation.into(),
                ))
                .or_default()
                .push((us(median), us(min), us(first)));
            }
        }
        let mut engines: Vec<String> = runs.keys().map(|k| k.0.clone()).collect();
        engines.dedup();
        engines.sort_by_key(|e| (e == "native", e.clone()));
        for engine in engines {
            println!(
                "\n== {engine}: µs per operation; median over runs of each run's median \
                      [lowest..highest run median], best round, first call =="
            );
            println!(
                "{:<12} {:<10} {:<22} {:>9} {:>19} {:>9} {:>9} {:>5} {:>12}",
                "vector",
                "case",
                "implementation",
                "median",
                "[range]",
                "best",
                "first",
                "runs",
                "÷ tokengate"
            );
            for vector in &order {
                for case in ["verify", "bad sig", "parse key", "pow"] {
                    let rows: Vec<_> = runs
                        .iter()
                        .filter(|(k, _)| k.0 == engine && &k.1 == vector && k.2 == case)
                        .collect();
                    let ours = rows
                        .iter()
                        .find(|(k, _)| k.3 == "tokengate")
                        .map(|(_, r)| median(&mut r.iter().map(|x| x.0).collect::<Vec<_>>()));
                    let mut rows = rows;
                    rows.sort_by_key(|(k, _)| k.3 != "tokengate");
                    for ((_, _, _, implementation), r) in rows {
                        let mut medians: Vec<f64> = r.iter().map(|x| x.0).collect();
                        let m = median(&mut medians);
                        let lo = medians.first().copied().unwrap_or(0.0);
                        let hi = medians.last().copied().unwrap_or(0.0);
                        let best = r.iter().map(|x| x.1).fold(f64::INFINITY, f64::min);
                        let first = median(&mut r.iter().map(|x| x.2).collect::<Vec<_>>());
                        let ratio = match ours {
                            Some(o) if implementation != "tokengate" && o > 0.0 => {
                                format!("{:.2}×", m / o)
                            }
                            _ => String::new(),
                        };
                        println!(
                            "{:<12} {:<10} {:<22} {:>9.1} {:>19} {:>9.1} {:>9.1} {:>5} {:>12}",
                            vector,
                            case,
                            implementation,
                            m,
                            format!("[{lo:.1}..{hi:.1}]"),
                            best,
                            first,
                            r.len(),
                            ratio
                        );
                    }
                }
            }
        }
        if !wrong.is_empty() {
            return Err(format!("wrong verification results:\n{}", wrong.join("\n")));
        }
        Ok(())
    }

    fn fixture(name: &str) -> Result<Value, String> {
        let path = format!(
            "{}/../../tests/fixtures/keys/{name}.jwk",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))
    }

    fn rsa_jwk(bits: usize, alg: &str) -> Result<Value, String> {
        use rsa::traits::{PrivateKeyParts, PublicKeyParts};
        let key =
            rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, bits).map_err(|e| e.to_string())?;
        let b = |x: &rsa::BigUint| tokengate::crypto::b64::encode(&x.to_bytes_be());
        let primes = key.primes();
        let (Some(p), Some(q)) = (primes.first(), primes.get(1)) else {
            return Err("no primes".into());
        };
        Ok(
            json!({"kty": "RSA", "alg": alg, "kid": format!("rsa{bits}"), "n": b(key.n()), "e": b(key.e()),
                  "d": b(key.d()), "p": b(p), "q": b(q)}),
        )
    }

    fn with_alg(mut jwk: Value, alg: &str) -> Value {
        jwk["alg"] = json!(alg);
        jwk
    }

    pub fn generate() -> Result<String, String> {
        let rsa4096 = rsa_jwk(4096, "RS256")?;
        let keys = [
            ("RS256-2048", with_alg(fixture("rs256")?, "RS256")),
            ("PS256-2048", with_alg(fixture("ps256")?, "PS256")),
            ("RS256-3072", rsa_jwk(3072, "RS256")?),
            ("RS256-4096", rsa4096.clone()),
            ("PS512-4096", with_alg(rsa4096, "PS512")),
            ("ES256", with_alg(fixture("es256")?, "ES256")),
            ("ES384", with_alg(fixture("es384")?, "ES384")),
            ("EdDSA", with_alg(fixture("eddsa")?, "EdDSA")),
        ];
        // A token of a realistic size: its signing input is what gets hashed.
        let claims = json!({
            "iss": "https://idp.example.com/realms/corp", "sub": "0f5b2a4e-6a4c-4d7e-9b1a-6d1c2f3e4a5b",
            "aud": ["orders", "inventory"], "exp": 1_900_000_000u64, "iat": 1_800_000_000u64,
            "nbf": 1_800_000_000u64, "azp": "web", "scope": "openid profile email orders:read orders:write",
            "realm_access": {"roles": ["user", "admin", "offline_access"]}, "email": "alice@example.com"
        });
        let mut vectors = Vec::new();
        for (name, jwk) in keys {
            let signer = SigningKey::from_jwk(&jwk)?;
            let token = signer.sign(&claims)?;
            let (input, signature) = token.rsplit_once('.').ok_or("token without signature")?;
            vectors.push(json!({
                "name": name, "alg": signer.alg.name(), "jwk": signer.public_jwk(),
                "message": input, "signature": signature,
            }));
        }
        serde_json::to_string_pretty(&vectors).map_err(|e| e.to_string())
    }
}

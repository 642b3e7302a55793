//! The suite: every vector × every implementation that can verify it × {key parse, valid
//! signature, bad signature}, each timed in rounds with a clock passed in (nanoseconds).

use crate::candidates;
use crate::crypto::alg::Alg;
use crate::crypto::montgomery;
use crate::token::jwks::KeySet;
use crate::{mont_variants, old_montgomery, old_rsa_verify, simd_square};

/// The filter's RSA path before src/montgomery.rs: crypto-bigint's fixed widths.
const CRYPTO_BIGINT_OLD: &str = "crypto-bigint (old)";
/// The filter's arithmetic before the SIMD lanes: CIOS on u32 limbs (old_montgomery.rs).
const U32_CIOS_OLD: &str = "u32 CIOS (old)";
use serde_json::{json, Value};

/// The vectors run by default (run.sh regenerates them with `verify-bench gen`).
pub const VECTORS: &str = include_str!("../vectors.json");

/// How long to measure.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Timed rounds per row; the row reports their median, min and max.
    pub rounds: usize,
    /// Target duration of one round: decides how many operations a round runs.
    pub round_ns: u64,
    /// Names of the vectors to run (comma-separated); empty: all of them.
    pub vectors: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            rounds: 7,
            round_ns: 20_000_000,
            vectors: String::new(),
        }
    }
}

/// One measured row, in nanoseconds per operation.
#[derive(Debug, Clone)]
pub struct Row {
    pub vector: String,
    pub implementation: &'static str,
    pub case: &'static str,
    /// The very first call (cold: nothing cached, code maybe not yet optimized by the JIT).
    pub first: u64,
    pub median: u64,
    pub min: u64,
    pub max: u64,
    pub ops_per_round: u64,
    /// False if a result was wrong (a valid signature refused or a bad one accepted).
    pub correct: bool,
}

impl Row {
    /// `bench|engine|vector|implementation|case|first|median|min|max|ops|ok`, times in ns.
    pub fn line(&self, engine: &str) -> String {
        format!(
            "bench|{engine}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
            self.vector,
            self.implementation,
            self.case,
            self.first,
            self.median,
            self.min,
            self.max,
            self.ops_per_round,
            if self.correct { "ok" } else { "WRONG" }
        )
    }
}

struct Vector {
    name: String,
    alg: Alg,
    jwk: Value,
    message: Vec<u8>,
    signature: Vec<u8>,
}

fn vectors(json: &str) -> Result<Vec<Vector>, String> {
    let value: Value = serde_json::from_str(json).map_err(|e| format!("vectors: {e}"))?;
    let list = value.as_array().ok_or("vectors: not an array")?;
    list.iter()
        .map(|v| {
            let text = |name: &str| {
                v.get(name)
                    .and_then(Value::as_str)
                    .ok_or(format!("vector without {name}"))
            };
            let signature =
                crate::crypto::b64::decode(text("signature")?.as_bytes()).ok_or("bad signature")?;
            Ok(Vector {
                name: text("name")?.to_owned(),
                alg: Alg::from_name(text("alg")?).ok_or("unknown alg")?,
                jwk: v.get("jwk").cloned().ok_or("vector without jwk")?,
                message: text("message")?.as_bytes().to_vec(),
                signature,
            })
        })
        .collect()
}

/// Times `job` (which returns its verdict) and checks every verdict is `expected`.
fn measure(
    clock: &dyn Fn() -> u64,
    settings: &Settings,
    expected: bool,
    job: &dyn Fn() -> bool,
) -> (u64, u64, u64, u64, u64, bool) {
    let mut correct = true;
    let start = clock();
    correct &= job() == expected;
    let first = clock().saturating_sub(start);
    // Warm up for one round's time (untimed): V8 tiers functions up from its baseline
    // compiler in background threads, which compete with the measurement on 2 CPUs.
    let start = clock();
    while clock().saturating_sub(start) < settings.round_ns {
        correct &= job() == expected;
    }
    // Calibrate on a few warm calls.
    let start = clock();
    for _ in 0..3 {
        correct &= job() == expected;
    }
    let warm = (clock().saturating_sub(start) / 3).max(1);
    let ops = (settings.round_ns / warm).clamp(1, 100_000);
    let mut per_op: Vec<u64> = (0..settings.rounds.max(1))
        .map(|_| {
            let start = clock();
            for _ in 0..ops {
                correct &= job() == expected;
            }
            clock().saturating_sub(start) / ops
        })
        .collect();
    per_op.sort_unstable();
    let median = per_op.get(per_op.len() / 2).copied().unwrap_or(0);
    let min = per_op.first().copied().unwrap_or(0);
    let max = per_op.last().copied().unwrap_or(0);
    (first, median, min, max, ops, correct)
}

fn member(jwk: &Value, name: &str) -> Vec<u8> {
    jwk.get(name)
        .and_then(Value::as_str)
        .and_then(|s| crate::crypto::b64::decode(s.as_bytes()))
        .unwrap_or_default()
}

/// Runs the suite on `vectors_json` (`None`: the built-in vectors), calling `emit` per row.
pub fn run(
    vectors_json: Option<&str>,
    clock: &dyn Fn() -> u64,
    settings: Settings,
    emit: &mut dyn FnMut(&Row),
) -> Result<(), String> {
    let chosen = |name: &str| {
        settings.vectors.is_empty() || settings.vectors.split(',').any(|only| only == name)
    };
    for v in vectors(vectors_json.unwrap_or(VECTORS))?
        .into_iter()
        .filter(|v| chosen(&v.name))
    {
        let jwks = json!({ "keys": [v.jwk] });
        let key = KeySet::from_value(&jwks)
            .map_err(|e| format!("{}: {e}", v.name))?
            .set
            .keys()
            .first()
            .map(|k| k.key.clone())
            .ok_or("no key")?;
        let mut bad = v.signature.clone();
        if let Some(byte) = bad.get_mut(40) {
            *byte ^= 0x01;
        }
        let (alg, message, good) = (v.alg, v.message.as_slice(), v.signature.as_slice());

        let mut row = |implementation: &'static str,
                       case: &'static str,
                       expected: bool,
                       job: &dyn Fn() -> bool| {
            let (first, median, min, max, ops_per_round, correct) =
                measure(clock, &settings, expected, job);
            emit(&Row {
                vector: v.name.clone(),
                implementation,
                case,
                first,
                median,
                min,
                max,
                ops_per_round,
                correct,
            });
        };

        row("tokengate", "verify", true, &|| {
            key.verify(alg, message, good)
        });
        row("tokengate", "bad sig", false, &|| {
            key.verify(alg, message, &bad)
        });
        row("tokengate", "parse key", true, &|| {
            KeySet::from_value(&jwks).is_ok()
        });
        match alg {
            Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512 => {
                let (n, e) = (member(&v.jwk, "n"), member(&v.jwk, "e"));
                let old = candidates::rsa_crate_key(&n, &e).ok_or("rsa crate refused the key")?;
                row("rsa 0.9 (old)", "verify", true, &|| {
                    candidates::rsa_crate_verify(&old, alg, message, good)
                });
                row("rsa 0.9 (old)", "bad sig", false, &|| {
                    candidates::rsa_crate_verify(&old, alg, message, &bad)
                });
                row("rsa 0.9 (old)", "parse key", true, &|| {
                    candidates::rsa_crate_key(&n, &e).is_some()
                });
                let fixed = old_rsa_verify::RsaKey::new(&n, &e).map_err(|e| format!("{e:?}"))?;
                let fixed_verify = |signature: &[u8]| match alg {
                    Alg::RS256 | Alg::RS384 | Alg::RS512 => {
                        fixed.verify_pkcs1v15(alg.hash(), message, signature)
                    }
                    _ => fixed.verify_pss(alg.hash(), message, signature),
                };
                row(CRYPTO_BIGINT_OLD, "verify", true, &|| fixed_verify(good));
                row(CRYPTO_BIGINT_OLD, "bad sig", false, &|| fixed_verify(&bad));
                row(CRYPTO_BIGINT_OLD, "parse key", true, &|| {
                    old_rsa_verify::RsaKey::new(&n, &e).is_ok()
                });
                // `s^e mod n` alone, by each arithmetic; all must give the same bytes.
                let e64 = e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
                let modulus = montgomery::Modulus::new(&n).ok_or("montgomery refused n")?;
                let expected = modulus.pow(good, e64).ok_or("signature not below n")?;
                row("tokengate", "pow", true, &|| {
                    modulus.pow(good, e64).as_ref() == Some(&expected)
                });
                row(CRYPTO_BIGINT_OLD, "pow", true, &|| {
                    fixed.public_op(good).as_ref() == Some(&expected)
                });
                let u32_cios = old_montgomery::Modulus::new(&n).ok_or("u32 CIOS refused n")?;
                row(U32_CIOS_OLD, "pow", true, &|| {
                    u32_cios.pow(good, e64).as_ref() == Some(&expected)
                });
                let square = simd_square::Modulus::new(&n).ok_or("simd_square refused n")?;
                row("pow: SIMD, dedicated square", "pow", true, &|| {
                    square.pow(good, e64).as_ref() == Some(&expected)
                });
                let params = mont_variants::Params::new(&n).ok_or("variants refused n")?;
                for variant in mont_variants::Variant::ALL {
                    row(variant.name(), "pow", true, &|| {
                        params.pow(variant, good, e64).as_ref() == Some(&expected)
                    });
                }
                if alg == Alg::RS256 {
                    let e64 = e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
                    let boxed =
                        candidates::BoxedRsa::new(&n, e64).ok_or("boxed refused the key")?;
                    row("crypto-bigint Boxed", "verify", true, &|| {
                        boxed.verify_rs256(message, good)
                    });
                    row("crypto-bigint Boxed", "parse key", true, &|| {
                        candidates::BoxedRsa::new(&n, e64).is_some()
                    });
                }
            }
            Alg::EdDSA => {
                let x = member(&v.jwk, "x");
                let old = ed25519_compact::PublicKey::from_slice(&x).map_err(|e| e.to_string())?;
                row("ed25519-compact (old)", "verify", true, &|| {
                    candidates::ed25519_compact_verify(&old, message, good)
                });
                row("ed25519-compact (old)", "bad sig", false, &|| {
                    candidates::ed25519_compact_verify(&old, message, &bad)
                });
                let dalek = candidates::ed25519_dalek_key(&x).ok_or("dalek refused the key")?;
                row("ed25519-dalek 3 (old)", "verify", true, &|| {
                    candidates::ed25519_dalek_verify(&dalek, message, good)
                });
                row("ed25519-dalek 3 (old)", "bad sig", false, &|| {
                    candidates::ed25519_dalek_verify(&dalek, message, &bad)
                });
                row("ed25519-dalek 3 (old)", "parse key", true, &|| {
                    candidates::ed25519_dalek_key(&x).is_some()
                });
                ed25519_candidates(&x, message, good, &mut row)?;
                let alt = candidates::ed25519_dalek_alt_key(&x).ok_or("dalek refused the key")?;
                row(candidates::DALEK_ALT, "verify", true, &|| {
                    candidates::ed25519_dalek_alt_verify(&alt, message, good)
                });
                row(candidates::DALEK_ALT, "bad sig", false, &|| {
                    candidates::ed25519_dalek_alt_verify(&alt, message, &bad)
                });
            }
            Alg::ES256 => {
                let (x, y) = (member(&v.jwk, "x"), member(&v.jwk, "y"));
                let old = candidates::p256_crate_key(&x, &y).ok_or("p256 refused the key")?;
                row("p256 0.14 (old)", "verify", true, &|| {
                    candidates::p256_crate_verify(&old, message, good)
                });
                row("p256 0.14 (old)", "bad sig", false, &|| {
                    candidates::p256_crate_verify(&old, message, &bad)
                });
                row("p256 0.14 (old)", "parse key", true, &|| {
                    candidates::p256_crate_key(&x, &y).is_some()
                });
                // Table widths (key, generator) side by side; the filter's are
                // p256_verify::{KEY,GENERATOR}_WINDOW_BITS.
                let digest = hmac_sha256::Hash::hash(message);
                for (name, key_bits, generator_bits) in [
                    ("tables w4/w4", 4, 4),
                    ("tables w4/w6", 4, 6),
                    ("tables w5/w5", 5, 5),
                    ("tables w6/w6", 6, 6),
                ] {
                    use crate::crypto::p256_verify::{verify_with_tables, FixedBaseTable};
                    let point = p256::ProjectivePoint::from(*old.as_affine());
                    let key = FixedBaseTable::new(point, key_bits);
                    let generator =
                        FixedBaseTable::new(p256::ProjectivePoint::GENERATOR, generator_bits);
                    row(name, "verify", true, &|| {
                        verify_with_tables(&generator, &key, &digest, good)
                    });
                }
                // What a key's table costs at its first check, and the generator's at the
                // first ES256 check of a VM (the filter keeps both).
                for (name, bits) in [("table w4", 4), ("table w5", 5), ("table w6", 6)] {
                    let point = p256::ProjectivePoint::from(*old.as_affine());
                    row(name, "parse key", true, &|| {
                        crate::crypto::p256_verify::FixedBaseTable::new(point, bits).size_bytes()
                            > 0
                    });
                }
                let lib = candidates::libcrux_es256_key(&x, &y).ok_or("libcrux refused the key")?;
                row("libcrux-ecdsa", "verify", true, &|| {
                    candidates::libcrux_es256_verify(&lib, message, good)
                });
                row("libcrux-ecdsa", "bad sig", false, &|| {
                    candidates::libcrux_es256_verify(&lib, message, &bad)
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Ways of computing `[S]B - [k]A` side by side: the filter's tables at other widths
/// (key: w bits × passes; basepoint), curve25519-dalek's constant-time fixed-base tables
/// and its precomputed Straus. "parse key" rows: what a table costs to build.
/// Records one timed row: (label, case, expected result, the operation).
type RecordRow<'a> = dyn FnMut(&'static str, &'static str, bool, &dyn Fn() -> bool) + 'a;

fn ed25519_candidates(
    x: &[u8],
    message: &[u8],
    good: &[u8],
    row: &mut RecordRow<'_>,
) -> Result<(), String> {
    use crate::crypto::ed25519_verify::{verify_with_tables, FixedBaseTable};
    use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, ED25519_BASEPOINT_TABLE};
    let key_bytes: [u8; 32] = x.try_into().map_err(|_| "x is not 32 bytes")?;
    let minus_key = -curve25519_dalek::edwards::CompressedEdwardsY(key_bytes)
        .decompress()
        .ok_or("x does not decompress")?;
    row("Ed25519Key::from_bytes", "parse key", true, &|| {
        crate::crypto::Ed25519Key::from_bytes(x).is_some()
    });
    // The parts of a verification that no table changes.
    row("part: SHA-512, mod L", "verify", true, &|| {
        use sha2_11::{Digest, Sha512};
        let mut hash = Sha512::new();
        hash.update(good.get(..32).unwrap_or_default());
        hash.update(key_bytes);
        hash.update(message);
        curve25519_dalek::Scalar::from_bytes_mod_order_wide(&hash.finalize().into())
            != curve25519_dalek::Scalar::ZERO
    });
    row("part: compress R'", "verify", true, &|| {
        minus_key.compress().as_bytes() != &key_bytes
    });
    for (name, key_bits, key_passes, base_bits) in [
        ("tables w4x2/w7", 4, 2, 7),
        ("tables w4x2/w6", 4, 2, 6),
        ("tables w5x2/w6", 5, 2, 6),
        ("tables w5x1/w6", 5, 1, 6),
        ("tables w6x2/w7", 6, 2, 7),
        ("tables w5x2/w8", 5, 2, 8),
        ("tables w5x2/w7", 5, 2, 7),
    ] {
        let key = FixedBaseTable::new(&minus_key, key_bits, key_passes);
        let base = FixedBaseTable::new(&ED25519_BASEPOINT_POINT, base_bits, 1);
        row(name, "verify", true, &|| {
            verify_with_tables(&base, &key, &key_bytes, message, good)
        });
    }
    for (name, bits, passes) in [
        ("table w4x2", 4, 2),
        ("table w5x2", 5, 2),
        ("table w5x1", 5, 1),
        ("table w6x2", 6, 2),
        ("table w6x1", 6, 1),
        ("table w7x1", 7, 1),
        ("table w8x1", 8, 1),
    ] {
        row(name, "parse key", true, &|| {
            FixedBaseTable::new(&minus_key, bits, passes).size_bytes() > 0
        });
    }
    let dalek_table = candidates::dalek_basepoint_table(&minus_key);
    row("dalek radix-16 tables", "verify", true, &|| {
        candidates::ed25519_verify_with(&key_bytes, message, good, &|s, k| {
            (s * ED25519_BASEPOINT_TABLE) + (k * &dalek_table)
        })
    });
    row("dalek radix-16 tables", "parse key", true, &|| {
        use curve25519_dalek::traits::BasepointTable;
        candidates::dalek_basepoint_table(&minus_key).basepoint() == minus_key
    });
    let straus = candidates::dalek_precomputation(&minus_key);
    row("dalek precomputed Straus", "verify", true, &|| {
        use curve25519_dalek::traits::VartimePrecomputedMultiscalarMul;
        candidates::ed25519_verify_with(&key_bytes, message, good, &|s, k| {
            straus.vartime_multiscalar_mul([s, k])
        })
    });
    row("dalek precomputed Straus", "parse key", true, &|| {
        use curve25519_dalek::traits::VartimePrecomputedMultiscalarMul;
        candidates::dalek_precomputation(&minus_key).len() == 2
    });
    Ok(())
}

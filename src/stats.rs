//! Metric names. Envoy shows proxy-wasm metrics with its own prefix (`wasmcustom.`).

/// A counter the core or the host asks to increment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    Allowed,
    /// `tokengate.denied.<reason>`.
    Denied(&'static str),
    CacheHit,
    CacheMiss,
    JwksFetchSuccess,
    JwksFetchFailure,
    /// A refetch started because a token's `kid` was not in the set.
    JwksRefetchUnknownKid,
    /// A request verified with keys past their time to live (refreshes failing).
    JwksStaleServed,
    /// A discovery document named another issuer.
    JwksDiscoveryIssuerMismatch,
}

impl Counter {
    pub fn name(self) -> String {
        match self {
            Counter::Allowed => "tokengate.allowed".into(),
            Counter::Denied(reason) => format!("tokengate.denied.{reason}"),
            Counter::CacheHit => "tokengate.cache.hit".into(),
            Counter::CacheMiss => "tokengate.cache.miss".into(),
            Counter::JwksFetchSuccess => "tokengate.jwks.fetch.success".into(),
            Counter::JwksFetchFailure => "tokengate.jwks.fetch.failure".into(),
            Counter::JwksRefetchUnknownKid => "tokengate.jwks.refetch_unknown_kid".into(),
            Counter::JwksStaleServed => "tokengate.jwks.stale_served".into(),
            Counter::JwksDiscoveryIssuerMismatch => {
                "tokengate.jwks.discovery_issuer_mismatch".into()
            }
        }
    }
}

/// The gauge holding the age of a provider's key set, in seconds.
pub fn key_age_gauge(provider: &str) -> String {
    format!("tokengate.jwks.{provider}.age_secs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_names_follow_the_contract() {
        assert_eq!(Counter::Allowed.name(), "tokengate.allowed");
        assert_eq!(
            Counter::Denied("expired").name(),
            "tokengate.denied.expired"
        );
        assert_eq!(Counter::CacheHit.name(), "tokengate.cache.hit");
        assert_eq!(Counter::CacheMiss.name(), "tokengate.cache.miss");
        assert_eq!(
            Counter::JwksFetchSuccess.name(),
            "tokengate.jwks.fetch.success"
        );
        assert_eq!(
            Counter::JwksStaleServed.name(),
            "tokengate.jwks.stale_served"
        );
        assert_eq!(key_age_gauge("corp"), "tokengate.jwks.corp.age_secs");
    }
}

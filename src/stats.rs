//! Metric names. Envoy shows proxy-wasm metrics with its own prefix (`wasmcustom.`).

/// A counter the flow asks the host to increment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    Allowed,
    /// `tokengate.denied.<reason>`.
    Denied(&'static str),
    CacheHit,
    CacheMiss,
}

impl Counter {
    pub fn name(self) -> String {
        match self {
            Counter::Allowed => "tokengate.allowed".into(),
            Counter::Denied(reason) => format!("tokengate.denied.{reason}"),
            Counter::CacheHit => "tokengate.cache.hit".into(),
            Counter::CacheMiss => "tokengate.cache.miss".into(),
        }
    }
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
    }
}

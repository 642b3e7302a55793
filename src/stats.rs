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
    /// `tokengate.exchange.<name>.<event>`, for the exchange at this index.
    Exchange(usize, ExchangeEvent),
    /// `tokengate.rule.<name>.<event>`, for the rule at this index.
    Rule(usize, RuleEvent),
    /// `tokengate.authz_service.<event>`.
    AuthzService(AuthzEvent),
    /// `tokengate.login.<event>`.
    Login(crate::login::LoginEvent),
    /// `tokengate.revocation.<event>`.
    Revocation(RevocationEvent),
}

/// What happened about a token's revocation (status lists, back-channel logout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationEvent {
    /// A status list was fetched and verified.
    ListFetchSuccess,
    /// A status list fetch failed (transport, status, size, signature, claims, bomb).
    ListFetchFailure,
    /// A token's status list entry is INVALID.
    ListRevoked,
    /// A token's status list entry is SUSPENDED.
    ListSuspended,
    /// A token's list was unavailable and `on_unavailable: allow` let it through.
    ListUnavailableAllowed,
    /// A back-channel logout token was verified and recorded.
    BackchannelAccepted,
    /// A back-channel logout request was refused (400/413).
    BackchannelRejected,
}

impl RevocationEvent {
    pub fn name(self) -> &'static str {
        match self {
            RevocationEvent::ListFetchSuccess => "tokengate.revocation.status_list.fetch_success",
            RevocationEvent::ListFetchFailure => "tokengate.revocation.status_list.fetch_failure",
            RevocationEvent::ListRevoked => "tokengate.revocation.status_list.revoked",
            RevocationEvent::ListSuspended => "tokengate.revocation.status_list.suspended",
            RevocationEvent::ListUnavailableAllowed => {
                "tokengate.revocation.status_list.unavailable_allowed"
            }
            RevocationEvent::BackchannelAccepted => "tokengate.revocation.backchannel.accepted",
            RevocationEvent::BackchannelRejected => "tokengate.revocation.backchannel.rejected",
        }
    }
}

/// What a rule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleEvent {
    Allowed,
    Denied,
    /// Denied, but let through: the rule is a dry run.
    DryRunDenied,
}

/// What the central policy service said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthzEvent {
    Allowed,
    Denied,
    /// Decided from the VM's decision cache.
    CacheHit,
    /// No usable decision (down, slow, garbage): `on_error` applies.
    Failure,
}

/// The names metric names are built from: exchanges and rules, by index.
#[derive(Debug, Clone, Default)]
pub struct MetricNames {
    pub exchanges: Vec<String>,
    /// Stat-safe rule names.
    pub rules: Vec<String>,
}

/// What happened to an opaque token at an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeEvent {
    /// Answered from a cached identity (this VM's or all workers').
    Hit,
    /// Not known anywhere: a callout was started.
    Miss,
    /// Refused from a cached refusal.
    NegativeHit,
    /// The auth service said the token is not active.
    Inactive,
    /// No usable answer (down, slow, 5xx, garbage, oversized, refusing the gateway).
    CalloutFailure,
}

impl ExchangeEvent {
    pub fn name(self) -> &'static str {
        match self {
            ExchangeEvent::Hit => "hit",
            ExchangeEvent::Miss => "miss",
            ExchangeEvent::NegativeHit => "negative_hit",
            ExchangeEvent::Inactive => "inactive",
            ExchangeEvent::CalloutFailure => "callout_failure",
        }
    }
}

/// An exchange counter's name.
pub fn exchange_counter(exchange: &str, event: ExchangeEvent) -> String {
    format!("tokengate.exchange.{exchange}.{}", event.name())
}

/// The histogram of an exchange's callout latency, in milliseconds.
pub fn exchange_latency_histogram(exchange: &str) -> String {
    format!("tokengate.exchange.{exchange}.callout_ms")
}

impl Counter {
    /// The metric name.
    pub fn name(self, names: &MetricNames) -> String {
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
            Counter::Exchange(index, event) => exchange_counter(
                names.exchanges.get(index).map_or("unknown", String::as_str),
                event,
            ),
            Counter::Rule(index, event) => {
                let rule = names.rules.get(index).map_or("unknown", String::as_str);
                let event = match event {
                    RuleEvent::Allowed => "allowed",
                    RuleEvent::Denied => "denied",
                    RuleEvent::DryRunDenied => "dry_run_denied",
                };
                format!("tokengate.rule.{rule}.{event}")
            }
            Counter::AuthzService(event) => {
                let event = match event {
                    AuthzEvent::Allowed => "allowed",
                    AuthzEvent::Denied => "denied",
                    AuthzEvent::CacheHit => "cache_hit",
                    AuthzEvent::Failure => "failure",
                };
                format!("tokengate.authz_service.{event}")
            }
            Counter::Login(event) => format!("tokengate.login.{}", event.name()),
            Counter::Revocation(event) => event.name().to_owned(),
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
        assert_eq!(
            Counter::Allowed.name(&MetricNames::default()),
            "tokengate.allowed"
        );
        assert_eq!(
            Counter::Denied("expired").name(&MetricNames::default()),
            "tokengate.denied.expired"
        );
        assert_eq!(
            Counter::CacheHit.name(&MetricNames::default()),
            "tokengate.cache.hit"
        );
        assert_eq!(
            Counter::CacheMiss.name(&MetricNames::default()),
            "tokengate.cache.miss"
        );
        assert_eq!(
            Counter::JwksFetchSuccess.name(&MetricNames::default()),
            "tokengate.jwks.fetch.success"
        );
        assert_eq!(
            Counter::JwksStaleServed.name(&MetricNames::default()),
            "tokengate.jwks.stale_served"
        );
        assert_eq!(key_age_gauge("corp"), "tokengate.jwks.corp.age_secs");
        let names = MetricNames {
            exchanges: vec!["opaque".to_owned()],
            rules: vec!["admin".to_owned()],
        };
        assert_eq!(
            Counter::Exchange(0, ExchangeEvent::NegativeHit).name(&names),
            "tokengate.exchange.opaque.negative_hit"
        );
        assert_eq!(
            Counter::Rule(0, RuleEvent::DryRunDenied).name(&names),
            "tokengate.rule.admin.dry_run_denied"
        );
        assert_eq!(
            Counter::AuthzService(AuthzEvent::CacheHit).name(&names),
            "tokengate.authz_service.cache_hit"
        );
        assert_eq!(
            Counter::Revocation(RevocationEvent::ListUnavailableAllowed).name(&names),
            "tokengate.revocation.status_list.unavailable_allowed"
        );
        assert_eq!(
            Counter::Revocation(RevocationEvent::BackchannelRejected).name(&names),
            "tokengate.revocation.backchannel.rejected"
        );
    }
}

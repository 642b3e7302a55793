//! The back-channel logout denylist: who was logged out when, and which logout tokens
//! were already used. Bounded; shared by all workers as bytes (the host keeps it in
//! shared data); checked on every request of its provider, cache hits included.

use super::logout::{Logout, LogoutError, MAX_AGE_SECS};
use crate::crypto::b64;
use std::collections::HashMap;

/// Entries (and remembered `jti`s) per provider. When full, the entry that expires
/// soonest (the oldest logout) is dropped to make room: every new logout is recorded.
pub const MAX_ENTRIES: usize = 4096;

/// One logout: tokens matching every field it has (`sub`, `sid`) and issued at or before
/// `logout_at` are refused until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub sub: Option<String>,
    pub sid: Option<String>,
    pub logout_at: u64,
    pub expires_at: u64,
}

/// What a token shows the denylist: who it is for, which session, when it was issued.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    pub sub: Option<String>,
    pub sid: Option<String>,
    pub iat: Option<u64>,
}

/// The denylist. `version` increases on every change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Denylist {
    pub version: u64,
    entries: Vec<Entry>,
    /// (jti, forget after): logout tokens already used.
    jtis: Vec<(String, u64)>,
    /// Lookup indexes, rebuilt on decode and on change.
    by_sub: HashMap<String, Vec<usize>>,
    by_sid: HashMap<String, Vec<usize>>,
}

/// A text field of the shared encoding: `.` for none, else `=` and base64url.
fn field(value: Option<&str>) -> String {
    match value {
        None => ".".to_owned(),
        Some(text) => format!("={}", b64::encode(text.as_bytes())),
    }
}

fn read_field(text: &str) -> Option<Option<String>> {
    match text {
        "." => Some(None),
        _ => {
            let bytes = b64::decode(text.strip_prefix('=')?.as_bytes())?;
            Some(Some(String::from_utf8(bytes).ok()?))
        }
    }
}

impl Denylist {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The shared form, one line each: `v <version>`, `e <logout_at> <expires_at> <sub>
    /// <sid>`, `j <forget after> <jti>` (strings as [`field`]s). A small text format read
    /// by hand: no serde code for it in the module.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("v {}\n", self.version);
        for e in &self.entries {
            out.push_str(&format!(
                "e {} {} {} {}\n",
                e.logout_at,
                e.expires_at,
                field(e.sub.as_deref()),
                field(e.sid.as_deref())
            ));
        }
        for (jti, until) in &self.jtis {
            out.push_str(&format!("j {until} {}\n", field(Some(jti))));
        }
        out.into_bytes()
    }

    /// Reads [`Denylist::encode`]'s form; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<Denylist> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut list = Denylist::default();
        let mut lines = text.lines();
        list.version = lines.next()?.strip_prefix("v ")?.parse().ok()?;
        for line in lines {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["e", logout_at, expires_at, sub, sid] => list.entries.push(Entry {
                    sub: read_field(sub)?,
                    sid: read_field(sid)?,
                    logout_at: logout_at.parse().ok()?,
                    expires_at: expires_at.parse().ok()?,
                }),
                ["j", until, jti] => list.jtis.push((read_field(jti)??, until.parse().ok()?)),
                _ => return None,
            }
        }
        if list.entries.len() > MAX_ENTRIES || list.jtis.len() > MAX_ENTRIES {
            return None;
        }
        list.reindex();
        Some(list)
    }

    fn reindex(&mut self) {
        self.by_sub.clear();
        self.by_sid.clear();
        for (i, entry) in self.entries.iter().enumerate() {
            // An entry with a sid is found by it (and must match the sub too, if any).
            match (&entry.sid, &entry.sub) {
                (Some(sid), _) => self.by_sid.entry(sid.clone()).or_default().push(i),
                (None, Some(sub)) => self.by_sub.entry(sub.clone()).or_default().push(i),
                (None, None) => {}
            }
        }
    }

    /// Whether a token is logged out at `now`. A matching token without `iat` can't
    /// show it came after the logout: it is refused.
    pub fn revokes(&self, token: &Subject, now: u64) -> bool {
        if self.entries.is_empty() {
            return false;
        }
        let covers = |entry: &Entry| {
            now < entry.expires_at
                && entry
                    .sub
                    .as_ref()
                    .is_none_or(|sub| token.sub.as_ref() == Some(sub))
                && entry
                    .sid
                    .as_ref()
                    .is_none_or(|sid| token.sid.as_ref() == Some(sid))
                && token.iat.is_none_or(|iat| iat <= entry.logout_at)
        };
        let found = |index: &HashMap<String, Vec<usize>>, key: &Option<String>| {
            key.as_ref()
                .and_then(|k| index.get(k))
                .is_some_and(|at| at.iter().filter_map(|i| self.entries.get(*i)).any(covers))
        };
        found(&self.by_sid, &token.sid) || found(&self.by_sub, &token.sub)
    }

    /// Records a verified logout at `now`: refused if its `jti` was seen (a replay,
    /// nothing changes). Expired entries are dropped first; when still full, the ones
    /// that expire soonest.
    pub fn record(
        &mut self,
        logout: &Logout,
        now: u64,
        max_token_lifetime_secs: u64,
        clock_skew_secs: u64,
    ) -> Result<(), LogoutError> {
        self.jtis.retain(|(_, until)| now < *until);
        if self.jtis.iter().any(|(jti, _)| *jti == logout.jti) {
            return Err(LogoutError::Replayed);
        }
        self.entries.retain(|e| now < e.expires_at);
        // A logout token is accepted up to MAX_AGE_SECS (+ skew) after its iat: its jti
        // is kept that long, and a replay after that is refused as stale.
        let jti_until = logout
            .iat
            .saturating_add(MAX_AGE_SECS)
            .saturating_add(clock_skew_secs.saturating_mul(2))
            .max(now.saturating_add(1));
        if self.jtis.len() >= MAX_ENTRIES {
            drop_soonest(&mut self.jtis, |(_, until)| *until);
        }
        self.jtis.push((logout.jti.clone(), jti_until));
        if self.entries.len() >= MAX_ENTRIES {
            drop_soonest(&mut self.entries, |e| e.expires_at);
        }
        self.entries.push(Entry {
            sub: logout.sub.clone(),
            sid: logout.sid.clone(),
            // Tokens issued in the same second as the logout are refused too.
            logout_at: now,
            expires_at: now.saturating_add(max_token_lifetime_secs),
        });
        self.version = self.version.saturating_add(1);
        self.reindex();
        Ok(())
    }
}

fn drop_soonest<T>(items: &mut Vec<T>, until: impl Fn(&T) -> u64) {
    if let Some(at) = items
        .iter()
        .enumerate()
        .min_by_key(|(_, item)| until(item))
        .map(|(i, _)| i)
    {
        items.swap_remove(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn logout(sub: Option<&str>, sid: Option<&str>, jti: &str) -> Logout {
        Logout {
            sub: sub.map(str::to_owned),
            sid: sid.map(str::to_owned),
            jti: jti.to_owned(),
            iat: NOW,
        }
    }

    fn token(sub: &str, sid: Option<&str>, iat: u64) -> Subject {
        Subject {
            sub: Some(sub.to_owned()),
            sid: sid.map(str::to_owned),
            iat: Some(iat),
        }
    }

    #[test]
    fn a_logged_out_subject_is_refused_until_a_token_issued_after() {
        let mut list = Denylist::default();
        list.record(&logout(Some("alice"), None, "j1"), NOW, 3600, 60)
            .unwrap();
        assert!(list.revokes(&token("alice", None, NOW - 100), NOW + 1));
        assert!(
            list.revokes(&token("alice", Some("any"), NOW), NOW + 1),
            "same second"
        );
        assert!(
            !list.revokes(&token("alice", None, NOW + 1), NOW + 2),
            "issued after"
        );
        assert!(!list.revokes(&token("bob", None, NOW - 100), NOW + 1));
        assert!(
            !list.revokes(&token("alice", None, NOW - 100), NOW + 3600),
            "entry expired"
        );
    }

    #[test]
    fn a_session_logout_covers_only_that_session() {
        let mut list = Denylist::default();
        list.record(&logout(Some("alice"), Some("s1"), "j1"), NOW, 3600, 60)
            .unwrap();
        assert!(list.revokes(&token("alice", Some("s1"), NOW - 1), NOW));
        assert!(!list.revokes(&token("alice", Some("s2"), NOW - 1), NOW));
        assert!(!list.revokes(&token("alice", None, NOW - 1), NOW));
        assert!(
            !list.revokes(&token("mallory", Some("s1"), NOW - 1), NOW),
            "sub must match too"
        );
        let mut sid_only = Denylist::default();
        sid_only
            .record(&logout(None, Some("s1"), "j1"), NOW, 3600, 60)
            .unwrap();
        assert!(sid_only.revokes(&token("anyone", Some("s1"), NOW - 1), NOW));
    }

    #[test]
    fn a_matching_token_without_iat_is_refused() {
        let mut list = Denylist::default();
        list.record(&logout(Some("alice"), None, "j1"), NOW, 3600, 60)
            .unwrap();
        let no_iat = Subject {
            sub: Some("alice".into()),
            sid: None,
            iat: None,
        };
        assert!(list.revokes(&no_iat, NOW));
    }

    #[test]
    fn a_replayed_jti_is_refused_and_changes_nothing() {
        let mut list = Denylist::default();
        list.record(&logout(Some("alice"), None, "j1"), NOW, 3600, 60)
            .unwrap();
        let before = list.clone();
        assert_eq!(
            list.record(&logout(Some("bob"), None, "j1"), NOW + 10, 3600, 60),
            Err(LogoutError::Replayed)
        );
        assert_eq!(list, before);
        assert!(!list.revokes(&token("bob", None, NOW), NOW + 10));
    }

    #[test]
    fn it_survives_encoding_with_its_indexes() {
        let mut list = Denylist::default();
        list.record(&logout(Some("alice"), Some("s1"), "j1"), NOW, 3600, 60)
            .unwrap();
        list.record(&logout(Some("bob"), None, "j2"), NOW, 3600, 60)
            .unwrap();
        list.record(&logout(None, Some("s 2\nv 9"), "j3"), NOW, 3600, 60)
            .unwrap();
        let copy = Denylist::decode(&list.encode()).unwrap();
        assert_eq!(copy, list);
        assert_eq!(copy.version, 3);
        assert!(
            copy.revokes(&token("x", Some("s 2\nv 9"), NOW), NOW),
            "any text survives"
        );
        assert!(copy.revokes(&token("alice", Some("s1"), NOW), NOW));
        assert!(copy.revokes(&token("bob", None, NOW), NOW));
        assert!(Denylist::decode(b"garbage").is_none());
        assert!(Denylist::decode(b"v 1\ne 1 2 =!! .\n").is_none());
        assert!(Denylist::decode(b"v 1\nx\n").is_none());
    }

    #[test]
    fn when_full_the_oldest_logout_makes_room() {
        let mut list = Denylist::default();
        for i in 0..MAX_ENTRIES as u64 {
            list.record(
                &logout(Some(&format!("u{i}")), None, &format!("j{i}")),
                NOW + i,
                100_000,
                60,
            )
            .unwrap();
        }
        assert_eq!(list.len(), MAX_ENTRIES);
        let last = NOW + MAX_ENTRIES as u64;
        list.record(&logout(Some("new"), None, "jn"), last, 100_000, 60)
            .unwrap();
        assert_eq!(list.len(), MAX_ENTRIES);
        assert!(list.revokes(&token("new", None, last), last));
        assert!(
            !list.revokes(&token("u0", None, NOW), last),
            "the oldest was dropped"
        );
        assert!(list.revokes(&token("u1", None, NOW), last));
    }

    #[test]
    fn expired_entries_and_jtis_are_dropped_on_the_next_record() {
        let mut list = Denylist::default();
        list.record(&logout(Some("alice"), None, "j1"), NOW, 10, 0)
            .unwrap();
        list.record(&logout(Some("bob"), None, "j2"), NOW + 1000, 10, 0)
            .unwrap();
        assert_eq!(list.len(), 1);
        // j1's replay window has passed: the logout token itself would now be stale.
        assert!(list
            .record(&logout(Some("alice"), None, "j1"), NOW + 1000, 10, 0)
            .is_ok());
    }
}

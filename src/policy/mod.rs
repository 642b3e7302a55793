//! Authorization: which rule applies to a request and what it requires.

pub mod authz;
pub mod central;
#[cfg(feature = "cli")]
pub mod explain;
#[cfg(feature = "cli")]
pub mod lint;
pub mod paths;
pub mod rules;

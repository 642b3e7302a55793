//! Authorization: which rule applies to a request and what it requires.

pub mod authz;
pub mod central;
pub mod paths;
pub mod rules;

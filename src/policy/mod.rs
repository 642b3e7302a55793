//! Authorization: which rule applies to a request and what it requires.

pub mod rules;

//! JWTs and key sets: where a token is found (extract), how it is verified (jwt, jwks),
//! what of it goes upstream (claims), and the per-VM cache of verified tokens. No I/O.

pub mod cache;
pub mod claims;
pub mod extract;
pub mod jwks;
pub mod jwt;

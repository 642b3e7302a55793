//! The end-to-end harness: a loopback upstream that echoes what it received, an Envoy
//! launcher running the built `tokengate.wasm`, a tiny HTTP/1.1 client, stats parsing,
//! shared signing keys, a controllable identity provider for remote key sets and a
//! controllable auth service for exchanges (the servers share `server`'s machinery).
//! Everything binds to 127.0.0.1 only, every wait is bounded.

#![allow(dead_code, unused_imports)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod auth;
pub mod client;
pub mod envoy;
pub mod idp;
pub mod keepalive;
pub mod keys;
pub mod oidc;
pub mod opa;
pub mod server;
pub mod status_list;
pub mod upstream;

pub use client::Response;
pub use envoy::Envoy;
pub use keys::{keys, now};
pub use upstream::Upstream;

use std::net::TcpListener;

/// A port nobody is listening on right now (bind 127.0.0.1:0, take the port, release it).
/// Another process could grab it before we use it: the Envoy launcher retries on
/// "address already in use".
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free ports (the listeners are held until all are chosen).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local_addr").port())
}

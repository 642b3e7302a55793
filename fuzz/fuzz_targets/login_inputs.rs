//! What a browser and an identity provider can send the login: any callback (path and
//! cookies, with a real sealed login cookie or none), any token endpoint answer to it,
//! any discovery document, any sealed cookie value and any Cookie header to join or strip.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use std::cell::Cell;
use tokengate::clock::Clock;
use tokengate::config::Config;
use tokengate::flow::{
    decide, finish_login, Caches, LoginEndpoints, LoginFinish, LoginService, Outcome, Services,
};
use tokengate::login::{cookies, pkce, read_discovery, seal};
use tokengate::token::extract::Request;

struct FixedRandom(Cell<u8>);

impl LoginService for FixedRandom {
    fn endpoints(&self, _: usize) -> LoginEndpoints {
        LoginEndpoints::Unavailable
    }
    fn random(&self, out: &mut [u8]) -> bool {
        let seed = self.0.get().wrapping_add(1);
        self.0.set(seed);
        out.iter_mut().for_each(|b| *b = seed);
        true
    }
}

thread_local! {
    static CONFIG: Config = {
        let doc = serde_json::json!({
            "providers": {"corp": {
                "issuer": "https://idp.test/realms/demo",
                "audiences": ["orders"],
                "jwks": {"inline": common::public_jwks()},
                "login": {
                    "authorization_endpoint": "https://idp.test/authorize",
                    "token_endpoint": "http://idp.test/token",
                    "end_session_endpoint": "https://idp.test/logout",
                    "cluster": "idp",
                    "client": {"id": "web", "secret": "s3cret"},
                    "logout_path": "/oauth2/logout",
                    "refresh": true,
                    "cookie_secret": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"
                }
            }}
        });
        Config::from_json(doc.to_string().as_bytes()).unwrap()
    };
}

fn request(path: &str, cookie: &str) -> Request {
    Request {
        method: "GET".into(),
        path: path.into(),
        host: "gw.test".into(),
        headers: vec![
            (":scheme".into(), "https".into()),
            ("accept".into(), "text/html".into()),
            ("cookie".into(), cookie.into()),
        ],
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = read_discovery(200, data, "https://idp.test/realms/demo");
    let _ = pkce::LoginState::decode(data);
    let _ = pkce::SessionSecrets::decode(data);
    let _ = pkce::safe_return_to(&text);
    let _ = cookies::read_chunked([text.as_ref()], "tg_session");
    let _ = cookies::count_chunks([text.as_ref()], "tg_session");
    let _ = cookies::strip(&text, |name| cookies::is_login_cookie("tg_session", name));
    let keys = seal::CookieKeys::derive(b"0123456789abcdef0123456789abcdef");
    let _ = seal::open(&keys, seal::Purpose::Session, "tg_session.aux", &text, common::NOW, 16 * 1024);

    // First line: the callback's query and extra cookies; the rest: the token endpoint's answer.
    let (head, body) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => data.split_at(at),
        None => (data, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let (query, extra_cookies) = head.split_once('|').unwrap_or((&head, ""));
    CONFIG.with(|config| {
        let login = FixedRandom(Cell::new(0));
        let services = Services { login: &login, ..Services::local() };
        let mut caches = Caches::for_config(config);
        // A real login start, so the callback can carry a login cookie that opens.
        let start = decide(config, services, &request("/orders", ""), &Clock::at_secs(common::NOW), &mut caches, false);
        let mut state_cookie = String::new();
        if let Outcome::Reply(reply) = &start.outcome {
            if let Some((_, set)) = reply.headers.iter().find(|(n, _)| n == "set-cookie") {
                state_cookie = set.split(';').next().unwrap_or_default().to_owned();
            }
        }
        let cookie = format!("{state_cookie}; {extra_cookies}");
        for path in [format!("/oauth2/callback?{query}"), "/oauth2/logout".to_owned(), "/x".to_owned()] {
            let callback = request(&path, &cookie);
            let decision = decide(config, services, &callback, &Clock::at_secs(common::NOW), &mut caches, false);
            if let Outcome::Call(call) = decision.outcome {
                for status in [200, 400, 500] {
                    let finish = finish_login(config, services, &call, &callback, status, body, common::NOW);
                    if let LoginFinish::Retry { request, .. } = finish {
                        let _ = decide(config, services, &request, &Clock::at_secs(common::NOW), &mut caches, true);
                    }
                }
            }
        }
    });
});

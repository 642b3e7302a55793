//! Any auth-service answer (status, content type, authorization header and body split
//! from the input) read by every exchange mode, any shared record decoded, and the
//! repeated-member scan every trusted JSON goes through.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use tokengate::config::Config;
use tokengate::exchange::answer::{read, Answer};
use tokengate::exchange::record::Record;

thread_local! {
    static CONFIGS: Vec<Config> = ["introspection", "jwt_introspection", "token_exchange", "session"]
        .iter()
        .map(|mode| common::exchange_config(mode))
        .collect();
}

fuzz_target!(|data: &[u8]| {
    let _ = Record::decode(data);
    let _ = tokengate::json::has_repeated_member(data);
    let (head, body) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => data.split_at(at),
        None => (data, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut fields = head.split('|');
    let status = fields.next().and_then(|s| s.trim().parse::<u32>().ok());
    let content_type = fields.next();
    let authorization = fields.next();
    let answer = Answer { status, content_type, authorization, body, body_size: body.len() };
    CONFIGS.with(|configs| {
        for config in configs {
            let exchange = &config.exchanges[0];
            let provider = &config.providers[exchange.provider];
            if let tokengate::config::KeySource::Inline(keys) = &provider.keys {
                let _ = read(exchange, provider, Some(keys), &answer, common::NOW);
            }
        }
    });
});

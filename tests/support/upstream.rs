//! The upstream service: an HTTP/1.1 server on 127.0.0.1 that answers every request
//! with 200 and a JSON echo of what it received, and counts the requests it got.

use super::client::{parse_headers, read_body, read_head};
use serde_json::{json, Map, Value};
use std::io::{self, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How long a kept-alive connection may sit idle before the upstream closes it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Upstream {
    port: u16,
    count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Upstream {
    /// Binds 127.0.0.1:0 and starts serving on a background thread.
    pub fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("upstream: bind 127.0.0.1:0");
        let port = listener.local_addr().expect("upstream: local_addr").port();
        let count = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let count = count.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("upstream-{port}"))
                .spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(stream) = stream else { continue };
                        let count = count.clone();
                        // Connection threads are detached: they end when the peer closes
                        // or after IDLE_TIMEOUT.
                        let _ = std::thread::Builder::new()
                            .name(format!("upstream-{port}-conn"))
                            .spawn(move || {
                                let _ = serve(stream, &count);
                            });
                    }
                })
                .expect("upstream: spawn acceptor")
        };
        Upstream {
            port,
            count,
            stop,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// How many requests the upstream has answered so far.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor so it sees the flag.
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Serves requests on one connection until the peer closes it, asks to close, or idles.
fn serve(stream: TcpStream, count: &AtomicUsize) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some(lines) = read_head(&mut reader)? else {
            return Ok(());
        };
        let (request_line, header_lines) = lines
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "empty request head"))?;
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let headers = parse_headers(header_lines)?;
        let body = read_body(&mut reader, &headers, false)?;

        let mut echoed = Map::new();
        for (name, value) in &headers {
            match echoed.get_mut(name) {
                Some(Value::String(existing)) => {
                    existing.push_str(", ");
                    existing.push_str(value);
                }
                _ => {
                    echoed.insert(name.clone(), Value::String(value.clone()));
                }
            }
        }
        let close = headers
            .iter()
            .any(|(n, v)| n == "connection" && v.to_ascii_lowercase().contains("close"));
        let reply = json!({
            "method": method,
            "path": path,
            "headers": echoed,
            "body": String::from_utf8_lossy(&body),
        })
        .to_string();
        // Counted before answering, so a client that got the answer sees the count.
        count.fetch_add(1, Ordering::SeqCst);
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n",
            reply.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        writer.write_all(head.as_bytes())?;
        writer.write_all(reply.as_bytes())?;
        writer.flush()?;
        if close {
            return Ok(());
        }
    }
}

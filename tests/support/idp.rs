//! A controllable identity provider on 127.0.0.1: an OIDC discovery document and a JWKS,
//! request counts per path, and failure modes switched at runtime (an error status, an
//! answer that never comes, garbage, a huge body, connections closed or refused).
//!
//! Every thread it starts ends on its own: connections idle out, a hanging answer holds
//! its connection at most [`MAX_HANG`], and dropping the `Idp` closes everything.

use super::client::{parse_headers, read_body, read_head};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// Where the JWKS is served unless [`Idp::start_with_certs_path`] says otherwise.
pub const CERTS_PATH: &str = "/certs";
/// The longest a hanging answer holds its connection.
pub const MAX_HANG: Duration = Duration::from_secs(10);
/// The body size of [`Mode::Huge`].
pub const HUGE_BODY_BYTES: usize = 10 * 1024 * 1024;
/// How long a kept-alive connection may sit idle before the IdP closes it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the IdP answers (every path alike), read when each request arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The discovery document, the JWKS, 404 for anything else.
    Serve,
    /// This status with a short text body.
    Status(u16),
    /// Read the request and never answer: hold the connection until the peer closes it
    /// or [`MAX_HANG`] passes.
    Hang,
    /// 200, `content-type: application/json`, a body that is not JSON.
    Garbage,
    /// 200 with the current JWKS padded with whitespace to [`HUGE_BODY_BYTES`]: valid
    /// JSON, usable keys, only too big.
    Huge,
    /// Read the request, then close the connection without a word.
    Close,
}

/// Requests seen, by path (the query string ignored).
#[derive(Default)]
struct Counts {
    discovery: AtomicUsize,
    certs: AtomicUsize,
    other: AtomicUsize,
}

struct State {
    port: u16,
    certs_path: String,
    mode: Mutex<Mode>,
    jwks: Mutex<String>,
    issuer: Mutex<String>,
    cache_control: Mutex<Option<String>>,
    counts: Counts,
    /// When the JWKS was last asked for.
    last_certs: Mutex<Option<Instant>>,
    /// Open connections (clones), so that stopping can close them.
    connections: Mutex<HashMap<u64, TcpStream>>,
    next_connection: AtomicU64,
}

/// Locks, ignoring poisoning (a panicking test thread must not hide the real failure).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

struct Acceptor {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

pub struct Idp {
    state: Arc<State>,
    acceptor: Mutex<Option<Acceptor>>,
}

impl Idp {
    /// Starts serving `jwks` (and a discovery document naming `issuer`) on 127.0.0.1.
    pub fn start(issuer: &str, jwks: &Value) -> Idp {
        Idp::start_with_certs_path(issuer, jwks, CERTS_PATH)
    }

    /// [`Idp::start`] with the JWKS at another path (the discovery document names it).
    pub fn start_with_certs_path(issuer: &str, jwks: &Value, certs_path: &str) -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("idp: bind 127.0.0.1:0");
        let port = listener.local_addr().expect("idp: local_addr").port();
        let state = Arc::new(State {
            port,
            certs_path: certs_path.to_owned(),
            mode: Mutex::new(Mode::Serve),
            jwks: Mutex::new(jwks.to_string()),
            issuer: Mutex::new(issuer.to_owned()),
            cache_control: Mutex::new(None),
            counts: Counts::default(),
            last_certs: Mutex::new(None),
            connections: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(0),
        });
        let acceptor = spawn_acceptor(listener, state.clone());
        Idp {
            state,
            acceptor: Mutex::new(Some(acceptor)),
        }
    }

    pub fn port(&self) -> u16 {
        self.state.port
    }

    /// The JWKS URI, as a provider's `jwks.uri` or the discovery document's `jwks_uri`.
    pub fn jwks_uri(&self) -> String {
        format!("http://127.0.0.1:{}{}", self.port(), self.state.certs_path)
    }

    pub fn discovery_uri(&self) -> String {
        format!("http://127.0.0.1:{}{DISCOVERY_PATH}", self.port())
    }

    /// From now on, serve this key set.
    pub fn set_jwks(&self, jwks: &Value) {
        *lock(&self.state.jwks) = jwks.to_string();
    }

    /// The issuer the discovery document names.
    pub fn set_issuer(&self, issuer: &str) {
        *lock(&self.state.issuer) = issuer.to_owned();
    }

    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.state.mode) = mode;
    }

    /// A `Cache-Control` header on JWKS answers (`None`: no header).
    pub fn set_cache_control(&self, value: Option<&str>) {
        *lock(&self.state.cache_control) = value.map(str::to_owned);
    }

    /// Requests for the JWKS so far (whatever the answer was).
    pub fn certs_count(&self) -> usize {
        self.state.counts.certs.load(Ordering::SeqCst)
    }

    /// Requests for the discovery document so far.
    pub fn discovery_count(&self) -> usize {
        self.state.counts.discovery.load(Ordering::SeqCst)
    }

    /// Requests for any other path so far.
    pub fn other_count(&self) -> usize {
        self.state.counts.other.load(Ordering::SeqCst)
    }

    /// How long ago the JWKS was last asked for.
    pub fn since_last_certs(&self) -> Option<Duration> {
        lock(&self.state.last_certs).map(|t| t.elapsed())
    }

    /// Stops listening and closes every open connection: from now on connections to the
    /// port are refused. [`Idp::listen_again`] undoes it.
    pub fn stop_listening(&self) {
        if let Some(acceptor) = lock(&self.acceptor).take() {
            acceptor.stop.store(true, Ordering::SeqCst);
            // Wake the acceptor so it sees the flag; it drops the listener on its way out.
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port()));
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
            let _ = acceptor.thread.join();
        }
        for (_, stream) in lock(&self.state.connections).drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Listens on the same port again. Panics if someone else took the port meanwhile.
    pub fn listen_again(&self) {
        let mut acceptor = lock(&self.acceptor);
        if acceptor.is_some() {
            return;
        }
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port()));
        let listener = TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("idp: re-binding {addr} failed ({e}): port taken?"));
        *acceptor = Some(spawn_acceptor(listener, self.state.clone()));
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop_listening();
    }
}

fn spawn_acceptor(listener: TcpListener, state: Arc<State>) -> Acceptor {
    let stop = Arc::new(AtomicBool::new(false));
    let port = state.port;
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name(format!("idp-{port}"))
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let state = state.clone();
                    // Detached: a connection thread ends when the peer closes, on idle,
                    // after at most MAX_HANG, or when the IdP stops.
                    let _ = std::thread::Builder::new()
                        .name(format!("idp-{port}-conn"))
                        .spawn(move || {
                            let id = state.next_connection.fetch_add(1, Ordering::SeqCst);
                            if let Ok(clone) = stream.try_clone() {
                                lock(&state.connections).insert(id, clone);
                            }
                            let _ = serve(stream, &state);
                            lock(&state.connections).remove(&id);
                        });
                }
            })
            .expect("idp: spawn acceptor")
    };
    Acceptor { stop, thread }
}

/// Serves requests on one connection until the peer closes it, the mode says to stop,
/// or it idles out.
fn serve(stream: TcpStream, state: &State) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
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
        let target = request_line.split_whitespace().nth(1).unwrap_or_default();
        let path = target.split('?').next().unwrap_or_default().to_owned();
        let headers = parse_headers(header_lines)?;
        read_body(&mut reader, &headers, false)?;
        let close = headers
            .iter()
            .any(|(n, v)| n == "connection" && v.to_ascii_lowercase().contains("close"));

        // Counted before answering, so whoever sees the answer sees the count.
        if path == DISCOVERY_PATH {
            state.counts.discovery.fetch_add(1, Ordering::SeqCst);
        } else if path == state.certs_path {
            *lock(&state.last_certs) = Some(Instant::now());
            state.counts.certs.fetch_add(1, Ordering::SeqCst);
        } else {
            state.counts.other.fetch_add(1, Ordering::SeqCst);
        }

        let mode = *lock(&state.mode);
        match mode {
            Mode::Close => return Ok(()),
            Mode::Hang => {
                hang(reader.get_mut());
                return Ok(());
            }
            Mode::Status(status) => {
                respond(&mut writer, status, "text/plain", None, b"IdP failure\n")?
            }
            Mode::Garbage => respond(
                &mut writer,
                200,
                "application/json",
                None,
                b"<html><body>Service temporarily unavailable</body></html>",
            )?,
            Mode::Huge => {
                send_huge(&mut writer, &lock(&state.jwks).clone())?;
            }
            Mode::Serve if path == DISCOVERY_PATH => {
                let document = json!({
                    "issuer": *lock(&state.issuer),
                    "jwks_uri": format!("http://127.0.0.1:{}{}", state.port, state.certs_path),
                    "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                })
                .to_string();
                respond(
                    &mut writer,
                    200,
                    "application/json",
                    None,
                    document.as_bytes(),
                )?;
            }
            Mode::Serve if path == state.certs_path => {
                let jwks = lock(&state.jwks).clone();
                let cache_control = lock(&state.cache_control).clone();
                respond(
                    &mut writer,
                    200,
                    "application/json",
                    cache_control.as_deref(),
                    jwks.as_bytes(),
                )?;
            }
            Mode::Serve => respond(&mut writer, 404, "text/plain", None, b"not found\n")?,
        }
        if close {
            return Ok(());
        }
    }
}

fn respond(
    writer: &mut TcpStream,
    status: u16,
    content_type: &str,
    cache_control: Option<&str>,
    body: &[u8],
) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(value) = cache_control {
        head.push_str(&format!("cache-control: {value}\r\n"));
    }
    head.push_str("\r\n");
    writer.write_all(head.as_bytes())?;
    writer.write_all(body)?;
    writer.flush()
}

/// Holds the connection without answering until the peer closes it or MAX_HANG passes.
fn hang(stream: &mut TcpStream) {
    let deadline = Instant::now() + MAX_HANG;
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) => return, // the peer gave up
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return, // timed out, reset, or shut down by the IdP
        }
    }
}

/// A 200 whose body is `jwks` padded with whitespace to HUGE_BODY_BYTES, in chunks; a
/// peer that stops reading ends it with a write error.
fn send_huge(writer: &mut TcpStream, jwks: &str) -> io::Result<()> {
    let total = HUGE_BODY_BYTES.max(jwks.len());
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {total}\r\n\r\n"
    );
    writer.write_all(head.as_bytes())?;
    writer.write_all(jwks.as_bytes())?;
    let chunk = vec![b' '; 64 * 1024];
    let mut left = total - jwks.len();
    while left > 0 {
        let n = left.min(chunk.len());
        writer.write_all(&chunk[..n])?;
        left -= n;
    }
    writer.flush()
}

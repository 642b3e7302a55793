//! The machinery of the loopback test servers (the upstream, the IdP, the auth service):
//! an HTTP/1.1 server on 127.0.0.1 with an acceptor thread and a thread per connection,
//! kept-alive requests answered one by one by a handler, and listening stopped and
//! resumed on command.
//!
//! Every thread it starts ends on its own: connections idle out, a hanging answer holds
//! its connection at most [`MAX_HANG`], and dropping the `Server` closes everything.

use super::client::{self, parse_headers, read_body, read_head};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest a hanging answer holds its connection.
pub const MAX_HANG: Duration = Duration::from_secs(10);
/// How long a kept-alive connection may sit idle before the server closes it.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Locks, ignoring poisoning (a panicking test thread must not hide the real failure).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request as the server received it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The request target as sent (path and query, still percent-encoded).
    pub target: String,
    /// Lowercase names, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of a header (name is case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        client::header(&self.headers, name)
    }

    /// The target without its query string.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// Whether the client asked for the connection to be closed after the answer.
    pub fn asks_to_close(&self) -> bool {
        client::asks_to_close(&self.headers)
    }
}

/// An answer: a status, a `content-type`, further headers and a body (its length is
/// added).
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Answer {
        Answer {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn json(status: u16, body: &Value) -> Answer {
        Answer::new(status, "application/json", body.to_string())
    }

    /// `name: value` after `content-type` and `content-length`, in the order added.
    pub fn with_header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// What the server does with a request.
pub enum Reply {
    Answer(Answer),
    /// Never answer: hold the connection until the peer closes it or [`MAX_HANG`]
    /// passes, then close it.
    Hang,
    /// Close the connection without a word.
    Close,
}

impl From<Answer> for Reply {
    fn from(answer: Answer) -> Reply {
        Reply::Answer(answer)
    }
}

/// Answers one request, given the server's state. Runs on the connection's thread, so
/// it may take its time (up to [`MAX_HANG`]).
pub type Handler<S> = fn(&S, &Request) -> Reply;

/// Open connections (clones), so that stopping can close them.
#[derive(Default)]
struct Connections {
    open: Mutex<HashMap<u64, TcpStream>>,
    next_id: AtomicU64,
}

struct Acceptor {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// A server answering with `handler` from state `S`, named `name` in its threads and
/// panics.
pub struct Server<S> {
    name: &'static str,
    port: u16,
    state: Arc<S>,
    handler: Handler<S>,
    connections: Arc<Connections>,
    acceptor: Mutex<Option<Acceptor>>,
}

impl<S: Send + Sync + 'static> Server<S> {
    /// Binds 127.0.0.1:0 and starts serving; `state` is made from the port.
    pub fn start(
        name: &'static str,
        state: impl FnOnce(u16) -> S,
        handler: Handler<S>,
    ) -> Server<S> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("{name}: bind 127.0.0.1:0: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("{name}: local_addr: {e}"))
            .port();
        let server = Server {
            name,
            port,
            state: Arc::new(state(port)),
            handler,
            connections: Arc::default(),
            acceptor: Mutex::new(None),
        };
        *lock(&server.acceptor) = Some(server.spawn_acceptor(listener));
        server
    }

    /// Listens on the same port again. Panics if someone else took the port meanwhile.
    pub fn listen_again(&self) {
        let mut acceptor = lock(&self.acceptor);
        if acceptor.is_some() {
            return;
        }
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| {
            panic!("{}: re-binding {addr} failed ({e}): port taken?", self.name)
        });
        *acceptor = Some(self.spawn_acceptor(listener));
    }

    fn spawn_acceptor(&self, listener: TcpListener) -> Acceptor {
        let stop = Arc::new(AtomicBool::new(false));
        let (name, port, handler) = (self.name, self.port, self.handler);
        let state = self.state.clone();
        let connections = self.connections.clone();
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{port}"))
                .spawn(move || {
                    for stream in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(stream) = stream else { continue };
                        let state = state.clone();
                        let connections = connections.clone();
                        // Detached: a connection thread ends when the peer closes, on
                        // idle, after at most MAX_HANG, or when the server stops.
                        let _ = std::thread::Builder::new()
                            .name(format!("{name}-{port}-conn"))
                            .spawn(move || {
                                let id = connections.next_id.fetch_add(1, Ordering::SeqCst);
                                if let Ok(clone) = stream.try_clone() {
                                    lock(&connections.open).insert(id, clone);
                                }
                                let _ = serve(stream, &*state, handler);
                                lock(&connections.open).remove(&id);
                            });
                    }
                })
                .unwrap_or_else(|e| panic!("{name}: spawn acceptor: {e}"))
        };
        Acceptor { stop, thread }
    }
}

impl<S> Server<S> {
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> &S {
        &self.state
    }

    /// Stops listening and closes every open connection: from now on connections to the
    /// port are refused. [`Server::listen_again`] undoes it.
    pub fn stop_listening(&self) {
        if let Some(acceptor) = lock(&self.acceptor).take() {
            acceptor.stop.store(true, Ordering::SeqCst);
            // Wake the acceptor so it sees the flag; it drops the listener on its way out.
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
            let _ = acceptor.thread.join();
        }
        for (_, stream) in lock(&self.connections.open).drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl<S> Drop for Server<S> {
    fn drop(&mut self) {
        self.stop_listening();
    }
}

/// Serves requests on one connection until the peer closes it or asks to, the handler
/// says to stop, or it idles out.
fn serve<S>(stream: TcpStream, state: &S, handler: Handler<S>) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some(request) = read_request(&mut reader)? {
        match handler(state, &request) {
            Reply::Answer(answer) => write_answer(&mut writer, &answer)?,
            Reply::Hang => {
                hang(reader.get_mut());
                return Ok(());
            }
            Reply::Close => return Ok(()),
        }
        if request.asks_to_close() {
            return Ok(());
        }
    }
    Ok(())
}

/// Reads a request, head and body; `None` if the connection was closed cleanly first.
fn read_request<R: BufRead>(reader: &mut R) -> io::Result<Option<Request>> {
    let Some(lines) = read_head(reader)? else {
        return Ok(None);
    };
    let (request_line, header_lines) = lines
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "empty request head"))?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let headers = parse_headers(header_lines)?;
    let body = read_body(reader, &headers, false)?;
    Ok(Some(Request {
        method,
        target,
        headers,
        body,
    }))
}

fn write_answer(writer: &mut TcpStream, answer: &Answer) -> io::Result<()> {
    let reason = match answer.status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: {}\r\ncontent-length: {}\r\n",
        answer.status,
        answer.content_type,
        answer.body.len()
    );
    for (name, value) in &answer.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    writer.write_all(head.as_bytes())?;
    // In chunks: a peer that stops reading a huge body ends it with a write error.
    for chunk in answer.body.chunks(64 * 1024) {
        writer.write_all(chunk)?;
    }
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
            Err(_) => return, // timed out, reset, or shut down by the server
        }
    }
}

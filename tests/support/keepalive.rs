//! A kept-alive HTTP/1.1 connection, for sending many requests quickly. Reconnects when
//! the server closes the connection between requests.

use super::client::{asks_to_close, read_body, read_response_head, Response, TIMEOUT};
use std::io::{self, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};

pub struct Connection {
    port: u16,
    open: Option<(BufReader<TcpStream>, TcpStream)>,
    /// Connections opened so far (1 if the server kept the first one alive throughout).
    pub opened: usize,
}

impl Connection {
    pub fn new(port: u16) -> Connection {
        Connection {
            port,
            open: None,
            opened: 0,
        }
    }

    fn connect(&mut self) -> io::Result<()> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        stream.set_nodelay(true)?;
        let writer = stream.try_clone()?;
        self.open = Some((BufReader::new(stream), writer));
        self.opened += 1;
        Ok(())
    }

    /// `GET path` on the kept-alive connection. A request on a reused connection that
    /// the server had closed meanwhile is sent once more on a new one.
    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> io::Result<Response> {
        let reused = self.open.is_some();
        match self.try_get(path, headers) {
            Err(_) if reused => {
                self.open = None;
                self.try_get(path, headers)
            }
            other => other,
        }
    }

    fn try_get(&mut self, path: &str, headers: &[(&str, &str)]) -> io::Result<Response> {
        if self.open.is_none() {
            self.connect()?;
        }
        let port = self.port;
        let Some((reader, writer)) = self.open.as_mut() else {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "no connection"));
        };
        let mut head = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let result = (|| {
            writer.write_all(head.as_bytes())?;
            writer.flush()?;
            let (status, headers) = read_response_head(reader)?;
            let body = read_body(reader, &headers, true)?;
            // Without a length the body ran to the end of the connection.
            let framed = headers
                .iter()
                .any(|(n, _)| n == "content-length" || n == "transfer-encoding");
            let close = !framed || asks_to_close(&headers);
            Ok((
                Response {
                    status,
                    headers,
                    body,
                },
                close,
            ))
        })();
        match result {
            Ok((response, close)) => {
                if close {
                    self.open = None;
                }
                Ok(response)
            }
            Err(e) => {
                self.open = None;
                Err(e)
            }
        }
    }
}

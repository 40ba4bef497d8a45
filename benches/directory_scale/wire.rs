//! A minimal HTTP/1.1 client on one keep-alive TCP connection, so that a
//! watcher costs the bench one socket, one buffer and one task: it writes a
//! request, reads the head up to `\r\n\r\n`, takes `content-length` and
//! reads that much body. No chunked bodies, no pipelining: the directory
//! answers every request with a length. Also a pool of such connections
//! that runs many requests (registrations, renewals) 64 at a time.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use memchr::memmem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The owner id every write carries.
const OWNER: &str = "bench";

/// One keep-alive connection to the directory, opened on first use and
/// again after the directory closed it (an idle keep-alive connection).
pub struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    /// The last response: head, then body from `body_start`.
    buf: Vec<u8>,
    body_start: usize,
    request: Vec<u8>,
}

/// Why a request failed, and whether nothing at all came back (then a
/// connection used before was most likely closed while idle: retried once).
struct Failure(io::Error, bool);

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            stream: None,
            buf: Vec::new(),
            body_start: 0,
            request: Vec::new(),
        }
    }

    /// Sends one request (with `body`, as JSON) and reads its response; its
    /// status. The body is then [`Conn::body`].
    pub async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> io::Result<u16> {
        let reused = self.stream.is_some();
        let result = match self.try_request(method, path, body).await {
            Err(Failure(_, true)) if reused => {
                self.stream = None;
                self.try_request(method, path, body).await
            }
            other => other,
        };
        result.map_err(|Failure(e, _)| {
            self.stream = None;
            e
        })
    }

    /// The last response's body.
    pub fn body(&self) -> &[u8] {
        &self.buf[self.body_start..]
    }

    /// The last response's size, head and body.
    pub fn received(&self) -> usize {
        self.buf.len()
    }

    /// Gives back the memory of a large answer (a full watch, a catalog)
    /// once it has been read.
    pub fn shrink(&mut self) {
        if self.buf.capacity() > 64 * 1024 {
            self.buf = Vec::new();
        }
    }

    async fn try_request(&mut self, method: &str, path: &str, body: &[u8]) -> Result<u16, Failure> {
        let fail = |e| Failure(e, true);
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr).await.map_err(fail)?;
            stream.set_nodelay(true).map_err(fail)?;
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("connected");
        self.request.clear();
        self.request.extend_from_slice(
            format!(
                "{method} {path} HTTP/1.1\r\nhost: {}\r\nx-baker-owner: {OWNER}\r\n\
                 content-type: application/json\r\ncontent-length: {}\r\n\r\n",
                self.addr,
                body.len()
            )
            .as_bytes(),
        );
        self.request.extend_from_slice(body);
        stream.write_all(&self.request).await.map_err(fail)?;

        self.buf.clear();
        let mut searched = 0;
        let head_end = loop {
            if let Some(at) = memmem::find(&self.buf[searched..], b"\r\n\r\n") {
                break searched + at + 4;
            }
            searched = self.buf.len().saturating_sub(3);
            self.buf.reserve(16 * 1024);
            read_more(stream, &mut self.buf).await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| Failure(invalid("response head is not UTF-8".into()), false))?;
        let status: u16 = (head.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Failure(invalid(format!("bad status line in {head:?}")), false))?;
        let mut length = None;
        for line in head.split("\r\n").skip(1) {
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    let e = invalid(format!("{status} answered without a length: {head:?}"));
                    return Err(Failure(e, false));
                }
            }
        }
        // A 204 (a renewal) has no length and no body.
        let total = head_end + length.unwrap_or(0);
        if total > self.buf.len() {
            self.buf.reserve(total - self.buf.len());
        }
        while self.buf.len() < total {
            read_more(stream, &mut self.buf).await?;
        }
        if self.buf.len() > total {
            return Err(Failure(invalid("more bytes than asked for".into()), false));
        }
        self.body_start = head_end;
        Ok(status)
    }
}

/// Reads what is there into `buf`; an error at the end of the stream (with
/// the flag set when nothing of the response had come).
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), Failure> {
    let nothing_yet = buf.is_empty();
    match stream.read_buf(buf).await {
        Ok(0) => Err(Failure(
            io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"),
            nothing_yet,
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(Failure(e, nothing_yet)),
    }
}

/// One request of a pool run: method, path, body and the status expected.
pub type Request = (&'static str, String, String, u16);

/// Runs `count` requests, request `i` being `make(i)`, over `conns`
/// keep-alive connections, each sending its next request once the last one
/// was answered; panics on an error or an unexpected status.
pub async fn run_pool(
    addr: SocketAddr,
    count: usize,
    conns: usize,
    make: impl Fn(usize) -> Request + Send + Sync + 'static,
) {
    let next = Arc::new(AtomicUsize::new(0));
    let make = Arc::new(make);
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let (next, make) = (next.clone(), make.clone());
            tokio::spawn(async move {
                let mut conn = Conn::new(addr);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let (method, path, body, expected) = make(i);
                    let status = (conn.request(method, &path, body.as_bytes()).await)
                        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
                    assert_eq!(
                        status,
                        expected,
                        "{method} {path}: {}",
                        String::from_utf8_lossy(conn.body())
                    );
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a pool connection failed");
    }
}

//! An HTTP hop in front of the S3 test server whose object listings carry no ETag, as
//! s3s-fs answers ListObjectsV2 (`Object { key, last_modified, size }` only): requests
//! go through unchanged; each answer is read whole, and from the body of a
//! `ListBucketResult` every `<ETag>…</ETag>` element is cut (its length fixed). For the
//! buckets [`refuse_uploads`](EtaglessProxy::refuse_uploads) names it also answers a
//! ListMultipartUploads as s3s-fs does, HTTP 501 NotImplemented. It counts the GETs
//! of each path ([`gets`](EtaglessProxy::gets)). One proxy per test process, in front
//! of [`moto`](super::s3::moto), on a free port.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use super::s3::moto;

/// The running proxy.
pub struct EtaglessProxy {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    stripped: AtomicU64,
    no_uploads: Mutex<HashSet<String>>,
    refused: AtomicU64,
    gets: Mutex<HashMap<String, u64>>,
}

impl EtaglessProxy {
    /// How many `<ETag>` elements it has cut from listings so far (in this process).
    pub fn stripped(&self) -> u64 {
        self.stripped.load(Ordering::Relaxed)
    }

    /// Answers every ListMultipartUploads of `bucket` with HTTP 501 from now on.
    pub fn refuse_uploads(&self, bucket: &str) {
        self.no_uploads.lock().unwrap().insert(bucket.to_string());
    }

    /// How many GETs of `path` (`/BUCKET/KEY`, no query) it has relayed so far.
    pub fn gets(&self, path: &str) -> u64 {
        self.gets.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// How many ListMultipartUploads it has answered with 501 so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// The proxy of this test process, started on first use.
pub fn etagless() -> &'static EtaglessProxy {
    static PROXY: OnceLock<EtaglessProxy> = OnceLock::new();
    PROXY.get_or_init(|| {
        let target = moto().endpoint.clone();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the ETag-less proxy");
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let target = target.trim_start_matches("http://").to_string();
                std::thread::spawn(move || {
                    let _ = relay(client, &target);
                });
            }
        });
        EtaglessProxy {
            endpoint,
            stripped: AtomicU64::new(0),
            no_uploads: Mutex::new(HashSet::new()),
            refused: AtomicU64::new(0),
            gets: Mutex::new(HashMap::new()),
        }
    })
}

/// One HTTP/1.1 message: its start line and headers, and its body (de-chunked).
struct Message {
    lines: Vec<String>,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.lines[1..].iter().find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim())
        })
    }

    /// Sets `Content-Length` to the body's length, dropping any other framing.
    fn frame(&mut self) {
        self.lines.retain(|l| {
            let name = l.split(':').next().unwrap_or_default().trim();
            !name.eq_ignore_ascii_case("content-length")
                && !name.eq_ignore_ascii_case("transfer-encoding")
        });
        self.lines
            .push(format!("Content-Length: {}", self.body.len()));
    }

    fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let mut out = Vec::new();
        for l in &self.lines {
            out.extend_from_slice(l.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        w.write_all(&out)?;
        w.flush()
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Reads one message; `None` when the peer closed between messages. A response
/// to HEAD and a 1xx, 204 or 304 answer have no body (`bodiless`); a response framed
/// by neither length nor chunks runs to the end of the connection (`to_end`).
fn read_message(r: &mut impl BufRead, bodiless: bool, to_end: bool) -> io::Result<Option<Message>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return if lines.is_empty() {
                Ok(None)
            } else {
                Err(bad("connection closed inside a header"))
            };
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        lines.push(line.to_string());
    }
    let mut m = Message {
        lines,
        body: Vec::new(),
    };
    let status = m.lines[0].split(' ').nth(1).unwrap_or_default();
    let bodiless = bodiless || status.starts_with('1') || status == "204" || status == "304";
    if bodiless {
        return Ok(Some(m));
    }
    if m.header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let size = size.trim().split(';').next().unwrap_or_default();
            let n = usize::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
            if n == 0 {
                let mut trailer = String::new();
                while r.read_line(&mut trailer)? > 0 && !trailer.trim().is_empty() {
                    trailer.clear();
                }
                break;
            }
            let at = m.body.len();
            m.body.resize(at + n, 0);
            r.read_exact(&mut m.body[at..])?;
            r.read_exact(&mut [0; 2])?;
        }
        m.frame();
    } else if let Some(n) = m.header("content-length") {
        let n: usize = n.parse().map_err(|_| bad("bad content-length"))?;
        m.body.resize(n, 0);
        r.read_exact(&mut m.body)?;
    } else if to_end {
        r.read_to_end(&mut m.body)?;
        m.frame();
        m.lines.push("Connection: close".into());
    }
    Ok(Some(m))
}

/// Cuts every `<ETag>…</ETag>` element out of a ListObjectsV2 answer; returns how many.
fn strip_etags(m: &mut Message) -> u64 {
    let Ok(text) = std::str::from_utf8(&m.body) else {
        return 0;
    };
    if !text.contains("<ListBucketResult") {
        return 0;
    }
    let (mut out, mut rest, mut cut) = (String::new(), text, 0);
    while let Some(start) = rest.find("<ETag>") {
        let Some(end) = rest[start..].find("</ETag>") else {
            break;
        };
        out.push_str(&rest[..start]);
        rest = &rest[start + end + "</ETag>".len()..];
        cut += 1;
    }
    out.push_str(rest);
    m.body = out.into_bytes();
    m.frame();
    cut
}

/// Relays one client connection, one request and its answer at a time (HTTP/1.1
/// clients do not pipeline), until either side closes.
fn relay(client: TcpStream, target: &str) -> io::Result<()> {
    let server = TcpStream::connect(target)?;
    let (mut client_r, mut client_w) = (BufReader::new(client.try_clone()?), client);
    let (mut server_r, mut server_w) = (BufReader::new(server.try_clone()?), server);
    while let Some(request) = read_message(&mut client_r, false, false)? {
        let mut words = request.lines[0].split(' ');
        let (method, target) = (
            words.next().unwrap_or_default(),
            words.next().unwrap_or_default(),
        );
        let head = method == "HEAD";
        if method == "GET" {
            let path = target.split('?').next().unwrap_or_default().to_string();
            *etagless().gets.lock().unwrap().entry(path).or_default() += 1;
        }
        if method == "GET" && refuses_uploads(target) {
            etagless().refused.fetch_add(1, Ordering::Relaxed);
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NotImplemented</Code><Message>A header you provided implies functionality that is not implemented.</Message></Error>";
            write!(
                client_w,
                "HTTP/1.1 501 Not Implemented\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )?;
            continue;
        }
        request.write_to(&mut server_w)?;
        let mut answer =
            read_message(&mut server_r, head, true)?.ok_or_else(|| bad("no answer"))?;
        if method == "GET" && target.contains("list-type=2") {
            let cut = strip_etags(&mut answer);
            etagless().stripped.fetch_add(cut, Ordering::Relaxed);
        }
        answer.write_to(&mut client_w)?;
        if answer
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            break;
        }
    }
    Ok(())
}

/// Whether `target` (a request's path and query) lists the multipart uploads of a bucket
/// [`refuse_uploads`](EtaglessProxy::refuse_uploads) named.
fn refuses_uploads(target: &str) -> bool {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let bucket = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    query
        .split('&')
        .any(|q| q == "uploads" || q.starts_with("uploads="))
        && etagless().no_uploads.lock().unwrap().contains(bucket)
}

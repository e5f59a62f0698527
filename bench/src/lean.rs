//! A lean HTTP/1.1 client for the cheap cases' load (token endpoint,
//! userinfo, discovery, JWKS): keep-alive
//! connections in a pool, the request written in one `write`, the answer
//! read by its `Content-Length`. The services share the machine's cores
//! with the load generator, so a generator that spends less per request
//! leaves the measured service more of them (`reqwest`, whose pool,
//! redirect policy and header maps the browser flows need, spent 55–78 µs
//! per token request here).
//!
//! Only what the adapter's answers to these requests use is read: a status
//! line, headers with `Content-Length` (RFC 9112 §6.3), no chunked bodies
//! (an answer without a length is an error, not a guess).

use std::sync::Mutex;

use anyhow::{bail, Context};
use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Keep-alive connections to one service, for one kind of request: form
/// posts with one client's Basic credentials ([`LeanClient::new`]), or one
/// fixed `GET` ([`LeanClient::get`]).
pub struct LeanClient {
    /// `host:port`.
    authority: String,
    /// A post's request head up to the `Content-Length` value, or a `GET`'s
    /// whole request.
    head: String,
    idle: Mutex<Vec<TcpStream>>,
}

/// A complete answer.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl LeanClient {
    /// Posts to `path` of `base` (`http://host:port`) as client `id`
    /// with `secret` (RFC 6749 §2.3.1).
    pub fn new(base: &str, path: &str, id: &str, secret: &str) -> anyhow::Result<Self> {
        let authority = authority(base)?;
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}").as_bytes());
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {authority}\r\nauthorization: Basic {basic}\r\n\
             content-type: application/x-www-form-urlencoded\r\naccept: application/json\r\n\
             content-length: "
        );
        Ok(LeanClient::with_head(authority, head))
    }

    /// `GET`s `path` of `base` with the extra request `headers`
    /// ([`LeanClient::fetch`]).
    pub fn get(base: &str, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Self> {
        let authority = authority(base)?;
        let mut head = format!("GET {path} HTTP/1.1\r\nhost: {authority}\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        Ok(LeanClient::with_head(authority, head))
    }

    fn with_head(authority: String, head: String) -> Self {
        LeanClient {
            authority,
            head,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Sends the `GET` of [`LeanClient::get`].
    pub async fn fetch(&self) -> anyhow::Result<Answer> {
        self.exchange(self.head.as_bytes()).await
    }

    /// Posts the form `body` (already encoded) on an idle connection, or a
    /// new one.
    pub async fn post(&self, body: &str) -> anyhow::Result<Answer> {
        let request = format!("{}{}\r\n\r\n{body}", self.head, body.len());
        self.exchange(request.as_bytes()).await
    }

    /// Writes `request` on an idle connection, or a new one, and reads the
    /// answer.
    async fn exchange(&self, request: &[u8]) -> anyhow::Result<Answer> {
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut conn = match pooled {
            Some(c) => c,
            None => {
                let c = TcpStream::connect(&self.authority).await?;
                c.set_nodelay(true)?;
                c
            }
        };
        conn.write_all(request).await?;
        let (answer, keep) = read_answer(&mut conn).await?;
        if keep {
            if let Ok(mut idle) = self.idle.lock() {
                idle.push(conn);
            }
        }
        Ok(answer)
    }
}

/// `host:port` of a plain `http://` base URL.
fn authority(base: &str) -> anyhow::Result<String> {
    Ok(base
        .strip_prefix("http://")
        .context("the lean client speaks plain http only")?
        .trim_end_matches('/')
        .to_string())
}

/// Reads one answer; also whether the connection may serve another.
async fn read_answer(conn: &mut TcpStream) -> anyhow::Result<(Answer, bool)> {
    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            bail!("an answer head over 64 KiB");
        }
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            bail!("the connection closed before an answer");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("answer head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("status line {status_line:?}"))?;
    let mut length = None;
    let mut keep = true;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().context("content-length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("transfer-encoding {value} is not read by the lean client");
        } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            keep = false;
        }
    }
    let length = length.context("an answer without content-length")?;
    let mut body = buf.split_off(head_end);
    if body.len() > length {
        bail!("more bytes than the answer's content-length");
    }
    let have = body.len();
    body.resize(length, 0);
    conn.read_exact(&mut body[have..]).await?;
    Ok((Answer { status, body }, keep))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that reads one request and answers with `parts`, one
    /// write each; returns its base URL.
    async fn serve(parts: Vec<&'static [u8]>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await.unwrap();
            for p in parts {
                s.write_all(p).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        });
        base
    }

    /// An answer whose head and body arrive apart is read whole, by its
    /// length.
    #[tokio::test]
    async fn reads_an_answer_by_its_length() {
        let base = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello",
            b" world",
        ])
        .await;
        let c = LeanClient::new(&base, "/t", "id", "secret").unwrap();
        let a = c.post("x=1").await.unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.body, b"hello world");
    }

    /// A `GET` carries its headers and no body, and its connection is kept
    /// for the next one.
    #[tokio::test]
    async fn gets_with_headers_on_a_kept_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut requests = Vec::new();
            for _ in 0..2 {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap();
                requests.push(String::from_utf8(buf[..n].to_vec()).unwrap());
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                    .await
                    .unwrap();
            }
            requests
        });
        let c = LeanClient::get(&base, "/jwks", &[("authorization", "Bearer t")]).unwrap();
        for _ in 0..2 {
            let a = c.fetch().await.unwrap();
            assert_eq!((a.status, a.body.as_slice()), (200, b"{}".as_slice()));
        }
        let authority = base.strip_prefix("http://").unwrap();
        let expected =
            format!("GET /jwks HTTP/1.1\r\nhost: {authority}\r\nauthorization: Bearer t\r\n\r\n");
        assert_eq!(server.await.unwrap(), vec![expected.clone(), expected]);
    }

    /// A chunked answer is refused, not guessed at.
    #[tokio::test]
    async fn refuses_a_chunked_answer() {
        let base = serve(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ])
        .await;
        let c = LeanClient::new(&base, "/t", "id", "secret").unwrap();
        let e = c.post("x=1").await.err().unwrap();
        assert_eq!(
            e.to_string(),
            "transfer-encoding chunked is not read by the lean client"
        );
    }
}

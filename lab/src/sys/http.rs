//! The one HTTP client: HTTP/1.1 to a server on 127.0.0.1, one request per connection, with a
//! Jupyter token. `request` reads the whole answer as JSON (JupyterHub's and Jupyter's REST APIs);
//! `status` reads only the status line, to ask whether a server answers yet.

use super::CliResult;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Connects and sends one request (a JSON `body`, or none); the answer is left to read.
fn send(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
    timeout: Duration,
) -> CliResult<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("127.0.0.1:{port}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token.map(|t| format!("Authorization: token {t}\r\n")).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| format!("{method} {path}: {e}"))?;
    Ok(stream)
}

/// One HTTP/1.1 request to 127.0.0.1:`port`: the status and the JSON body (Null if none).
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> CliResult<(u16, Value)> {
    let mut stream = send(port, method, path, token, body, Duration::from_secs(60))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| format!("{method} {path}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").ok_or_else(|| format!("{method} {path}: no HTTP answer"))?;
    let status: u16 =
        head.get(9..12).and_then(|s| s.parse().ok()).ok_or_else(|| format!("{method} {path}: bad status line"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked")
    });
    let payload = if chunked { dechunk(rest) } else { rest.to_string() };
    Ok((status, serde_json::from_str(&payload).unwrap_or(Value::Null)))
}

/// The status code of one bodiless request to 127.0.0.1:`port` (None if nothing answered within
/// 10 s); the rest of the answer is not read.
pub fn status(port: u16, method: &str, path: &str, token: &str) -> Option<u16> {
    let mut stream = send(port, method, path, Some(token), None, Duration::from_secs(10)).ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::dechunk;

    #[test]
    fn a_chunked_body_is_joined() {
        assert_eq!(dechunk("4\r\n{\"a\"\r\n4\r\n: 1}\r\n0\r\n\r\n"), "{\"a\": 1}");
    }
}

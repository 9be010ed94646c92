//! A kernel of a Jupyter server, driven over its websocket as JupyterLab does: open a notebook
//! session, run cells one by one and collect their outputs in notebook form.

use crate::sys::hex::random_token;
use crate::sys::http::request;
use crate::sys::CliResult;
use serde_json::{json, Value};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How long one read of a kernel's websocket waits before `RemoteKernel::execute` looks at its
/// deadline again.
const POLL: Duration = Duration::from_secs(5);

/// A kernel of a Jupyter server, driven over its websocket as JupyterLab does. `base` is the
/// server's URL prefix: `/user/<name>` behind the hub, empty for `cargo lab up`'s JupyterLab.
pub struct RemoteKernel {
    ws: tungstenite::WebSocket<TcpStream>,
    session: String,
    pub id: String,
}

impl RemoteKernel {
    /// Opens a notebook session (the kernel starts in the notebook's folder) and its channels.
    pub fn open(port: u16, base: &str, token: &str, notebook: &str) -> CliResult<RemoteKernel> {
        let body = json!({"path": notebook, "type": "notebook", "name": "", "kernel": {"name": "rust"}});
        let (status, session) = request(port, "POST", &format!("{base}/api/sessions"), Some(token), Some(&body))?;
        let kernel = session["kernel"]["id"]
            .as_str()
            .ok_or_else(|| format!("{base}: no kernel from POST /api/sessions ({status}): {session}"))?;
        RemoteKernel::connect(port, base, token, kernel)
    }

    /// Opens the channels of a running kernel (after a restart too, as JupyterLab reconnects then).
    pub fn connect(port: u16, base: &str, token: &str, kernel: &str) -> CliResult<RemoteKernel> {
        let session_id = random_token()?;
        let url = format!("ws://127.0.0.1:{port}{base}/api/kernels/{kernel}/channels?session_id={session_id}");
        use tungstenite::client::IntoClientRequest;
        let mut req = url.as_str().into_client_request().map_err(|e| e.to_string())?;
        req.headers_mut()
            .insert("Authorization", format!("token {token}").parse().map_err(|_| "bad token".to_string())?);
        let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        // The server answers once the kernel has answered its nudge: seconds when kernels start
        // together.
        stream.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
        let (ws, _) = tungstenite::client(req, stream).map_err(|e| format!("{base}: kernel websocket: {e}"))?;
        // Then short reads, so that `execute` can keep its own deadline: the server pings every
        // 30 s, so a read timeout alone would never fire while a lost cell waited forever.
        ws.get_ref().set_read_timeout(Some(POLL)).map_err(|e| e.to_string())?;
        Ok(RemoteKernel { ws, session: session_id, id: kernel.to_string() })
    }

    pub fn close(mut self) {
        let _ = self.ws.close(None);
    }

    /// Runs one cell and returns its outputs in notebook form, and its execution count. Fails if
    /// the kernel dies or restarts meanwhile (its answer would never come), or if the cell has not
    /// finished within `limit`.
    pub fn execute(&mut self, code: &str, limit: Duration) -> CliResult<(Vec<Value>, Value)> {
        let start = Instant::now();
        let msg_id = random_token()?;
        let msg = json!({
            "header": {"msg_id": msg_id, "username": "lab", "session": self.session, "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": false, "store_history": true, "user_expressions": {}, "allow_stdin": false, "stop_on_error": true},
        });
        self.ws.send(tungstenite::Message::text(msg.to_string())).map_err(|e| format!("sending a cell: {e}"))?;
        let (mut outputs, mut count, mut idle, mut replied) = (Vec::new(), Value::Null, false, false);
        let first_line = code.lines().find(|l| !l.trim().is_empty()).unwrap_or("").chars().take(80).collect::<String>();
        while !(idle && replied) {
            if start.elapsed() > limit {
                return Err(format!(
                    "the cell starting `{first_line}` had not finished after {} s ({} outputs so far)",
                    limit.as_secs(),
                    outputs.len()
                ));
            }
            let frame = match self.ws.read() {
                Ok(frame) => frame,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    continue
                }
                Err(e) => return Err(format!("reading the kernel's answer: {e}")),
            };
            let Ok(text) = frame.to_text() else { continue };
            let Ok(m) = serde_json::from_str::<Value>(text) else { continue };
            // The server's word that the kernel's process ended: it has no parent message.
            if m["header"]["msg_type"] == "status"
                && matches!(m["content"]["execution_state"].as_str(), Some("restarting" | "autorestarting" | "dead"))
            {
                return Err(format!(
                    "the kernel's process died during the cell starting `{first_line}` (the server says {})",
                    m["content"]["execution_state"]
                ));
            }
            if m["parent_header"]["msg_id"] != msg_id.as_str() {
                continue;
            }
            let c = &m["content"];
            match (m["channel"].as_str(), m["header"]["msg_type"].as_str()) {
                (Some("shell"), Some("execute_reply")) => {
                    replied = true;
                    count = c["execution_count"].clone();
                }
                (Some("iopub"), Some("status")) if c["execution_state"] == "idle" => idle = true,
                (Some("iopub"), Some("stream")) => outputs.push(json!({"output_type": "stream", "name": c["name"], "text": c["text"]})),
                (Some("iopub"), Some(kind @ ("display_data" | "execute_result"))) => {
                    let mut o = json!({"output_type": kind, "data": c["data"], "metadata": c["metadata"]});
                    if kind == "execute_result" {
                        o["execution_count"] = c["execution_count"].clone();
                    }
                    outputs.push(o);
                }
                (Some("iopub"), Some("error")) => outputs.push(json!({"output_type": "error", "ename": c["ename"], "evalue": c["evalue"], "traceback": c["traceback"]})),
                _ => {}
            }
        }
        Ok((outputs, count))
    }
}

//! A llama-server child on a free loopback port, and one-shot HTTP/1.1 JSON exchanges with it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Server {
    child: Child,
    port: u16,
}

impl Server {
    pub fn start(bin: &Path, model: &Path, parallel: u32) -> Server {
        Self::start_with(bin, model, parallel, &[])
    }

    /// Like [`Server::start`], with more llama-server arguments.
    pub fn start_with(bin: &Path, model: &Path, parallel: u32, extra: &[&str]) -> Server {
        Self::spawn(bin, model, parallel, extra, Stdio::null())
    }

    /// Like [`Server::start_with`], the server's log (stderr) written to `log`.
    pub fn start_logged(bin: &Path, model: &Path, parallel: u32, extra: &[&str], log: &Path) -> Server {
        Self::spawn(bin, model, parallel, extra, std::fs::File::create(log).unwrap().into())
    }

    /// llama-server's router mode over the GGUF files in `models_dir`: one child server per
    /// model, started on the first request naming it; `parallel` and `extra` reach the children.
    /// The router's log (stderr, its children's included) is written to `log`.
    pub fn start_router(bin: &Path, models_dir: &Path, parallel: u32, extra: &[&str], log: &Path) -> Server {
        let mut args = vec!["--models-dir", models_dir.to_str().unwrap()];
        args.extend(extra);
        let stderr = std::fs::File::create(log).unwrap().into();
        Self::spawn_with(bin, &[], parallel, &args, stderr, &models_dir.display().to_string())
    }

    fn spawn(bin: &Path, model: &Path, parallel: u32, extra: &[&str], stderr: Stdio) -> Server {
        let model = model.to_str().unwrap();
        Self::spawn_with(bin, &["-m", model], parallel, extra, stderr, model)
    }

    fn spawn_with(bin: &Path, model: &[&str], parallel: u32, extra: &[&str], stderr: Stdio, what: &str) -> Server {
        let port = free_port();
        let child = Command::new(bin.join("llama-server"))
            .args(model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["-c", &(256 * parallel).to_string(), "--parallel", &parallel.to_string(), "-t", "2", "--no-warmup"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let server = Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok((200, _)) = server.request("GET", "/health", None) {
                return server;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("llama-server on {what} did not become healthy");
    }

    /// One HTTP/1.1 exchange with `Connection: close`; returns (status, JSON body).
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> std::io::Result<(u16, Value)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
            payload.len()
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            body.to_string()
        };
        Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
    }

    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.request("POST", path, Some(&body)).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port: bound, read and released for a server about to start.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

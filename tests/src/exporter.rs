//! Helpers for the exporter's tests: `tcptrace serve` as a child, plain HTTP/1.1 over a std
//! `TcpStream`, a reader for the Prometheus text format, and a real Prometheus server.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::{Proc, Tracer, client, free_port, server};

/// `tcptrace serve --listen 127.0.0.1:<free> ARGS`, started; returns it and its address.
pub fn serve(args: &[&str]) -> (Tracer, SocketAddr) {
    let addr = SocketAddr::new(
        "127.0.0.1".parse().unwrap(),
        free_port("127.0.0.1".parse().unwrap()),
    );
    let mut a = vec!["serve", "--listen"];
    let l = addr.to_string();
    a.push(&l);
    a.extend_from_slice(args);
    (Tracer::start(&a), addr)
}

/// A `tcpscenario` server on 127.0.0.1 that leaks `n` CLOSE_WAIT sockets (its peer closed,
/// it never does), with the leaks in place when this returns; and its port.
pub fn leaker(n: usize) -> (Proc, u16) {
    let ip = "127.0.0.1".parse().unwrap();
    let port = free_port(ip);
    let addr = SocketAddr::new(ip, port);
    let t = Duration::from_secs(30);
    let (mut srv, _) = server(addr, &["--conns", &n.to_string(), "--on-eof", "leak"]);
    let mut cli = client(addr, &["--conns", &n.to_string()]);
    cli.wait_done(t);
    srv.wait_done(t);
    cli.finish();
    (srv, port)
}

/// One HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends raw bytes and reads until the server closes. `None` when the server closed without a
/// response.
pub fn raw(addr: SocketAddr, request: &[u8]) -> Option<Response> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The server may answer and close before it read all of a huge request.
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse(&buf)
}

/// `GET path` with `Connection: close`.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    raw(addr, req.as_bytes()).unwrap_or_else(|| panic!("no response to GET {path}"))
}

/// An HTTP/1.1 response as read off the wire (chunked bodies joined).
pub fn parse(buf: &[u8]) -> Option<Response> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some(Response {
        status,
        head: head.to_string(),
        body,
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The value of the sample `name{...}` whose labels include every `want` pair.
pub fn sample(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        if n != name {
            return None;
        }
        let labels = parse_labels(labels);
        want.iter()
            .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            .then(|| value.parse().ok())?
    })
}

/// Every sample of `name`, as (labels, value).
pub fn samples(text: &str, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            (n == name).then(|| (parse_labels(labels), value.parse().unwrap_or(f64::NAN)))
        })
        .collect()
}

/// `a="x",b="y \"q\""` -> pairs (escapes undone).
fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if key.is_empty() || chars.next() != Some('"') {
            return out;
        }
        let mut val = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => val.push('\n'),
                    Some(c) => val.push(c),
                    None => {}
                },
                '"' => break,
                c => val.push(c),
            }
        }
        out.push((key.trim_start_matches(',').to_string(), val));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

/// A Prometheus server on loopback that scrapes one target every second; killed on drop.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts `prometheus` (Debian's package) scraping `target` as job "tcptrace", and waits
    /// until it is ready.
    pub fn start(target: SocketAddr) -> Prometheus {
        Prometheus::start_jobs(&format!(
            "  - job_name: tcptrace\n    static_configs:\n      - targets: ['{target}']\n"
        ))
    }

    /// Starts `prometheus` with these `scrape_configs` entries (YAML, indented by two), every
    /// job scraped each second.
    pub fn start_jobs(jobs: &str) -> Prometheus {
        let ip = "127.0.0.1".parse().unwrap();
        let addr = SocketAddr::new(ip, free_port(ip));
        let dir = std::env::temp_dir().join(format!(
            "tcptrace-prometheus-{}-{}",
            std::process::id(),
            addr.port()
        ));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        // In the emulated guests a debug tcptrace answers /metrics in about a second when the
        // host is busy: a 1 s timeout left the target down (up 0, scrape_duration_seconds 1.01).
        let every = if std::env::var_os("TCPTRACE_TEST_SLOW_CPU").is_some() {
            "4s"
        } else {
            "1s"
        };
        let config = format!(
            "global:\n  scrape_interval: {every}\n  scrape_timeout: {every}\n  \
             evaluation_interval: {every}\n\
             scrape_configs:\n{jobs}"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("run prometheus (apt-get install prometheus; cargo xtask setup does)");
        let p = Prometheus { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect(addr).is_ok() && get(addr, "/-/ready").status == 200 {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready in 60 s:\n{}",
                p.log()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant PromQL query over the HTTP API; returns the vector's (labels, value) pairs.
    pub fn query(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        let r = get(
            self.addr,
            &format!("/api/v1/query?query={}", url_encode(promql)),
        );
        assert_eq!(r.status, 200, "query {promql}: {}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).expect("JSON answer");
        assert_eq!(v["status"], "success", "{v}");
        v["data"]["result"]
            .as_array()
            .expect("a vector")
            .iter()
            .map(|s| {
                let val = s["value"][1].as_str().unwrap().parse().unwrap();
                (s["metric"].clone(), val)
            })
            .collect()
    }

    /// The scrape targets' health by job, from `/api/v1/targets`: (job, health, lastError).
    pub fn targets(&self) -> Vec<(String, String, String)> {
        let r = get(self.addr, "/api/v1/targets");
        assert_eq!(r.status, 200, "targets: {}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).expect("JSON answer");
        v["data"]["activeTargets"]
            .as_array()
            .expect("targets")
            .iter()
            .map(|t| {
                let s = |k: &str| t[k].as_str().unwrap_or_default().to_string();
                (
                    t["labels"]["job"].as_str().unwrap_or_default().to_string(),
                    s("health"),
                    s("lastError"),
                )
            })
            .collect()
    }

    /// Runs `promql` every 500 ms until it returns one sample with value `want`, or `timeout`
    /// passes. Returns the last answer.
    pub fn wait_for(
        &self,
        promql: &str,
        want: f64,
        timeout: Duration,
    ) -> Vec<(serde_json::Value, f64)> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.query(promql);
            if (r.len() == 1 && r[0].1 == want) || Instant::now() > deadline {
                return r;
            }
            thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

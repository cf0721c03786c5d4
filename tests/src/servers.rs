//! Clients and starters for the real servers the tests dump (redis, PostgreSQL): the test
//! process itself is the client, outside the dumped tree.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::Workload;

/// A minimal RESP (redis) client over one TCP connection.
pub struct Redis {
    w: std::net::TcpStream,
    r: std::io::BufReader<std::net::TcpStream>,
}

impl Redis {
    pub fn connect(port: u16) -> Option<Redis> {
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        Some(Redis {
            r: std::io::BufReader::new(s.try_clone().ok()?),
            w: s,
        })
    }

    pub fn send(&mut self, args: &[&str]) -> Result<(), String> {
        use std::io::Write;
        let mut m = format!("*{}\r\n", args.len());
        for a in args {
            m.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.w
            .write_all(m.as_bytes())
            .map_err(|e| format!("redis send: {e}"))
    }

    pub fn reply(&mut self) -> Result<String, String> {
        use std::io::BufRead;
        let mut line = String::new();
        self.r
            .read_line(&mut line)
            .map_err(|e| format!("redis reply: {e}"))?;
        if let Some(n) = line.strip_prefix('$') {
            if n.trim().starts_with('-') {
                return Ok("(nil)".into());
            }
            let mut v = String::new();
            self.r
                .read_line(&mut v)
                .map_err(|e| format!("redis reply: {e}"))?;
            return Ok(v.trim_end().into());
        }
        Ok(line.trim_end().into())
    }

    pub fn cmd(&mut self, args: &[&str]) -> Result<String, String> {
        self.send(args)?;
        self.reply()
    }
}

/// Debian's redis-server binary, if installed.
pub fn redis_server() -> Option<&'static str> {
    ["/usr/bin/redis-server", "/usr/sbin/redis-server"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// Starts redis-server `bin` on 127.0.0.1:`port` (no persistence, `extra` flags) and
/// connects to it (10 s at most).
pub fn start_redis(
    name: &str,
    bin: &str,
    port: u16,
    extra: &[&str],
) -> Result<(Workload, Redis), String> {
    let port_s = port.to_string();
    let mut args = vec![
        "--port",
        &port_s,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ];
    args.extend_from_slice(extra);
    let w = Workload::start(name, Path::new(bin), &args);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(c) = Redis::connect(port) {
            return Ok((w, c));
        }
        if Instant::now() > end {
            return Err(format!("redis did not start: {:?}", w.lines()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A minimal PostgreSQL client (protocol 3.0, trust authentication, simple queries), so that
/// the test process itself is the client outside the dumped tree.
pub struct Postgres {
    s: std::net::TcpStream,
}

impl Postgres {
    pub fn connect(port: u16, user: &str) -> Result<Postgres, String> {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let mut body = 196608u32.to_be_bytes().to_vec(); // protocol 3.0
        for (k, v) in [("user", user), ("database", "postgres")] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut m = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        m.extend_from_slice(&body);
        s.write_all(&m).map_err(|e| e.to_string())?;
        let mut pg = Postgres { s };
        pg.until_ready()?;
        Ok(pg)
    }

    fn message(&mut self) -> Result<(u8, Vec<u8>), String> {
        use std::io::Read;
        let mut head = [0u8; 5];
        self.s
            .read_exact(&mut head)
            .map_err(|e| format!("postgres: {e}"))?;
        let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        self.s
            .read_exact(&mut body)
            .map_err(|e| format!("postgres: {e}"))?;
        Ok((head[0], body))
    }

    /// Reads up to ReadyForQuery; the first column of every row, or the error.
    fn until_ready(&mut self) -> Result<Vec<String>, String> {
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (kind, body) = self.message()?;
            match kind {
                b'D' if body.len() >= 6 => {
                    let n = i32::from_be_bytes(body[2..6].try_into().unwrap());
                    let v = if n < 0 {
                        "NULL".to_string()
                    } else {
                        String::from_utf8_lossy(&body[6..6 + n as usize]).into_owned()
                    };
                    rows.push(v);
                }
                b'E' => error = Some(String::from_utf8_lossy(&body).replace('\0', " ")),
                b'Z' => return error.map_or(Ok(rows), Err),
                _ => {}
            }
        }
    }

    /// Runs `sql` (one or more statements); the first column of every row returned.
    pub fn query(&mut self, sql: &str) -> Result<Vec<String>, String> {
        use std::io::Write;
        let mut m = vec![b'Q'];
        m.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        m.extend_from_slice(sql.as_bytes());
        m.push(0);
        self.s.write_all(&m).map_err(|e| format!("postgres: {e}"))?;
        self.until_ready()
    }
}

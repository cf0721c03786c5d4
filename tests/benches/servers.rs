//! Real servers: redis-server with 100k keys and nginx (master + 2 workers), dumped and
//! restored with their clients connected; and how frozen time grows with the number of
//! established connections (1, 100, 1000 idle redis clients).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use stasis_tests::*;

/// One dump + restore of a running server: wall times and frozen time.
pub struct ServerSample {
    pub name: String,
    pub dump_s: f64,
    pub restore_s: f64,
    pub frozen_ms: f64,
}

fn stats_frozen_ms(images: &Path) -> f64 {
    super::read_dump_stats(images)
        .map(|s| s.frozen_time as f64 / 1000.0)
        .unwrap_or(f64::NAN)
}

fn cycle(bin: &Path, w: &Workload, name: &str, flags: &[&str]) -> Result<ServerSample, String> {
    let img = w.images();
    let imgs = img.to_str().ok_or("path")?;
    let pid = w.pid.to_string();
    let before = session_pids(w.pid);
    // SAFETY: sync(2) has no arguments; earlier writes must not throttle this dump.
    unsafe { libc::sync() };
    let mut args = vec!["dump", "-t", &pid, "-D", imgs, "-o", "dump.log"];
    args.extend_from_slice(flags);
    let d = super::run_stasis(bin, &args, &w.dir.join("dump.out"))?;
    if !d.ok {
        return Err(format!(
            "{name}: dump failed: {}",
            super::tail(&w.dir.join("dump.out"), 3)
        ));
    }
    for p in &before {
        reap(*p);
    }
    kill_tree(&[]);
    let mut args = vec!["restore", "-D", imgs, "-d", "-o", "restore.log"];
    args.extend_from_slice(flags);
    let r = super::run_stasis(bin, &args, &w.dir.join("restore.out"))?;
    if !r.ok {
        return Err(format!(
            "{name}: restore failed: {}",
            super::tail(&w.dir.join("restore.out"), 3)
        ));
    }
    Ok(ServerSample {
        name: name.to_string(),
        dump_s: d.wall.as_secs_f64(),
        restore_s: r.wall.as_secs_f64(),
        frozen_ms: stats_frozen_ms(&img),
    })
}

fn start_redis(port: u16) -> Result<(Workload, Redis), String> {
    let bin = redis_server().ok_or("redis-server is not installed")?;
    stasis_tests::start_redis("bench-redis", bin, port, &["--maxclients", "4000"])
}

fn redis_keys(port: u16) -> Result<ServerSample, String> {
    let (w, mut c) = start_redis(port)?;
    for i in 0..100_000 {
        c.send(&["SET", &format!("key:{i}"), &format!("value-{i}")])?;
    }
    for _ in 0..100_000 {
        c.reply()?;
    }
    let s = cycle(
        &super::stasis_binary(),
        &w,
        "redis, 100k keys, 1 client",
        &["--tcp-established"],
    )?;
    let v = c.cmd(&["GET", "key:777"])?;
    let pids = session_pids(w.pid);
    kill_tree(&pids);
    if v != "value-777" {
        return Err(format!("redis after restore answered {v:?}"));
    }
    Ok(s)
}

fn redis_connections(port: u16, n: usize) -> Result<ServerSample, String> {
    let (w, mut first) = start_redis(port)?;
    let mut conns = Vec::new();
    for _ in 1..n {
        conns.push(Redis::connect(port).ok_or("connect")?);
    }
    first.cmd(&["SET", "k", "v"])?;
    let s = cycle(
        &super::stasis_binary(),
        &w,
        &format!("redis, {n} connections"),
        &["--tcp-established"],
    )?;
    let v = first.cmd(&["GET", "k"])?;
    let last = match conns.last_mut() {
        Some(c) => c.cmd(&["GET", "k"])?,
        None => v.clone(),
    };
    let pids = session_pids(w.pid);
    kill_tree(&pids);
    if v != "v" || last != "v" {
        return Err(format!("redis after restore answered {v:?} / {last:?}"));
    }
    Ok(s)
}

fn nginx(port: u16) -> Result<ServerSample, String> {
    if !Path::new("/usr/sbin/nginx").exists() {
        return Err("nginx is not installed".into());
    }
    let dir = temp_dir("bench-nginx");
    std::fs::create_dir_all(dir.join("tmp")).map_err(|e| e.to_string())?;
    let d = dir.display();
    let conf = format!(
        "daemon off;\nworker_processes 2;\nuser nobody nogroup;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
events {{ worker_connections 64; }}\nhttp {{ access_log off; client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp;\n\
fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"hello\\n\"; }} }} }}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).map_err(|e| e.to_string())?;
    let conf = dir.join("nginx.conf");
    let w = Workload::start(
        "bench-nginx",
        Path::new("/usr/sbin/nginx"),
        &["-c", conf.to_str().unwrap_or(""), "-p", &d.to_string()],
    );
    let get = || -> Option<String> {
        let mut c = TcpStream::connect(("127.0.0.1", port)).ok()?;
        c.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut s = String::new();
        c.read_to_string(&mut s).ok()?;
        Some(s)
    };
    let end = Instant::now() + Duration::from_secs(10);
    while get().is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = cycle(
        &super::stasis_binary(),
        &w,
        "nginx, master + 2 workers",
        &[],
    )?;
    let ok = get().unwrap_or_default().contains("hello");
    let pids = session_pids(w.pid);
    kill_tree(&pids);
    if !ok {
        return Err("nginx did not answer after restore".into());
    }
    Ok(s)
}

/// Runs every server workload; failures are reported, not fatal.
pub fn bench(errors: &mut Vec<String>) -> Vec<ServerSample> {
    // 1000 client sockets plus redis's own: raise our open-files limit to the hard one.
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
    let base = 21000 + (std::process::id() % 10000) as u16;
    let mut out = Vec::new();
    let mut run = |r: Result<ServerSample, String>| match r {
        Ok(s) => out.push(s),
        Err(e) => errors.push(e),
    };
    eprintln!("redis 100k keys ...");
    run(redis_keys(base));
    eprintln!("nginx ...");
    run(nginx(base + 1));
    for (i, n) in [1usize, 100, 1000].into_iter().enumerate() {
        eprintln!("redis with {n} connections ...");
        run(redis_connections(base + 2 + i as u16, n));
    }
    out
}

pub fn print(samples: &[ServerSample]) {
    println!(
        "\nServers (clients connected; dump with --tcp-established where they have connections)"
    );
    println!(
        "{:<30} {:>9} {:>10} {:>10}",
        "workload", "dump s", "frozen ms", "restore s"
    );
    for s in samples {
        println!(
            "{:<30} {:>9.4} {:>10.1} {:>10.4}",
            s.name, s.dump_s, s.frozen_ms, s.restore_s
        );
    }
}

//! A std-only multi-call stand-in for the programs critest's images run, copied into the test
//! images under the name that selects its role:
//! - `nginx`: HTTP server on `$LISTEN_PORT` (default 80) answering 200 to everything and
//!   logging each request to stdout; writes `/var/run/nginx.pid`; re-execs itself so that
//!   `/proc/<pid>/cmdline` reads `nginx: master process ...` like real nginx.
//! - `httpd`: the same, logging with an `httpd` prefix, no pid file.
//! - `nonewprivs`: prints `Effective uid: N` (read from /proc/self/status) and exits.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;

fn main() {
    let argv0 = std::env::args().next().unwrap_or_default();
    let base = argv0.rsplit('/').next().unwrap_or("").to_string();
    let code = if base.starts_with("nonewprivs") {
        nonewprivs()
    } else if base.starts_with("httpd") {
        serve("httpd", false)
    } else if base.starts_with("nginx") {
        if !argv0.contains("master process") {
            // become "nginx: master process ..." (comm stays the file name: nginx)
            let exe = std::env::current_exe().unwrap_or_else(|_| "/usr/local/bin/nginx".into());
            let err = std::process::Command::new(&exe)
                .arg0(format!("nginx: master process {}", exe.display()))
                .args(std::env::args().skip(1))
                .exec();
            eprintln!("nginx: re-exec failed: {err}");
            1
        } else {
            serve("nginx", true)
        }
    } else {
        eprintln!(
            "unicri-test-webserver: unknown role {base:?} (install as nginx, httpd or nonewprivs)"
        );
        2
    };
    std::process::exit(code);
}

fn nonewprivs() -> i32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|r| r.split_whitespace().nth(1))
        .unwrap_or("?")
        .to_string();
    println!("Effective uid: {euid}");
    0
}

fn serve(name: &str, pid_file: bool) -> i32 {
    let port: u16 = std::env::var("LISTEN_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(80);
    if pid_file {
        let _ = std::fs::create_dir_all("/var/run");
        if let Err(e) = std::fs::write("/var/run/nginx.pid", format!("{}\n", std::process::id())) {
            eprintln!("{name}: cannot write /var/run/nginx.pid: {e}");
        }
    }
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{name}: bind :{port}: {e}");
            return 1;
        }
    };
    println!("{name}: listening on port {port}");
    let name = name.to_string();
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let name = name.clone();
        std::thread::spawn(move || handle(&name, conn));
    }
    0
}

fn handle(name: &str, conn: TcpStream) {
    let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let Ok(clone) = conn.try_clone() else { return };
    let mut reader = BufReader::new(clone);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut l = String::new();
        match reader.read_line(&mut l) {
            Ok(0) | Err(_) => break,
            Ok(_) if l == "\r\n" || l == "\n" => break,
            Ok(_) => {}
        }
    }
    println!("{name}: {peer} \"{}\" 200", request_line.trim_end());
    let body = format!("<html><body><h1>Welcome to {name}!</h1></body></html>\n");
    let mut conn = conn;
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nServer: {name}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

//! Hostile clients against the real `weir serve`: connections that never finish their
//! headers or sit idle, more connections than allowed, a wide line, an abandoned query.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use integration_tests::{Server, ServerConfig};

fn start(extra: &[&str]) -> Server {
    Server::start(ServerConfig { args: extra.iter().map(|s| s.to_string()).collect(), ..Default::default() })
}

fn addr(s: &Server) -> String {
    s.url.trim_start_matches("http://").to_string()
}

/// Whether the server closes `conn` within `within` (reads EOF or a reset).
fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
    conn.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// Slow-header and idle connections are closed after the header timeout; past the cap a
/// new connection gets a 503 at once; `/health` answers throughout.
#[test]
fn slow_idle_and_surplus_connections_are_bounded() {
    let s = start(&["--http-header-read-timeout", "1s", "--max-connections", "6"]);
    let a = addr(&s);
    let mut held: Vec<TcpStream> = Vec::new();
    // Two idle, two sending headers a byte at a time (slowloris).
    for i in 0..4 {
        let mut c = TcpStream::connect(&a).unwrap();
        if i >= 2 {
            c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
        }
        held.push(c);
    }
    // Two more fill the cap; the next is refused with a readable answer.
    held.push(TcpStream::connect(&a).unwrap());
    held.push(TcpStream::connect(&a).unwrap());
    std::thread::sleep(Duration::from_millis(200));
    let mut surplus = TcpStream::connect(&a).unwrap();
    surplus.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut answer = String::new();
    let _ = surplus.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(answer.contains("--max-connections"), "{answer}");
    // Every held connection is closed by the server within a generous deadline.
    for (i, c) in held.iter_mut().enumerate() {
        if (2..4).contains(&i) {
            let _ = c.write_all(b"a");
        }
        assert!(closed_within(c, Duration::from_secs(30)), "connection {i} was kept open");
    }
    // Room again: a normal request works.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = TcpStream::connect(&a).unwrap();
        c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = c.read_to_string(&mut out);
        if out.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "health never answered: {out:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

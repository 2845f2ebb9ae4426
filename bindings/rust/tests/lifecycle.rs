//! Starting, stopping, dropping; thread-safety traits; the TLS library.
mod common;

use common::*;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn drop_without_stop_closes_open_connections() {
    let origin = Origin::start();
    let state = TempDir::new("drop");
    let vault = agentvault::Vault::start(&config_for(&origin, &state)).unwrap();
    let url = vault.gateway_url(UPSTREAM).unwrap();

    // An idle keep-alive connection to the gateway after one exchange ...
    let tcp = TcpStream::connect(url.strip_prefix("http://").unwrap()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = tcp.try_clone().unwrap();
    let mut r = BufReader::new(tcp);
    w.write_all(request("GET", "/v1/a", "").as_bytes()).unwrap();
    assert_injected(&read_response(&mut r).unwrap());
    // ... and a stream that has not sent anything yet.
    let mut stream = vault.open_stream(UPSTREAM).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();

    let t = Instant::now();
    drop(vault);
    assert!(t.elapsed() < Duration::from_secs(10), "drop took {:?}", t.elapsed());

    // Both see the close (EOF or reset), not a hang.
    let mut buf = [0u8; 64];
    match r.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("unexpected {} bytes after drop", n),
    }
    match stream.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("unexpected {} bytes after drop", n),
    }
    // The gateway port is closed.
    assert!(TcpStream::connect(url.strip_prefix("http://").unwrap()).is_err());
}

#[test]
fn drop_right_after_start() {
    let state = TempDir::new("drop-now");
    let mut cfg = agentvault::Config::new().unwrap();
    cfg.set_state_dir(state.path()).unwrap();
    cfg.add_listen("127.0.0.1:0").unwrap();
    for _ in 0..5 {
        let vault = agentvault::Vault::start(&cfg).unwrap();
        drop(vault);
    }
}

#[test]
fn stop_with_drain_finishes() {
    let origin = Origin::start();
    let state = TempDir::new("stop");
    let vault = agentvault::Vault::start(&config_for(&origin, &state)).unwrap();
    let url = vault.gateway_url(UPSTREAM).unwrap();
    assert_injected(&get_via_gateway(&url, "/v1/x"));
    let t = Instant::now();
    vault.stop(Duration::from_secs(3)).expect("stop");
    assert!(t.elapsed() < Duration::from_secs(10), "stop took {:?}", t.elapsed());
    assert!(TcpStream::connect(url.strip_prefix("http://").unwrap()).is_err());
}

#[test]
fn vault_is_sync_config_is_send() {
    fn is_sync<T: Sync>() {}
    fn is_send<T: Send>() {}
    is_sync::<agentvault::Vault>();
    is_send::<agentvault::Config>();
    is_send::<agentvault::Error>();
    is_sync::<agentvault::Error>();
    // (Vault: !Send and Config: !Sync are compile_fail doctests / by design.)
}

#[test]
fn tls_library_reports_the_backend() {
    let tls = agentvault::tls_library();
    assert!(tls.backend == "boringssl" || tls.backend == "openssl", "{:?}", tls);
    assert!(!tls.path.is_empty());
    if let Ok(want) = std::env::var("AV_EXPECT_TLS_BACKEND") {
        if !want.is_empty() {
            assert_eq!(tls.backend, want);
        }
    }
    if tls.backend == "boringssl" {
        assert!(tls.path.contains("android"), "{:?}", tls);
    }
    assert!(tls.path.contains("libssl"), "{:?}", tls);
    assert!(!agentvault::version().is_empty());
}

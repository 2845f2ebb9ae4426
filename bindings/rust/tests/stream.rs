//! Vault::open_stream: plaintext HTTP/1.1 over a UnixStream.
mod common;

use common::*;
use std::io::{BufReader, Write};
use std::time::Duration;

#[test]
fn open_stream_keep_alive_two_requests() {
    let origin = Origin::start();
    let state = TempDir::new("stream");
    let vault = agentvault::Vault::start(&config_for(&origin, &state)).unwrap();
    let stream = vault.open_stream(UPSTREAM).expect("open_stream");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);

    w.write_all(request("GET", "/v1/first", "").as_bytes()).unwrap();
    let first = read_response(&mut r).expect("first response");
    assert_injected(&first);
    assert!(first.body_str().contains("/v1/first"));

    w.write_all(request("GET", "/v1/second", "").as_bytes()).unwrap();
    let second = read_response(&mut r).expect("second response on the same stream");
    assert_injected(&second);
    assert!(second.body_str().contains("/v1/second"));
    drop(w);
    drop(r);
    vault.stop(Duration::from_secs(2)).unwrap();
}

#[test]
fn open_stream_from_several_threads() {
    let origin = Origin::start();
    let state = TempDir::new("stream-threads");
    let vault = agentvault::Vault::start(&config_for(&origin, &state)).unwrap();
    let vault = &vault;
    std::thread::scope(|s| {
        for i in 0..6 {
            s.spawn(move || {
                let stream = vault.open_stream(UPSTREAM).expect("open_stream from a thread");
                stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut w = stream.try_clone().unwrap();
                let mut r = BufReader::new(stream);
                w.write_all(request("GET", &format!("/v1/t{}", i), "Connection: close\r\n").as_bytes())
                    .unwrap();
                assert_injected(&read_response(&mut r).unwrap());
            });
        }
    });
}

#[test]
fn open_stream_refuses_a_bad_origin() {
    let origin = Origin::start();
    let state = TempDir::new("stream-bad");
    let vault = agentvault::Vault::start(&config_for(&origin, &state)).unwrap();
    for bad in ["ftp://api.example.test", "https://api.example.test/v1", "not a url", ""] {
        let e = vault.open_stream(bad).expect_err(bad);
        assert_eq!(e.code(), agentvault::code::INVALID, "{}: {}", bad, e);
    }
}

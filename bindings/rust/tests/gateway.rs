//! Base-URL mode: Vault::gateway_url, plain HTTP/1.1 over std::net::TcpStream.
mod common;

use common::*;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn gateway_url_injects_the_credential() {
    let origin = Origin::start();
    let state = TempDir::new("gw");
    let vault = agentvault::Vault::start(&config_for(&origin, &state)).expect("start");
    let url = vault.gateway_url(UPSTREAM).expect("gateway_url");
    assert!(url.starts_with("http://127.0.0.1:"), "{}", url);
    let resp = get_via_gateway(&url, "/v1/models?x=1");
    assert_injected(&resp);
    let body = resp.body_str();
    assert!(body.contains("\"path\": \"/v1/models?x=1\""), "{}", body);
    // Host is rewritten to the upstream's.
    assert!(body.contains("\"host\": \"api.example.test\""), "{}", body);
    // The CA was created in the state directory.
    assert!(state.path().join("state").join("ca.pem").exists());
    vault.stop(Duration::from_secs(2)).expect("stop");
}

#[test]
fn gateway_keep_alive_and_post_body() {
    let origin = Origin::start();
    let state = TempDir::new("gw-ka");
    let vault = agentvault::Vault::start(&config_for(&origin, &state)).unwrap();
    let url = vault.gateway_url(UPSTREAM).unwrap();
    let s = TcpStream::connect(url.strip_prefix("http://").unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    for i in 0..3 {
        let body = format!("{{\"i\": {}}}", i);
        let req = request(
            "POST",
            "/v1/echo",
            &format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()),
        );
        w.write_all(req.as_bytes()).unwrap();
        w.write_all(body.as_bytes()).unwrap();
        let resp = read_response(&mut r).expect("response");
        assert_injected(&resp);
        assert!(resp.body_str().contains(&format!("\"body_len\": {}", body.len())), "{}", resp.body_str());
    }
}

#[test]
fn gateway_url_from_many_threads_at_once() {
    let origin = Origin::start();
    let state = TempDir::new("gw-threads");
    let vault = agentvault::Vault::start(&config_for(&origin, &state)).unwrap();
    let vault = &vault;
    let urls: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                s.spawn(move || {
                    let url = vault.gateway_url(UPSTREAM).expect("gateway_url from a thread");
                    let resp = get_via_gateway(&url, &format!("/v1/thread/{}", i));
                    assert_injected(&resp);
                    url
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    // One gateway per origin: every thread got the same URL.
    let mut unique = urls.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 1, "{:?}", urls);
}

#[test]
fn gateway_section_and_proxy_port() {
    let origin = Origin::start();
    let state = TempDir::new("gw-section");
    let mut cfg = config_for(&origin, &state);
    cfg.add_listen("127.0.0.1:0").unwrap();
    cfg.add_section("gateway", "example", &[("listen", "127.0.0.1:0"), ("upstream", UPSTREAM)])
        .unwrap();
    assert_eq!(cfg.gateway_count(), 1);
    let vault = agentvault::Vault::start(&cfg).unwrap();
    drop(cfg); // the vault has its own copy
    let proxy = vault.proxy_port().expect("proxy port");
    assert!(proxy > 0);
    assert_eq!(vault.proxy_ports().len(), 1);
    let gw = vault.gateway_port(0).expect("gateway port");
    assert!(gw > 0 && gw != proxy);
    assert_eq!(vault.gateway_port(1), None);

    // The configured gateway injects like an API gateway.
    assert_injected(&get_via_gateway(&format!("http://127.0.0.1:{}", gw), "/v1/cfg"));

    // The proxy port answers its own /healthz.
    let mut s = TcpStream::connect(("127.0.0.1", proxy)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{}", out);
}

#[test]
fn no_listener_means_no_proxy_port() {
    let origin = Origin::start();
    let state = TempDir::new("gw-nolisten");
    let vault = agentvault::Vault::start(&config_for(&origin, &state)).unwrap();
    assert_eq!(vault.proxy_port(), None);
    assert!(vault.proxy_ports().is_empty());
    assert_eq!(vault.gateway_port(0), None);
}

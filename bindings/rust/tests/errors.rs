//! Errors come back as Err(Error) with a code and a one-line message.
mod common;

use agentvault::{code, Config, Vault};
use common::*;

#[test]
fn unknown_key_names_the_line() {
    let mut cfg = Config::new().unwrap();
    let e = cfg
        .load_str_named("[proxy]\nunmatched = deny\n\n[service \"x\"]\ncolour = blue\n", "test.conf")
        .unwrap_err();
    assert_eq!(e.code(), code::CONFIG, "{:?}", e);
    assert!(e.message().contains("test.conf:5"), "{}", e);
    assert!(e.message().contains("colour"), "{}", e);
    assert_eq!(e.to_string(), e.message());
    assert!(!e.description().is_empty());
    // std::error::Error, usable with `?` into Box<dyn Error> and io::Error.
    let boxed: Box<dyn std::error::Error> = Box::new(e.clone());
    assert_eq!(boxed.to_string(), e.message());
    let io: std::io::Error = e.into();
    assert_eq!(io.kind(), std::io::ErrorKind::Other);
    // All or nothing: the failed load added no service.
    assert_eq!(cfg.service_count(), 0);
}

#[test]
fn load_file_errors() {
    let mut cfg = Config::new().unwrap();
    let e = cfg.load_file("/nonexistent/agentvault.conf").unwrap_err();
    assert_eq!(e.code(), code::IO, "{:?}", e);
    assert!(e.message().contains("/nonexistent/agentvault.conf"), "{}", e);

    let dir = TempDir::new("errors-file");
    let path = dir.path().join("agentvault.conf");
    std::fs::write(&path, "[service \"a\"]\nhost = api.example.test\nauth = bearer\nsecret = env:X\n").unwrap();
    cfg.load_file(&path).expect("valid file");
    assert_eq!(cfg.service_count(), 1);
}

#[test]
fn add_section_errors() {
    let mut cfg = Config::new().unwrap();
    let e = cfg.add_section("services", "a", &[("host", "x.example")]).unwrap_err();
    assert_eq!(e.code(), code::INVALID);
    assert!(e.message().contains("unknown section kind"), "{}", e);

    let e = cfg.add_section("service", "", &[("host", "x.example")]).unwrap_err();
    assert_eq!(e.code(), code::INVALID, "{}", e);

    let e = cfg
        .add_section("service", "a", &[("host", "api.example.test"), ("auth", "bearer\nhost = evil")])
        .unwrap_err();
    assert_eq!(e.code(), code::INVALID, "{}", e);

    let e = cfg.add_section("service", "a", &[("host", "*.com")]).unwrap_err();
    assert_eq!(e.code(), code::CONFIG, "{}", e);

    let e = cfg.add_section("proxy", "", &[("unmatched", "maybe")]).unwrap_err();
    assert_eq!(e.code(), code::CONFIG, "{}", e);
    cfg.add_section("proxy", "", &[("unmatched", "deny")]).expect("proxy section");
    assert_eq!(cfg.service_count(), 0);
}

#[test]
fn override_errors() {
    let mut cfg = Config::new().unwrap();
    let e = cfg.add_resolve("api.example.test").unwrap_err();
    assert!(e.code() < 0 && !e.message().is_empty(), "{:?}", e);
    let e = cfg.add_listen("not-an-address").unwrap_err();
    assert!(e.code() < 0 && !e.message().is_empty(), "{:?}", e);
    let e = cfg.add_listen("127.0.0.1:0\0").unwrap_err();
    assert_eq!(e.code(), code::INVALID);
    cfg.add_listen("127.0.0.1:0").unwrap();
    assert_eq!(cfg.listen_count(), 1);
    cfg.clear_listen().unwrap();
    assert_eq!(cfg.listen_count(), 0);
}

#[test]
fn start_errors() {
    // No state directory.
    let mut cfg = Config::new().unwrap();
    cfg.add_section("service", "a", &[("host", "api.example.test"), ("auth", "bearer"), ("secret", "env:X")])
        .unwrap();
    let e = Vault::start(&cfg).unwrap_err();
    assert_eq!(e.code(), code::CONFIG, "{:?}", e);
    assert!(e.message().contains("state"), "{}", e);

    // A section is checked as it is added (a service needs a secret) ...
    let dir = TempDir::new("errors-start");
    let mut cfg = Config::new().unwrap();
    cfg.set_state_dir(dir.path()).unwrap();
    let e = cfg.add_section("service", "b", &[("host", "api.example.test"), ("auth", "bearer")]).unwrap_err();
    assert_eq!(e.code(), code::CONFIG);
    assert!(e.message().contains("secret"), "{}", e);
    // ... cross-field rules when the vault starts (validate).
    cfg.add_section("token", "t", &[("secret", "env:AV_TOKEN"), ("services", "nosuch")]).unwrap();
    let e = cfg.validate().unwrap_err();
    assert_eq!(e.code(), code::CONFIG);
    assert!(e.message().contains("nosuch"), "{}", e);
    let e = Vault::start(&cfg).unwrap_err();
    assert_eq!(e.code(), code::CONFIG, "{}", e);
    assert!(e.message().contains("nosuch"), "{}", e);

    // A listener that cannot be bound.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = Config::new().unwrap();
    cfg.set_state_dir(dir.path()).unwrap();
    cfg.add_listen(&busy.local_addr().unwrap().to_string()).unwrap();
    let e = Vault::start(&cfg).unwrap_err();
    assert_eq!(e.code(), code::IO, "{:?}", e);
    assert!(e.message().contains("cannot listen"), "{}", e);

    // An unreadable upstream CA file.
    let mut cfg = Config::new().unwrap();
    cfg.set_state_dir(dir.path()).unwrap();
    cfg.set_upstream_cafile(dir.path().join("missing.pem")).unwrap();
    let e = Vault::start(&cfg).unwrap_err();
    assert!(e.message().contains("missing.pem"), "{:?}", e);
}

#[test]
fn gateway_url_errors() {
    let dir = TempDir::new("errors-gw");
    let mut cfg = Config::new().unwrap();
    cfg.set_state_dir(dir.path()).unwrap();
    let vault = Vault::start(&cfg).unwrap();
    for bad in ["ftp://api.example.test", "https://api.example.test/v1/", "api.example.test", "a\0b"] {
        let e = vault.gateway_url(bad).expect_err(bad);
        assert_eq!(e.code(), code::INVALID, "{}: {:?}", bad, e);
        assert!(!e.message().is_empty());
    }
    // A context without services still opens gateways.
    assert!(vault.gateway_url("https://api.example.test").unwrap().starts_with("http://127.0.0.1:"));
}

//! src/ffi.rs is hand-written: check it against include/agentvault/agentvault.h
//! (every declared function exists there, with the same parameter count, and
//! every error constant has the header's value).
use std::collections::HashMap;
use std::path::PathBuf;

fn read(rel: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {}", p.display(), e))
}

/// name -> number of parameters, from "AV_EXPORT ... name(params);" (C) or
/// "pub fn name(params)" (Rust).
fn functions(text: &str, marker: &str) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    let mut rest = text;
    while let Some(i) = rest.find(marker) {
        rest = &rest[i + marker.len()..];
        let open = match rest.find('(') {
            Some(o) => o,
            None => break,
        };
        let head = &rest[..open];
        let name: String = head
            .rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .next()
            .unwrap_or("")
            .to_string();
        let close = rest[open..].find(')').map(|c| open + c).unwrap();
        let params = rest[open + 1..close].trim();
        let n = if params.is_empty() || params == "void" {
            0
        } else {
            params.split(',').filter(|p| !p.trim().is_empty()).count()
        };
        if name.starts_with("av_") {
            out.insert(name, n);
        }
        rest = &rest[close..];
    }
    out
}

#[test]
fn ffi_functions_are_in_the_header() {
    let header = read("../../include/agentvault/agentvault.h");
    let ffi = read("src/ffi.rs");
    let c = functions(&header, "AV_EXPORT ");
    let rs = functions(&ffi, "pub fn ");
    assert!(rs.len() >= 20, "parsed only {:?}", rs);
    for (name, n) in &rs {
        match c.get(name) {
            None => panic!("{} is declared in ffi.rs but not in agentvault.h", name),
            Some(m) => assert_eq!(n, m, "{}: {} parameters in ffi.rs, {} in the header", name, n, m),
        }
    }
}

#[test]
fn ffi_error_codes_match_the_header() {
    let header = read("../../include/agentvault/agentvault.h");
    let ffi = read("src/ffi.rs");
    let mut seen = 0;
    for line in header.lines() {
        let l = line.trim();
        if !l.starts_with("AV_OK") && !l.starts_with("AV_ERR_") {
            continue;
        }
        let (name, value) = match l.split_once('=') {
            Some(x) => x,
            None => continue,
        };
        let name = name.trim();
        let value: i32 = value
            .trim()
            .trim_end_matches(|c: char| c == ',' || c.is_whitespace())
            .split(|c: char| c == ',' || c == ' ')
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("cannot parse {:?}", l));
        let decl = format!("pub const {}: c_int = {};", name, value);
        assert!(ffi.contains(&decl), "ffi.rs lacks `{}`", decl);
        seen += 1;
    }
    assert!(seen >= 21, "parsed {} codes", seen);
}

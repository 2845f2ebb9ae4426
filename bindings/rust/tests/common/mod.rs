//! Shared test helpers (std only): temporary directories, a local HTTPS
//! origin (Python's http.server behind TLS with a certificate from a
//! throwaway CA made with the openssl CLI), a vault wired to it, a small
//! HTTP/1.1 client and SHA-256.
//!
//! The origin answers every request with 200 and reports the SHA-256 of the
//! Authorization header it received (X-Auth-Sha256, and in the JSON body),
//! never the value itself: the library scrubs an injected secret out of
//! responses. Nothing leaves 127.0.0.1: the vault reaches
//! api.example.test through add_resolve.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub const HOST: &str = "api.example.test";
pub const UPSTREAM: &str = "https://api.example.test";
pub const SECRET: &str = "sk-real-rust-binding-test-0123456789";

// ---- temporary directories -------------------------------------------------------

pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let base = std::env::var_os("AV_TEST_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let p = base.join(format!(
            "av-rs-{}-{}-{}",
            std::process::id(),
            tag,
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ---- certificates ------------------------------------------------------------------

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{:?}: {}", cmd, e));
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (ca.pem) and a leaf for HOST signed by it (leaf.pem, leaf.key).
pub fn make_certs(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(Command::new("openssl")
        .current_dir(dir)
        .args(["req", "-x509"])
        .args(ec)
        .args(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=agentvault rust test CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]));
    run(Command::new("openssl")
        .current_dir(dir)
        .arg("req")
        .args(ec)
        .args(["-keyout", "leaf.key", "-out", "leaf.csr", "-subj", &format!("/CN={}", HOST)]));
    fs::write(
        dir.join("leaf.ext"),
        format!(
            "subjectAltName=DNS:{}\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
            HOST
        ),
    )
    .unwrap();
    run(Command::new("openssl").current_dir(dir).args([
        "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", "2", "-days",
        "2", "-out", "leaf.pem", "-extfile", "leaf.ext",
    ]));
}

// ---- the origin -------------------------------------------------------------------

const ORIGIN_PY: &str = r#"
import hashlib, http.server, json, socketserver, ssl, sys, threading

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle_any(self):
        n = int(self.headers.get("Content-Length") or 0)
        body_in = self.rfile.read(n) if n else b""
        auths = self.headers.get_all("Authorization") or []
        digest = hashlib.sha256(auths[0].encode("latin-1")).hexdigest() if auths else "none"
        self.server.count += 1
        body = json.dumps({
            "auth_sha256": digest,
            "auth_count": len(auths),
            "method": self.command,
            "path": self.path,
            "host": self.headers.get("Host"),
            "body_len": len(body_in),
            "n": self.server.count,
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Auth-Sha256", digest)
        self.send_header("X-Auth-Count", str(len(auths)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = handle_any

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    count = 0

    def get_request(self):
        sock, addr = self.socket.accept()
        sock.settimeout(30)
        return self.ctx.wrap_socket(sock, server_side=True), addr

srv = Server(("127.0.0.1", 0), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
ctx.set_alpn_protocols(["http/1.1"])
srv.ctx = ctx
print("PORT", srv.server_address[1], flush=True)
srv.serve_forever()
"#;

pub struct Origin {
    child: Child,
    pub port: u16,
    pub ca: PathBuf,
    pub dir: TempDir,
}

impl Origin {
    pub fn start() -> Origin {
        let dir = TempDir::new("origin");
        make_certs(dir.path());
        let script = dir.path().join("origin.py");
        fs::write(&script, ORIGIN_PY).unwrap();
        let python = if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
        let mut child = Command::new(python)
            .arg(&script)
            .arg(dir.path().join("leaf.pem"))
            .arg(dir.path().join("leaf.key"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the python origin");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("origin port");
        let port: u16 = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("origin did not start: {:?}", line)
            });
        let ca = dir.path().join("ca.pem");
        Origin { child, port, ca, dir }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- a vault wired to the origin ------------------------------------------------

/// A configuration with one service for HOST (bearer, secret from a file),
/// HOST:443 pinned to the origin and the origin's CA trusted.
pub fn config_for(origin: &Origin, state: &TempDir) -> agentvault::Config {
    let secret_file = state.path().join("secret.txt");
    fs::write(&secret_file, format!("{}\n", SECRET)).unwrap();
    let mut cfg = agentvault::Config::new().unwrap();
    let secret_ref = format!("file:{}", secret_file.display());
    cfg.add_section(
        "service",
        "example",
        &[("host", HOST), ("auth", "bearer"), ("secret", &secret_ref)],
    )
    .unwrap();
    cfg.add_resolve(&format!("{}:443:127.0.0.1:{}", HOST, origin.port)).unwrap();
    cfg.set_upstream_cafile(&origin.ca).unwrap();
    cfg.set_state_dir(state.path().join("state")).unwrap();
    cfg
}

/// The SHA-256 (hex) the origin must report for the injected credential.
pub fn expected_auth() -> String {
    hex(&sha256(format!("Bearer {}", SECRET).as_bytes()))
}

// ---- HTTP/1.1 ----------------------------------------------------------------------

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn request(method: &str, path: &str, extra: &str) -> String {
    format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer dummy-key\r\nUser-Agent: agentvault-rust-test\r\n{}\r\n",
        method, path, HOST, extra
    )
}

fn read_line<R: BufRead>(r: &mut R) -> std::io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
    }
    Ok(line.trim_end_matches(&['\r', '\n'][..]).to_string())
}

/// Reads one response (Content-Length, chunked, or until EOF).
pub fn read_response<R: BufRead>(r: &mut R) -> std::io::Result<Response> {
    let status_line = read_line(r)?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    assert!(version.starts_with("HTTP/1."), "status line: {:?}", status_line);
    let status: u16 = parts.next().and_then(|s| s.parse().ok()).expect("status code");
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?;
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').expect("header line");
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut resp = Response { status, headers, body: Vec::new() };
    let chunked = resp
        .header("Transfer-Encoding")
        .map_or(false, |v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            let size_line = read_line(r)?;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16).expect("chunk size");
            if size == 0 {
                // trailers
                while !read_line(r)?.is_empty() {}
                break;
            }
            let mut chunk = vec![0; size];
            r.read_exact(&mut chunk)?;
            resp.body.extend_from_slice(&chunk);
            read_line(r)?;
        }
    } else if let Some(len) = resp.header("Content-Length") {
        let mut body = vec![0; len.parse().expect("content-length")];
        r.read_exact(&mut body)?;
        resp.body = body;
    } else if status != 204 && status != 304 {
        r.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

/// One request on a fresh TCP connection to a gateway URL.
pub fn get_via_gateway(url: &str, path: &str) -> Response {
    let addr = url.strip_prefix("http://").expect("http:// URL");
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the gateway");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request("GET", path, "Connection: close\r\n").as_bytes()).unwrap();
    let mut r = BufReader::new(s);
    read_response(&mut r).expect("response")
}

/// Asserts a 200 from the origin with the real credential injected (and
/// the agent's dummy removed).
pub fn assert_injected(resp: &Response) {
    assert_eq!(resp.status, 200, "response: {:?} {}", resp.headers, resp.body_str());
    assert_eq!(resp.header("X-Auth-Count"), Some("1"), "{:?}", resp.headers);
    assert_eq!(
        resp.header("X-Auth-Sha256"),
        Some(expected_auth().as_str()),
        "the origin did not get the injected credential"
    );
    assert!(resp.body_str().contains(&expected_auth()), "{}", resp.body_str());
    assert!(!resp.body_str().contains(SECRET));
}

// ---- SHA-256 (FIPS 180-4), for the expected digest ----------------------------

pub fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([block[4 * i], block[4 * i + 1], block[4 * i + 2], block[4 * i + 3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh.wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (i, v) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&v.to_be_bytes());
    }
    out
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{:02x}", x)).collect()
}

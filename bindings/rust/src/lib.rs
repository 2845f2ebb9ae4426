//! Safe Rust binding for libagentvault.
//!
//! libagentvault is a credential-injecting transport for AI agents: the
//! agent holds a dummy key, the library matches each request to a
//! configured service, injects the real credential and talks verified TLS
//! to the origin. This crate wraps the embedding API of
//! `agentvault.h`: build a [`Config`], start a [`Vault`] (the library's
//! event loop on its own thread), then either point an HTTP client at a
//! local gateway URL ([`Vault::gateway_url`]) or speak plaintext HTTP/1.1
//! over a connected socket ([`Vault::open_stream`]).
//!
//! ```no_run
//! use std::io::{Read, Write};
//!
//! let mut cfg = agentvault::Config::new()?;
//! cfg.add_section("service", "openai", &[
//!     ("host", "api.openai.com"),
//!     ("auth", "bearer"),
//!     ("secret", "env:OPENAI_API_KEY"),
//! ])?;
//! cfg.set_state_dir("/var/lib/myagent/agentvault")?;
//! let vault = agentvault::Vault::start(&cfg)?;
//!
//! // Base-URL mode: any HTTP client, no proxy settings, no CA to trust.
//! let base = vault.gateway_url("https://api.openai.com")?; // http://127.0.0.1:PORT
//! println!("OPENAI_BASE_URL={}/v1", base);
//!
//! // Or a stream: plaintext HTTP/1.1 in, verified TLS with the key out.
//! let mut s = vault.open_stream("https://api.openai.com")?;
//! s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\nConnection: close\r\n\r\n")?;
//! let mut resp = String::new();
//! s.read_to_string(&mut resp)?;
//!
//! vault.stop(std::time::Duration::from_secs(5))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Threads
//!
//! The header marks each context function `[any thread]` or `[owner]`
//! (the thread that created the context). The types follow those marks:
//!
//! * [`Vault`] is `Sync`: [`Vault::gateway_url`], [`Vault::open_stream`]
//!   (`av_gateway_open`, `av_open_stream`: `[any thread]`) and the port
//!   getters (values cached at start) take `&self` and may be called from
//!   many threads at once, e.g. with [`std::thread::scope`].
//! * [`Vault`] is **not** `Send`: stopping and freeing it
//!   (`av_ctx_stop`, `av_ctx_free`: `[owner]`) must happen on the thread
//!   that started it, so it cannot be moved to (or dropped on) another
//!   thread:
//!
//! ```compile_fail,E0277
//! fn needs_send<T: Send>() {}
//! needs_send::<agentvault::Vault>();
//! ```
//!
//! * [`Config`] is `Send` but not `Sync` (one thread at a time):
//!
//! ```compile_fail,E0277
//! fn needs_sync<T: Sync>() {}
//! needs_sync::<agentvault::Config>();
//! ```

pub mod ffi;

use std::ffi::{CStr, CString, OsStr};
use std::fmt;
use std::marker::PhantomData;
use std::os::raw::{c_char, c_int};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::FromRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::ptr::{self, NonNull};
use std::time::Duration;

/// The library's error codes (`AV_ERR_*`), as returned by [`Error::code`].
pub mod code {
    use crate::ffi;
    pub const NOMEM: i32 = ffi::AV_ERR_NOMEM;
    pub const INVALID: i32 = ffi::AV_ERR_INVALID;
    pub const IO: i32 = ffi::AV_ERR_IO;
    pub const TLS: i32 = ffi::AV_ERR_TLS;
    pub const PARSE: i32 = ffi::AV_ERR_PARSE;
    pub const LIMIT: i32 = ffi::AV_ERR_LIMIT;
    pub const NOTFOUND: i32 = ffi::AV_ERR_NOTFOUND;
    pub const CONFIG: i32 = ffi::AV_ERR_CONFIG;
    pub const CA: i32 = ffi::AV_ERR_CA;
    pub const VERIFY: i32 = ffi::AV_ERR_VERIFY;
    pub const DENIED: i32 = ffi::AV_ERR_DENIED;
    pub const SSRF: i32 = ffi::AV_ERR_SSRF;
    pub const TIMEOUT: i32 = ffi::AV_ERR_TIMEOUT;
    pub const CLOSED: i32 = ffi::AV_ERR_CLOSED;
    pub const STATE: i32 = ffi::AV_ERR_STATE;
    pub const SECRET: i32 = ffi::AV_ERR_SECRET;
    pub const AUTH: i32 = ffi::AV_ERR_AUTH;
    pub const CORRUPT: i32 = ffi::AV_ERR_CORRUPT;
}

// ---- errors ------------------------------------------------------------------

/// An error from libagentvault: its `AV_ERR_*` code (see [`code`]) and a
/// one-line message (the library's own reason when it gives one, which
/// never contains a secret value).
#[derive(Clone, PartialEq, Eq)]
pub struct Error {
    code: i32,
    message: String,
}

impl Error {
    fn new(code: c_int, message: impl Into<String>) -> Error {
        let mut message = message.into();
        if message.is_empty() {
            message = strerror(code).to_string();
        }
        Error { code, message }
    }

    /// The negative `AV_ERR_*` code.
    pub fn code(&self) -> i32 {
        self.code
    }

    /// The one-line message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// `av_strerror` of the code: a static description ("the configuration
    /// is invalid", ...).
    pub fn description(&self) -> &'static str {
        strerror(self.code)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("code", &self.code)
            .field("message", &self.message)
            .finish()
    }
}

impl std::error::Error for Error {}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::Other, e)
    }
}

/// A `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// `av_strerror`: the static description of an `AV_ERR_*` code.
pub fn strerror(code: i32) -> &'static str {
    // SAFETY: av_strerror never returns NULL and its strings are static.
    unsafe { static_str(ffi::av_strerror(code)) }
}

/// The library version ("0.1.0").
pub fn version() -> &'static str {
    // SAFETY: a static string.
    unsafe { static_str(ffi::av_version_string()) }
}

/// What [`tls_library`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsLibrary {
    /// The shared object that provides the TLS functions the library calls,
    /// as the dynamic linker bound them ("?" when unknown).
    pub path: String,
    /// What the library was built for: "boringssl" or "openssl".
    pub backend: String,
}

/// `av_tls_library`: which TLS library is really in use. A process that
/// also loads its own OpenSSL can check that libagentvault calls the one it
/// was built for.
pub fn tls_library() -> TlsLibrary {
    let mut backend: *const c_char = ptr::null();
    // SAFETY: [any thread]; both strings are static (the path is computed
    // once under pthread_once and never changes).
    let path = unsafe { ffi::av_tls_library(&mut backend) };
    unsafe {
        TlsLibrary {
            path: lossy(path),
            backend: lossy(backend),
        }
    }
}

unsafe fn static_str(p: *const c_char) -> &'static str {
    if p.is_null() {
        return "";
    }
    CStr::from_ptr(p).to_str().unwrap_or("?")
}

unsafe fn lossy(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    CStr::from_ptr(p).to_string_lossy().into_owned()
}

fn cstring(what: &str, s: &[u8]) -> Result<CString> {
    CString::new(s).map_err(|_| Error::new(ffi::AV_ERR_INVALID, format!("{} contains a NUL byte", what)))
}

fn path_cstring(what: &str, p: &Path) -> Result<CString> {
    cstring(what, OsStr::as_bytes(p.as_os_str()))
}

// ---- configuration -------------------------------------------------------------

/// A configuration (`av_config`): the services whose credentials are
/// injected, tokens, gateways, listeners and the state directory. Load it
/// from agentvault.conf text ([`Config::load_file`], [`Config::load_str`])
/// and/or build it section by section ([`Config::add_section`]); see
/// docs/CONFIG.md for every key.
///
/// `Send` but not `Sync`: the C object is used by one thread at a time.
pub struct Config {
    raw: NonNull<ffi::av_config>,
    // !Sync (and av_config_validate may write the error message through
    // a shared reference, like a Cell).
    _not_sync: PhantomData<std::cell::Cell<()>>,
}

// SAFETY: an av_config has no thread affinity; it only must not be used by
// two threads at once, which !Sync and &mut methods guarantee.
unsafe impl Send for Config {}

impl Config {
    /// An empty configuration: no listeners, no services.
    pub fn new() -> Result<Config> {
        let mut raw = ptr::null_mut();
        // SAFETY: out-pointer to a local.
        let rc = unsafe { ffi::av_config_new(&mut raw) };
        match NonNull::new(raw) {
            Some(raw) if rc == ffi::AV_OK => Ok(Config {
                raw,
                _not_sync: PhantomData,
            }),
            _ => Err(Error::new(if rc < 0 { rc } else { ffi::AV_ERR_NOMEM }, "")),
        }
    }

    fn check(&self, rc: c_int) -> Result<()> {
        if rc == ffi::AV_OK {
            Ok(())
        } else {
            Err(Error::new(rc, self.error()))
        }
    }

    /// The last error message of this configuration ("" if none).
    pub fn error(&self) -> String {
        // SAFETY: the string lives in the config; copied before any other
        // call can change it (Config is !Sync).
        unsafe { lossy(ffi::av_config_error(self.raw.as_ptr())) }
    }

    /// Parses an agentvault.conf file, adding to what is already there.
    /// All or nothing: on error nothing changes and the message names the
    /// file and line.
    pub fn load_file<P: AsRef<Path>>(&mut self, path: P) -> Result<()> {
        let p = path_cstring("path", path.as_ref())?;
        // SAFETY: valid config and C string.
        self.check(unsafe { ffi::av_config_load_file(self.raw.as_ptr(), p.as_ptr()) })
    }

    /// Parses configuration text; errors name it "<string>".
    pub fn load_str(&mut self, text: &str) -> Result<()> {
        self.load_str_named(text, "<string>")
    }

    /// Parses configuration text; `origin` names it in error messages.
    pub fn load_str_named(&mut self, text: &str, origin: &str) -> Result<()> {
        let o = cstring("origin", origin.as_bytes())?;
        // SAFETY: text is passed with its length (it need not be
        // NUL-terminated; a NUL inside is rejected by the parser).
        self.check(unsafe {
            ffi::av_config_load_string(
                self.raw.as_ptr(),
                text.as_ptr() as *const c_char,
                text.len(),
                o.as_ptr(),
            )
        })
    }

    /// Adds one section, as if its text had been loaded: `kind` is
    /// "service", "token", "gateway" or "proxy" (then `name` must be "").
    /// Values may not contain line breaks.
    ///
    /// ```no_run
    /// # let mut cfg = agentvault::Config::new().unwrap();
    /// cfg.add_section("service", "anthropic", &[
    ///     ("host", "api.anthropic.com"),
    ///     ("auth", "header x-api-key \"{secret}\""),
    ///     ("secret", "vault:anthropic"),
    /// ])?;
    /// cfg.add_section("proxy", "", &[("unmatched", "deny")])?;
    /// # Ok::<(), agentvault::Error>(())
    /// ```
    pub fn add_section(&mut self, kind: &str, name: &str, keyvals: &[(&str, &str)]) -> Result<()> {
        let k = cstring("section kind", kind.as_bytes())?;
        let n = if kind == "proxy" && name.is_empty() {
            None
        } else {
            Some(cstring("section name", name.as_bytes())?)
        };
        let mut owned = Vec::with_capacity(keyvals.len() * 2);
        for (key, value) in keyvals {
            owned.push(cstring("key", key.as_bytes())?);
            owned.push(cstring(&format!("value of {}", key), value.as_bytes())?);
        }
        let mut ptrs: Vec<*const c_char> = owned.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(ptr::null());
        // SAFETY: every pointer is a live C string; the array is
        // NULL-terminated.
        self.check(unsafe {
            ffi::av_config_add_section(
                self.raw.as_ptr(),
                k.as_ptr(),
                n.as_ref().map_or(ptr::null(), |n| n.as_ptr()),
                ptrs.as_ptr(),
            )
        })
    }

    /// Pins `HOST:PORT` to an address, curl's `--resolve` syntax
    /// (`HOST:PORT:ADDR`, or `HOST:PORT:ADDR:DIALPORT` to dial another
    /// port). Pinned destinations are exempt from the SSRF guard.
    pub fn add_resolve(&mut self, host_port_addr: &str) -> Result<()> {
        let s = cstring("resolve entry", host_port_addr.as_bytes())?;
        // SAFETY: valid config and C string.
        self.check(unsafe { ffi::av_config_add_resolve(self.raw.as_ptr(), s.as_ptr()) })
    }

    /// A PEM file of CA certificates trusted for upstream servers (in
    /// addition to the system roots).
    pub fn set_upstream_cafile<P: AsRef<Path>>(&mut self, path: P) -> Result<()> {
        let p = path_cstring("path", path.as_ref())?;
        // SAFETY: valid config and C string.
        self.check(unsafe { ffi::av_config_set_upstream_cafile(self.raw.as_ptr(), p.as_ptr()) })
    }

    /// The state directory (the CA key and certificate live there). It
    /// must exist or be creatable; a [`Vault`] needs one.
    pub fn set_state_dir<P: AsRef<Path>>(&mut self, dir: P) -> Result<()> {
        let p = path_cstring("path", dir.as_ref())?;
        // SAFETY: valid config and C string.
        self.check(unsafe { ffi::av_config_set_state_dir(self.raw.as_ptr(), p.as_ptr()) })
    }

    /// Adds a forward-proxy listener (`"127.0.0.1:14322"`, port 0 for a
    /// free one). A vault used only through gateways and streams needs none.
    pub fn add_listen(&mut self, addr_port: &str) -> Result<()> {
        let s = cstring("listen address", addr_port.as_bytes())?;
        // SAFETY: valid config and C string.
        self.check(unsafe { ffi::av_config_add_listen(self.raw.as_ptr(), s.as_ptr()) })
    }

    /// Removes every proxy listener.
    pub fn clear_listen(&mut self) -> Result<()> {
        // SAFETY: valid config.
        self.check(unsafe { ffi::av_config_clear_listen(self.raw.as_ptr()) })
    }

    /// Checks the cross-field rules (a service needs a host, an auth and a
    /// secret, ...). [`Vault::start`] does this too.
    pub fn validate(&mut self) -> Result<()> {
        self.validate_shared()
    }

    fn validate_shared(&self) -> Result<()> {
        // SAFETY: av_config_validate only writes the error message; Config
        // is !Sync, so no other thread uses it meanwhile.
        self.check(unsafe { ffi::av_config_validate(self.raw.as_ptr()) })
    }

    /// The number of services.
    pub fn service_count(&self) -> usize {
        // SAFETY: valid config.
        unsafe { ffi::av_config_service_count(self.raw.as_ptr()) }
    }

    /// The number of proxy listeners.
    pub fn listen_count(&self) -> usize {
        // SAFETY: valid config.
        unsafe { ffi::av_config_listen_count(self.raw.as_ptr()) }
    }

    /// The number of `[gateway]` sections.
    pub fn gateway_count(&self) -> usize {
        // SAFETY: valid config.
        unsafe { ffi::av_config_gateway_count(self.raw.as_ptr()) }
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        // SAFETY: owned; freed once. A context copies its configuration.
        unsafe { ffi::av_config_free(self.raw.as_ptr()) }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("services", &self.service_count())
            .field("listen", &self.listen_count())
            .field("gateways", &self.gateway_count())
            .finish()
    }
}

// ---- the running vault -----------------------------------------------------------

/// A running context (`av_ctx`) with its event loop on its own thread
/// (`av_ctx_start`).
///
/// `Sync`, not `Send`: see the [crate documentation](crate#threads).
/// Dropping it stops the loop at once (in-flight exchanges are cut) and
/// frees it; [`Vault::stop`] lets them finish first.
pub struct Vault {
    raw: NonNull<ffi::av_ctx>,
    proxy_ports: Vec<u16>,
    gateway_ports: Vec<u16>,
    // !Send (and, without the impl below, !Sync).
    _owner_thread: PhantomData<*const ()>,
}

// SAFETY: every &self method is either [any thread] in the header
// (av_gateway_open, av_open_stream) or reads values cached in this struct
// on the owner thread before the loop started. The [owner] functions
// (av_ctx_stop, av_ctx_free) need `self` by value or &mut, so they cannot
// run while another thread holds a reference, and !Send keeps them on the
// creating thread.
unsafe impl Sync for Vault {}

impl Vault {
    /// Validates `cfg`, creates a context from a copy of it (loads or
    /// creates the CA in the state directory and binds every listener) and
    /// starts its loop on a new thread. `cfg` may be dropped afterwards.
    pub fn start(cfg: &Config) -> Result<Vault> {
        cfg.validate_shared()?;
        let mut raw = ptr::null_mut();
        let mut err = [0 as c_char; 512];
        // SAFETY: valid config; err is a writable buffer of its length.
        let rc = unsafe { ffi::av_ctx_new(&mut raw, cfg.raw.as_ptr(), err.as_mut_ptr(), err.len()) };
        let raw = match NonNull::new(raw) {
            Some(raw) if rc == ffi::AV_OK => raw,
            _ => {
                // SAFETY: err is NUL-terminated (zeroed, and the library
                // writes with snprintf).
                let msg = unsafe { lossy(err.as_ptr()) };
                return Err(Error::new(if rc < 0 { rc } else { ffi::AV_ERR_STATE }, msg));
            }
        };
        // The ports, read now on the owner thread while the loop is not
        // running (a later reload could replace the configuration they are
        // read from).
        let ports = |f: unsafe extern "C" fn(*const ffi::av_ctx, usize) -> c_int| {
            let mut v = Vec::new();
            loop {
                // SAFETY: valid context; out-of-range gives AV_ERR_NOTFOUND.
                let p = unsafe { f(raw.as_ptr(), v.len()) };
                if p < 0 || v.len() >= 4096 {
                    break;
                }
                v.push(p as u16);
            }
            v
        };
        let vault = Vault {
            raw,
            proxy_ports: ports(ffi::av_ctx_listen_port),
            gateway_ports: ports(ffi::av_ctx_gateway_port),
            _owner_thread: PhantomData,
        };
        // SAFETY: [owner]: this thread created it.
        let rc = unsafe { ffi::av_ctx_start(vault.raw.as_ptr()) };
        if rc != ffi::AV_OK {
            // Drop frees it (av_ctx_stop then fails harmlessly: not started).
            return Err(Error::new(rc, "cannot start the vault thread"));
        }
        Ok(vault)
    }

    /// Opens a gateway to `upstream` (`"https://api.openai.com"`,
    /// `"https://host:port"` or `"http://host:port"`, no path) on an
    /// ephemeral port of 127.0.0.1 and returns its base URL,
    /// `"http://127.0.0.1:PORT"`. Clients send plain HTTP/1.1 (WebSocket
    /// upgrades included) or HTTP/2 with prior knowledge; requests are
    /// matched to the upstream's service, injected and sent over verified
    /// TLS. Only loopback clients are accepted. One gateway per origin:
    /// calls for the same origin return the same URL; it lives until the
    /// vault stops. Any thread.
    pub fn gateway_url(&self, upstream: &str) -> Result<String> {
        let u = cstring("upstream", upstream.as_bytes())?;
        let mut url = [0 as c_char; 64];
        // SAFETY: [any thread]; url is writable and longer than 32 bytes.
        let rc = unsafe { ffi::av_gateway_open(self.raw.as_ptr(), u.as_ptr(), url.as_mut_ptr(), url.len()) };
        if rc != ffi::AV_OK {
            return Err(Error::new(
                rc,
                format!("gateway to {:?}: {}", upstream, strerror(rc)),
            ));
        }
        // SAFETY: NUL-terminated by the library.
        Ok(unsafe { lossy(url.as_ptr()) })
    }

    /// Returns a connected stream socket whose other end the vault serves
    /// as a gateway to `upstream`: write plaintext HTTP/1.1 requests
    /// (keep-alive and WebSocket upgrades included), read the responses;
    /// the library injects the credential and does TLS. Blocking and
    /// close-on-exec; closed when dropped. Any thread.
    pub fn open_stream(&self, upstream: &str) -> Result<UnixStream> {
        let u = cstring("upstream", upstream.as_bytes())?;
        let mut fd: c_int = -1;
        // SAFETY: [any thread]; fd is an out-pointer to a local.
        let rc = unsafe { ffi::av_open_stream(self.raw.as_ptr(), u.as_ptr(), &mut fd) };
        if rc != ffi::AV_OK || fd < 0 {
            let rc = if rc < 0 { rc } else { ffi::AV_ERR_IO };
            return Err(Error::new(
                rc,
                format!("stream to {:?}: {}", upstream, strerror(rc)),
            ));
        }
        // SAFETY: the library hands us the only reference to a fresh
        // AF_UNIX stream socket; UnixStream owns and closes it.
        Ok(unsafe { UnixStream::from_raw_fd(fd) })
    }

    /// The bound port of the first forward-proxy listener, if the
    /// configuration has any (useful with port 0).
    pub fn proxy_port(&self) -> Option<u16> {
        self.proxy_ports.first().copied()
    }

    /// The bound ports of all forward-proxy listeners, in configuration
    /// order.
    pub fn proxy_ports(&self) -> &[u16] {
        &self.proxy_ports
    }

    /// The bound port of the `i`-th `[gateway]` section of the
    /// configuration (not of gateways made with [`Vault::gateway_url`]).
    pub fn gateway_port(&self, i: usize) -> Option<u16> {
        self.gateway_ports.get(i).copied()
    }

    /// Stops the vault: it stops accepting, in-flight exchanges get up to
    /// `drain` to finish, the loop thread is joined, and the context is
    /// freed.
    pub fn stop(self, drain: Duration) -> Result<()> {
        let raw = self.raw;
        std::mem::forget(self);
        // SAFETY: [owner] (Vault is !Send); the loop thread is joined by
        // av_ctx_stop before av_ctx_free runs, and nothing else refers to
        // the context any more.
        let rc = unsafe { ffi::av_ctx_stop(raw.as_ptr(), drain.as_secs_f64()) };
        unsafe { ffi::av_ctx_free(raw.as_ptr()) };
        if rc == ffi::AV_OK {
            Ok(())
        } else {
            Err(Error::new(rc, "the vault was not running"))
        }
    }
}

impl Drop for Vault {
    fn drop(&mut self) {
        // SAFETY: [owner]. Stop (no drain) and join the loop thread first:
        // av_ctx_free on a started context tears connections down before
        // it joins the thread, so the loop must not be running any more.
        unsafe {
            ffi::av_ctx_stop(self.raw.as_ptr(), 0.0);
            ffi::av_ctx_free(self.raw.as_ptr());
        }
    }
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("proxy_ports", &self.proxy_ports)
            .field("gateway_ports", &self.gateway_ports)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strerror_and_version() {
        assert!(!version().is_empty());
        assert_eq!(strerror(0), strerror(ffi::AV_OK));
        assert!(!strerror(code::CONFIG).is_empty());
        assert_ne!(strerror(code::CONFIG), strerror(code::IO));
    }

    #[test]
    fn nul_bytes_are_refused_before_the_library() {
        let mut c = Config::new().unwrap();
        let e = c.add_listen("127.0.0.1:0\0x").unwrap_err();
        assert_eq!(e.code(), code::INVALID);
        assert!(e.message().contains("NUL"), "{}", e);
    }
}

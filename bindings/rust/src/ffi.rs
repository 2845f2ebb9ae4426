//! Raw declarations from `include/agentvault/agentvault.h`: the functions
//! and constants the safe wrapper uses, nothing more. Hand-written (there
//! is no bindgen here); `tests/ffi_header.rs` checks every name and error
//! value against the header.
//!
//! Thread-safety marks are copied from the header: `[any thread]` may be
//! called from any thread at any time between `av_ctx_new` and
//! `av_ctx_free`; `[owner]` only from the thread that created the context,
//! never from a callback on the loop thread. An `av_config` is used by one
//! thread at a time.

#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_double, c_int};

/// Opaque `av_config`.
#[repr(C)]
pub struct av_config {
    _private: [u8; 0],
}

/// Opaque `av_ctx`.
#[repr(C)]
pub struct av_ctx {
    _private: [u8; 0],
}

pub const AV_OK: c_int = 0;
pub const AV_ERR_NOMEM: c_int = -1;
pub const AV_ERR_INVALID: c_int = -2;
pub const AV_ERR_IO: c_int = -3;
pub const AV_ERR_TLS: c_int = -4;
pub const AV_ERR_PARSE: c_int = -5;
pub const AV_ERR_LIMIT: c_int = -6;
pub const AV_ERR_NOTFOUND: c_int = -7;
pub const AV_ERR_CONFIG: c_int = -8;
pub const AV_ERR_DEFERRED: c_int = -9;
pub const AV_ERR_AGAIN: c_int = -10;
pub const AV_ERR_CA: c_int = -11;
pub const AV_ERR_VERIFY: c_int = -12;
pub const AV_ERR_DENIED: c_int = -13;
pub const AV_ERR_SSRF: c_int = -14;
pub const AV_ERR_TIMEOUT: c_int = -15;
pub const AV_ERR_CLOSED: c_int = -16;
pub const AV_ERR_STATE: c_int = -17;
pub const AV_ERR_SECRET: c_int = -18;
pub const AV_ERR_AUTH: c_int = -19;
pub const AV_ERR_CORRUPT: c_int = -20;

extern "C" {
    // ---- errors and versions
    pub fn av_strerror(err: c_int) -> *const c_char;
    pub fn av_version_string() -> *const c_char;
    /// `[any thread]`
    pub fn av_tls_library(backend: *mut *const c_char) -> *const c_char;

    // ---- configuration (one thread at a time)
    pub fn av_config_new(out: *mut *mut av_config) -> c_int;
    pub fn av_config_free(cfg: *mut av_config);
    pub fn av_config_load_file(cfg: *mut av_config, path: *const c_char) -> c_int;
    pub fn av_config_load_string(
        cfg: *mut av_config,
        text: *const c_char,
        len: usize,
        origin: *const c_char,
    ) -> c_int;
    pub fn av_config_error(cfg: *const av_config) -> *const c_char;
    pub fn av_config_add_listen(cfg: *mut av_config, addr_port: *const c_char) -> c_int;
    pub fn av_config_clear_listen(cfg: *mut av_config) -> c_int;
    pub fn av_config_set_state_dir(cfg: *mut av_config, dir: *const c_char) -> c_int;
    pub fn av_config_add_resolve(cfg: *mut av_config, host_port_addr: *const c_char) -> c_int;
    pub fn av_config_set_upstream_cafile(cfg: *mut av_config, path: *const c_char) -> c_int;
    pub fn av_config_validate(cfg: *mut av_config) -> c_int;
    pub fn av_config_listen_count(cfg: *const av_config) -> usize;
    pub fn av_config_service_count(cfg: *const av_config) -> usize;
    pub fn av_config_gateway_count(cfg: *const av_config) -> usize;
    /// `keyvals`: NULL-terminated key, value, key, value, ...
    pub fn av_config_add_section(
        cfg: *mut av_config,
        kind: *const c_char,
        name: *const c_char,
        keyvals: *const *const c_char,
    ) -> c_int;

    // ---- context
    /// `[owner]`
    pub fn av_ctx_new(
        out: *mut *mut av_ctx,
        cfg: *const av_config,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    /// `[owner]`
    pub fn av_ctx_free(ctx: *mut av_ctx);
    pub fn av_ctx_listen_port(ctx: *const av_ctx, i: usize) -> c_int;
    pub fn av_ctx_gateway_port(ctx: *const av_ctx, i: usize) -> c_int;
    /// `[owner]`
    pub fn av_ctx_start(ctx: *mut av_ctx) -> c_int;
    /// `[owner]`
    pub fn av_ctx_stop(ctx: *mut av_ctx, drain_seconds: c_double) -> c_int;
    /// `[any thread]` (and async-signal-safe)
    pub fn av_ctx_shutdown(ctx: *mut av_ctx, drain_seconds: c_double);
    /// `[any thread]`; `url_len` >= 32
    pub fn av_gateway_open(
        ctx: *mut av_ctx,
        upstream: *const c_char,
        url: *mut c_char,
        url_len: usize,
    ) -> c_int;
    /// `[any thread]`
    pub fn av_open_stream(ctx: *mut av_ctx, upstream: *const c_char, fd_out: *mut c_int) -> c_int;
}

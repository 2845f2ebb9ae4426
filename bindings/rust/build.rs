//! Finds libagentvault.so for linking and sets an rpath so that test and
//! example binaries run without LD_LIBRARY_PATH.
//!
//! 1. `AGENTVAULT_LIB_DIR`: a directory holding `libagentvault.so` (for
//!    example `BUILD_DIR/libagentvault` of a meson build);
//! 2. otherwise `pkg-config --libs agentvault` (the `pkg-config` program,
//!    run directly; `PKG_CONFIG` names another one).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=AGENTVAULT_LIB_DIR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_LIBDIR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_SYSROOT_DIR");
    println!("cargo:rerun-if-changed=build.rs");

    let dirs = match env::var_os("AGENTVAULT_LIB_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            let dir = dir.canonicalize().unwrap_or(dir);
            if !dir.join("libagentvault.so").exists() {
                panic!(
                    "AGENTVAULT_LIB_DIR={}: no libagentvault.so there (build the library with meson first)",
                    dir.display()
                );
            }
            println!("cargo:rerun-if-changed={}", dir.join("libagentvault.so").display());
            vec![dir]
        }
        _ => from_pkg_config(),
    };
    for dir in &dirs {
        println!("cargo:rustc-link-search=native={}", dir.display());
        // Test, example and binary targets find the library where it was
        // found at build time.
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    }
    println!("cargo:rustc-link-lib=dylib=agentvault");
    if let Some(dir) = dirs.first() {
        // For crates that depend on this one (DEP_AGENTVAULT_LIB_DIR).
        println!("cargo:lib_dir={}", dir.display());
    }
}

/// The -L directories of `pkg-config --libs agentvault` (or its libdir
/// variable when the flags name none, e.g. /usr/lib/<multiarch>).
fn from_pkg_config() -> Vec<PathBuf> {
    let prog = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".to_string());
    let run = |args: &[&str]| -> Result<String, String> {
        let out = Command::new(&prog)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {}: {}", prog, e))?;
        if !out.status.success() {
            return Err(format!(
                "{} {} failed: {}",
                prog,
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let libs = run(&["--libs", "agentvault"]).unwrap_or_else(|e| {
        panic!(
            "libagentvault not found: set AGENTVAULT_LIB_DIR to the directory holding \
             libagentvault.so, or make `pkg-config agentvault` work (PKG_CONFIG_PATH): {}",
            e
        )
    });
    let mut dirs: Vec<PathBuf> = libs
        .split_whitespace()
        .filter_map(|f| f.strip_prefix("-L"))
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect();
    if dirs.is_empty() {
        if let Ok(libdir) = run(&["--variable=libdir", "agentvault"]) {
            if !libdir.is_empty() && Path::new(&libdir).is_dir() {
                dirs.push(PathBuf::from(libdir));
            }
        }
    }
    dirs
}

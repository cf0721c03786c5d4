//! Compiles the CRIU-compatible image schema in `proto/` into Rust types.
//!
//! protox parses the .proto files in pure Rust (no `protoc` needed) and
//! prost-build generates `$OUT_DIR/criu.rs` from the resulting descriptor set.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");

    let proto_dir = Path::new("proto");
    let mut files: Vec<PathBuf> = std::fs::read_dir(proto_dir)
        .expect("read engine/proto")
        .map(|e| e.expect("read engine/proto entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let fds = match protox::compile(&files, [proto_dir]) {
        Ok(fds) => fds,
        Err(e) => panic!("protox failed to compile engine/proto: {e:?}"),
    };

    let mut config = prost_build::Config::new();
    config
        .compile_fds(fds)
        .expect("prost-build code generation");
}

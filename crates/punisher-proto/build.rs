//! Compiles `proto/punisher/v1/*.proto` with protox (pure Rust: no `protoc` needed on a
//! fresh machine) and generates the prost messages and tonic services.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not baked in with env!: cargo may reuse this build script's binary
    // for a checkout at another path (a fresh CI clone beside a shared target directory).
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = ["punisher/v1/agent.proto", "punisher/v1/admin.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files, [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Reports, snapshots and views are cloned to many streams: `Bytes` clones are cheap.
        .bytes(".")
        // Deterministic order for maps (bundles, env) in logs and tests.
        .btree_map(".")
        .compile_fds(fds)?;
    Ok(())
}

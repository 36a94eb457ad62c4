//! Compiles `proto/punisher/v1/*.proto` with protox (pure Rust: no `protoc` needed on a
//! fresh machine) and generates the prost messages and tonic services.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
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

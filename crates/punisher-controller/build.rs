//! Records the target triple this controller is built for: `GET /agent/<triple>` serves the
//! running binary itself for it when no directory of agent binaries is given.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    println!("cargo:rustc-env=PUNISHER_BUILD_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}

//! Generates the Rust types for every file under `proto/` with protox (no system protoc),
//! and writes the encoded descriptor set that server reflection serves.

use std::path::PathBuf;

use prost::Message;

fn main() -> anyhow::Result<()> {
    // Read when the script runs, not when it was compiled: a target directory shared by two
    // checkouts reuses one compiled script, which must read the proto files of the checkout
    // being built.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files: Vec<PathBuf> = [
        "pim/common/v1/common.proto",
        "pim/identity/v1/identity.proto",
        "pim/assignment/v1/assignment.proto",
        "pim/approval/v1/approval.proto",
        "pim/alerting/v1/alerting.proto",
        "pim/audit/v1/audit.proto",
        "pim/events/v1/envelope.proto",
        "pim/events/v1/identity.proto",
        "pim/events/v1/assignment.proto",
        "pim/events/v1/approval.proto",
        "pim/events/v1/alerting.proto",
        "pim/events/v1/audit.proto",
    ]
    .iter()
    .map(|f| root.join(f))
    .collect();
    // Each file, not the directory: a directory's time changes only when entries come or go.
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("pim_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // RPCs that later issues implement answer UNIMPLEMENTED instead of failing to compile.
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}

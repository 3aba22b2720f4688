//! Compiles the .proto files with protox (pure Rust), so no protoc is needed on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/sluice/v1/common.proto",
        "proto/sluice/v1/producer.proto",
        "proto/sluice/v1/consumer.proto",
        "proto/sluice/v1/admin.proto",
        "proto/sluice/v1/groups.proto",
        "proto/sluice/v1/auth.proto",
        "proto/sluice/internal/v1/raft.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    // Kept for tests that enumerate every method (the authorization rules cover them all).
    let out = std::env::var("OUT_DIR")?;
    std::fs::write(
        std::path::Path::new(&out).join("descriptors.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    // Record batches and Raft payloads are `bytes::Bytes`: passed through, never copied per record.
    tonic_prost_build::configure()
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}

//! Compiles the internal gRPC services with a pure-Rust protobuf compiler (no system `protoc`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/relay.proto", "proto/registry.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}

//! Compiles the `.proto` files under `proto/` with the `protoc` shipped in the
//! `protoc-bin-vendored` crate, so a fresh machine needs no system protobuf compiler.
//! Message types always; the services' gRPC code (tonic) only with the `grpc` feature.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build reads PROTOC; a build script is single-threaded, so setting it here is sound.
    std::env::set_var("PROTOC", protoc);
    let mut config = prost_build::Config::new();
    config.bytes([
        // The daemon encodes and decodes object chunks itself; generated clients and
        // servers (tests) then share a chunk's bytes instead of copying them.
        ".rayd.objectmanager.v1.ObjectChunk.payload",
        // A small result is kept by the raylet and sent on to drivers: copies share bytes.
        ".rayd.raylet.v1.InlineObject",
    ]);
    let protos = [
        "proto/rayd/common/v1/task.proto",
        "proto/rayd/globalscheduler/v1/global_scheduler.proto",
        "proto/rayd/nodemanager/v1/node_manager.proto",
        "proto/rayd/objectmanager/v1/object_manager.proto",
        "proto/rayd/plasma/v1/plasma.proto",
        "proto/rayd/raylet/v1/raylet.proto",
    ];
    #[cfg(feature = "grpc")]
    tonic_prost_build::configure().compile_with_config(config, &protos, &["proto"])?;
    #[cfg(not(feature = "grpc"))]
    config
        .type_attribute(".", "#[allow(clippy::all)]")
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}

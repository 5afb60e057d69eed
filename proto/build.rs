//! Generates the Observer API's Rust code from `proto/**/*.proto` with
//! protox (a protobuf compiler in Rust: no `protoc` to install) and
//! tonic-prost-build, and writes the file descriptor set that gRPC
//! reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/flow/flow.proto",
        "proto/observer/observer.proto",
        "proto/relay/relay.proto",
        "proto/weir/flow_details.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("observer_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds.clone())?;
    // A second Observer server whose GetFlows streams flows already
    // encoded (`crate::encoded::EncodedResponse`): the agent encodes each
    // flow once and every client's stream shares the bytes. Every message
    // is the one generated above; only the service is generated here.
    let encoded = out.join("encoded");
    std::fs::create_dir_all(&encoded)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .out_dir(&encoded)
        .extern_path(".flow", "crate::flow")
        .extern_path(".relay", "crate::relay")
        .extern_path(".weir", "crate::weir")
        .extern_path(".observer", "crate::observer")
        .extern_path(".observer.GetFlowsResponse", "crate::encoded::EncodedResponse")
        .compile_fds(fds)?;
    // OTLP's logs service, for flow export: a client only, kept out of
    // the descriptor set the Observer API's reflection serves.
    let otlp = "proto/otlp/logs.proto";
    println!("cargo:rerun-if-changed={otlp}");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(protox::compile([otlp], ["proto"])?)?;
    Ok(())
}

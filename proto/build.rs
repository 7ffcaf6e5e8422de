//! Compiles the protos with protox (pure Rust, no protoc binary needed) and
//! generates tonic + prost code for them.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "vantage/v1/probe.proto",
        "vantage/v1/agent.proto",
        "vantage/v1/control.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}

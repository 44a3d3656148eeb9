//! Compiles `proto/guruconnect.proto` with protox (pure Rust), so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = "../../proto";
    let file = format!("{proto_dir}/guruconnect.proto");
    println!("cargo:rerun-if-changed={file}");
    let descriptors = protox::compile([file.as_str()], [proto_dir])?;
    prost_build::Config::new()
        // Frame payloads decode without copying out of the received buffer.
        .bytes([
            ".guruconnect.v1.VideoFrame.data",
            ".guruconnect.v1.CursorShape.rgba",
        ])
        .compile_fds(descriptors)?;
    Ok(())
}

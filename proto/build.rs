fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protoc comes from the protoc-bin-vendored crate: nothing is downloaded or required on PATH.
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the environment here.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    println!("cargo:rerun-if-changed=conclave/v1/conclave.proto");
    // Our codec: prost's, with undecodable requests refused as INVALID_ARGUMENT.
    tonic_prost_build::configure()
        .codec_path("crate::codec::ConclaveCodec")
        .compile_protos(&["conclave/v1/conclave.proto"], &["."])?;
    Ok(())
}

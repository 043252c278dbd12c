//! Build-script helper that links libtorch so Conclave's binaries and test executables run
//! directly, on a CPU-only machine or on a CUDA one, without the user setting
//! `LD_LIBRARY_PATH`.
//!
//! `torch-sys` tells the linker where libtorch is but adds no run-time search path, and the
//! linker's `--as-needed` default drops `libtorch_cuda.so` (nothing references its symbols
//! directly; it registers the CUDA backend when loaded), so CUDA would never be found. Call
//! [`link_libtorch`] from the `build.rs` of every crate that links an executable using tch; the
//! crate must depend on `torch-sys` directly so Cargo hands it `DEP_TCH_LIBTORCH_LIB`.

use std::path::PathBuf;

/// Emits the linker arguments: an rpath to libtorch's lib directory, and `libtorch_cuda`
/// linked unconditionally when the libtorch build has it.
pub fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Some(dir) = std::env::var_os("DEP_TCH_LIBTORCH_LIB").map(PathBuf::from) else {
        println!(
            "cargo:warning=DEP_TCH_LIBTORCH_LIB is not set: add torch-sys as a direct dependency"
        );
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
    if dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

//! Rebuild when bpf-linker changes (as aya-template does), and let LLVM expand constant-size
//! memset/memcpy into stores: bpf-linker's default (`--bpf-expand-memcpy-in-order`) leaves every
//! memset a BPF-to-BPF call into a byte loop, one for each struct literal with zeroed fields.
use which::which;

fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
}

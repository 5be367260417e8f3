//! The eBPF object as built: no program calls the compiler's memory builtins. With bpf-linker's
//! default (`--bpf-expand-memcpy-in-order`) every struct literal with zeroed fields became a
//! BPF-to-BPF call into a byte-at-a-time `memset` (64 of them, two in each FIB lookup);
//! `masq-ebpf/build.rs` turns that off so LLVM writes them as stores.
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget};

const BUILTINS: &[&str] = &["memset", "memcpy", "memmove", "memcmp", "bcmp"];

#[test]
fn the_programs_call_no_memory_builtins() {
    let image = masq_user::dataplane::EBPF_OBJECT;
    assert!(!image.is_empty(), "the eBPF object was not built (AYA_BUILD_SKIP set?)");
    let file = object::File::parse(image).expect("the eBPF object parses as ELF");
    let mut calls: Vec<String> = Vec::new();
    let mut sections = 0;
    for section in file.sections() {
        sections += 1;
        let section_name = section.name().unwrap_or("?").to_string();
        for (offset, reloc) in section.relocations() {
            let RelocationTarget::Symbol(index) = reloc.target() else { continue };
            let Ok(symbol) = file.symbol_by_index(index) else { continue };
            let name = symbol.name().unwrap_or("");
            if BUILTINS.contains(&name) {
                calls.push(format!("{section_name}+{offset:#x} -> {name}"));
            }
        }
    }
    assert!(sections > 10, "only {sections} sections: not masq's object");
    assert!(calls.is_empty(), "{} calls of memory builtins:\n{}", calls.len(), calls.join("\n"));
}

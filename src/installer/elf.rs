//! Is a file a static executable for the target? The installer's `/init` runs before anything
//! else exists in the initramfs: no dynamic loader, no libraries. An ELF executable without a
//! `PT_INTERP` program header (no interpreter) is static, whether position-dependent
//! (`ET_EXEC`) or a static PIE (`ET_DYN`); Linux then starts it directly.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::talos::Arch;

/// `e_machine` of x86-64.
pub const EM_X86_64: u16 = 62;
/// `e_machine` of AArch64.
pub const EM_AARCH64: u16 = 183;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;
const PT_LOAD: u32 = 1;
const PT_INTERP: u32 = 3;
/// More program headers than this is not an executable anyone built.
const MAX_PHDRS: u16 = 512;

/// What the ELF headers say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfInfo {
    pub machine: u16,
    /// The dynamic loader named by `PT_INTERP`, if any: such a binary is dynamically linked.
    pub interpreter: Option<String>,
}

/// The ELF `e_machine` of an architecture.
pub fn machine_of(arch: Arch) -> u16 {
    match arch {
        Arch::Amd64 => EM_X86_64,
        Arch::Arm64 => EM_AARCH64,
    }
}

/// Read the headers of a 64-bit little-endian ELF executable. The error says what the file is
/// not (for a message that also names the file and the field).
pub fn read(file: &File) -> Result<ElfInfo, String> {
    let len = file
        .metadata()
        .map_err(|e| format!("cannot read it: {e}"))?
        .len();
    let at = |off: u64, n: usize| -> Result<Vec<u8>, String> {
        let mut b = vec![0u8; n];
        match off.checked_add(n as u64) {
            Some(end) if end <= len => {}
            _ => {
                return Err(format!(
                    "it is truncated ({len} bytes; headers reach past the end)"
                ))
            }
        }
        file.read_exact_at(&mut b, off)
            .map_err(|e| format!("cannot read it: {e}"))?;
        Ok(b)
    };
    let h = at(0, 64).map_err(|_| "it is not an ELF executable (too short)".to_string())?;
    if &h[..4] != b"\x7fELF" {
        return Err(format!(
            "it is not an ELF executable (it starts with {})",
            hex::encode(&h[..4])
        ));
    }
    if h[4] != 2 || h[5] != 1 {
        return Err("it is not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let e_type = u16_at(&h, 16);
    if e_type != ET_EXEC && e_type != ET_DYN {
        return Err(format!(
            "it is not an executable (ELF type {e_type}; a relocatable object or core file?)"
        ));
    }
    let machine = u16_at(&h, 18);
    let phoff = u64_at(&h, 32);
    let phentsize = u16_at(&h, 54);
    let phnum = u16_at(&h, 56);
    if phentsize < 56 || phnum == 0 || phnum > MAX_PHDRS {
        return Err(format!(
            "its program headers are not an executable's ({phnum} of {phentsize} bytes)"
        ));
    }
    let table = at(phoff, usize::from(phentsize) * usize::from(phnum))?;
    let mut loads = 0;
    let mut interpreter = None;
    for i in 0..usize::from(phnum) {
        let p = &table[i * usize::from(phentsize)..];
        match u32_at(p, 0) {
            PT_LOAD => loads += 1,
            PT_INTERP => {
                let off = u64_at(p, 8);
                let size = u64_at(p, 32).min(4096) as usize;
                let text = at(off, size).unwrap_or_default();
                let end = text.iter().position(|&c| c == 0).unwrap_or(text.len());
                interpreter = Some(String::from_utf8_lossy(&text[..end]).into_owned());
            }
            _ => {}
        }
    }
    if loads == 0 {
        return Err("it has no loadable segment: it is not an executable".into());
    }
    Ok(ElfInfo {
        machine,
        interpreter,
    })
}

/// A minimal ELF64 executable for tests and fixtures: one `PT_LOAD` segment whose code exits
/// with status 0 on x86-64 (`mov eax, 60; xor edi, edi; syscall`), plus a `PT_INTERP` naming
/// `interpreter` when given (then it is "dynamically linked"). `machine` is the `e_machine`.
pub fn tiny_executable(machine: u16, interpreter: Option<&str>) -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    let code: [u8; 9] = [0xb8, 0x3c, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05];
    let phnum: u16 = if interpreter.is_some() { 2 } else { 1 };
    let headers = 64 + 56 * u64::from(phnum);
    let interp: Vec<u8> = interpreter
        .map(|s| [s.as_bytes(), &[0]].concat())
        .unwrap_or_default();
    let interp_off = headers;
    let code_off = headers + interp.len() as u64;
    let total = code_off + code.len() as u64;
    let mut b = Vec::with_capacity(total as usize);
    b.extend_from_slice(b"\x7fELF");
    b.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, version 1, System V
    b.extend_from_slice(&[0u8; 8]);
    b.extend_from_slice(&ET_EXEC.to_le_bytes());
    b.extend_from_slice(&machine.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes()); // e_version
    b.extend_from_slice(&(BASE + code_off).to_le_bytes()); // e_entry
    b.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    b.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    b.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    b.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    b.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    b.extend_from_slice(&phnum.to_le_bytes());
    b.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    b.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    b.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    let phdr = |b: &mut Vec<u8>, kind: u32, flags: u32, off: u64, len: u64, align: u64| {
        b.extend_from_slice(&kind.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&off.to_le_bytes());
        b.extend_from_slice(&(BASE + off).to_le_bytes()); // p_vaddr
        b.extend_from_slice(&(BASE + off).to_le_bytes()); // p_paddr
        b.extend_from_slice(&len.to_le_bytes()); // p_filesz
        b.extend_from_slice(&len.to_le_bytes()); // p_memsz
        b.extend_from_slice(&align.to_le_bytes());
    };
    if interpreter.is_some() {
        phdr(&mut b, PT_INTERP, 4, interp_off, interp.len() as u64, 1);
    }
    phdr(&mut b, PT_LOAD, 5, 0, total, 0x1000);
    b.extend_from_slice(&interp);
    b.extend_from_slice(&code);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_of(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn static_and_dynamic_executables() {
        let s = read(&file_of(&tiny_executable(EM_X86_64, None))).unwrap();
        assert_eq!(
            s,
            ElfInfo {
                machine: EM_X86_64,
                interpreter: None
            }
        );
        let d = read(&file_of(&tiny_executable(
            EM_AARCH64,
            Some("/lib/ld-linux-aarch64.so.1"),
        )))
        .unwrap();
        assert_eq!(d.machine, EM_AARCH64);
        assert_eq!(d.interpreter.as_deref(), Some("/lib/ld-linux-aarch64.so.1"));
    }

    #[test]
    fn the_tiny_executable_runs() {
        let exe = tiny_executable(EM_X86_64, None);
        assert_eq!(exe.len(), 129);
        if !cfg!(all(target_arch = "x86_64", target_os = "linux")) {
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tiny");
        std::fs::write(&p, &exe).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        match std::process::Command::new(&p).status() {
            Ok(s) => assert!(s.success(), "{s}"),
            // A noexec temporary directory: nothing to learn here.
            Err(e) => println!("SKIPPED: cannot run {}: {e}", p.display()),
        }
    }

    #[test]
    fn the_running_test_binary_is_read() {
        // Whatever its linking, the test executable itself is an ELF for this machine.
        let exe = std::env::current_exe().unwrap();
        let info = read(&File::open(exe).unwrap()).unwrap();
        if cfg!(target_arch = "x86_64") {
            assert_eq!(info.machine, EM_X86_64);
        }
    }

    #[test]
    fn not_executables_are_refused_without_panics() {
        let e = read(&file_of(b"#!/bin/sh\necho hi\n")).unwrap_err();
        assert!(e.contains("too short") || e.contains("not an ELF"), "{e}");
        let e = read(&file_of(&[b"MZ".as_slice(), &[0u8; 100]].concat())).unwrap_err();
        assert!(e.contains("starts with 4d5a0000"), "{e}");
        let good = tiny_executable(EM_X86_64, None);
        // Every truncation and every single-byte corruption is an answer, never a panic.
        for n in 0..good.len() {
            let _ = read(&file_of(&good[..n]));
        }
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0xff;
            let _ = read(&file_of(&b));
        }
        let mut obj = good.clone();
        obj[16] = 1; // ET_REL
        assert!(read(&file_of(&obj))
            .unwrap_err()
            .contains("not an executable"));
    }
}

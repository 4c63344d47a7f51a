//! Kernel symbol addresses from `/proc/kallsyms`.
//!
//! The `timer:timer_expire_entry` hook recognises a timewait socket's timer by its handler,
//! `tw_timer_handler` (a static function, so no BTF or tracepoint names its address). The file
//! lists `ADDRESS TYPE NAME [MODULE]` per line; without privilege, or with
//! `kernel.kptr_restrict` = 2, every address reads as 0, and without `CONFIG_KALLSYMS` the file
//! does not exist.

use std::io::{self, BufRead, BufReader};
use std::path::Path;

pub const KALLSYMS: &str = "/proc/kallsyms";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KallsymsError {
    #[error("cannot read {KALLSYMS}: {0} (is the kernel built with CONFIG_KALLSYMS?)")]
    Read(String),
    #[error("`{0}` is not in {KALLSYMS}")]
    Missing(String),
    #[error(
        "{KALLSYMS} shows `{0}` at address 0: addresses are hidden (kernel.kptr_restrict, or \
         missing CAP_SYSLOG)"
    )]
    Hidden(String),
    #[error("{KALLSYMS} has {1} different addresses for `{0}`")]
    Ambiguous(String, usize),
}

/// The address of the kernel (not module) text symbol `name`.
pub fn kernel_symbol(name: &str) -> Result<u64, KallsymsError> {
    let file =
        std::fs::File::open(Path::new(KALLSYMS)).map_err(|e| KallsymsError::Read(e.to_string()))?;
    find_symbol(BufReader::new(file), name)
}

/// Looks `name` up in kallsyms text. Only text symbols (`t`/`T`) of the kernel proper count;
/// two different addresses for one name (two static functions of that name) are an error rather
/// than a guess.
pub fn find_symbol(mut text: impl BufRead, name: &str) -> Result<u64, KallsymsError> {
    let mut found: Vec<u64> = Vec::new();
    // A line is read into one reused buffer and skipped unless it ends with the name: the file
    // has ~150,000 lines, and a String and a split per line cost a second in a debug build
    // under emulation (the VM tests start tcptrace a hundred times).
    let mut raw = Vec::new();
    loop {
        raw.clear();
        let n = text
            .read_until(b'\n', &mut raw)
            .map_err(|e: io::Error| KallsymsError::Read(e.to_string()))?;
        if n == 0 {
            break;
        }
        let trimmed = raw.trim_ascii_end();
        if !trimmed.ends_with(name.as_bytes()) {
            continue;
        }
        let Ok(line) = std::str::from_utf8(trimmed) else {
            continue;
        };
        let mut parts = line.split_ascii_whitespace();
        let (Some(addr), Some(kind), Some(sym)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if sym != name || parts.next().is_some() || !matches!(kind, "t" | "T") {
            continue;
        }
        let Ok(addr) = u64::from_str_radix(addr, 16) else {
            continue;
        };
        if !found.contains(&addr) {
            found.push(addr);
        }
    }
    match found.as_slice() {
        [] => Err(KallsymsError::Missing(name.to_owned())),
        [0] => Err(KallsymsError::Hidden(name.to_owned())),
        [a] => Ok(*a),
        many => Err(KallsymsError::Ambiguous(name.to_owned(), many.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
ffffffff81000000 T _text
ffffffff820089f0 t tw_timer_handler
ffffffff82008a40 t inet_twsk_kill
ffffffffc0001000 t tw_timer_handler\t[some_module]
ffffffff83000000 d tw_timer_handler_data
";

    #[test]
    fn finds_the_kernel_text_symbol_only() {
        assert_eq!(
            find_symbol(TEXT.as_bytes(), "tw_timer_handler"),
            Ok(0xffffffff820089f0)
        );
        assert_eq!(
            find_symbol(TEXT.as_bytes(), "tw_timer"),
            Err(KallsymsError::Missing("tw_timer".into()))
        );
    }

    #[test]
    fn hidden_and_ambiguous_addresses_are_errors() {
        let hidden = "0000000000000000 t tw_timer_handler\n0000000000000000 T _text\n";
        assert_eq!(
            find_symbol(hidden.as_bytes(), "tw_timer_handler"),
            Err(KallsymsError::Hidden("tw_timer_handler".into()))
        );
        let two = "ffffffff820089f0 t f\nffffffff820089f0 t f\nffffffff82100000 t f\n";
        assert_eq!(
            find_symbol(two.as_bytes(), "f"),
            Err(KallsymsError::Ambiguous("f".into(), 2))
        );
        assert!(find_symbol("garbage\n\nzz t f\n".as_bytes(), "f").is_err());
    }

    /// The test machines run as root with kallsyms readable; the handler is there.
    #[test]
    fn running_kernel_has_tw_timer_handler() {
        let a = kernel_symbol("tw_timer_handler").expect("tw_timer_handler in /proc/kallsyms");
        assert!(a >= 0xffff_0000_0000_0000, "{a:#x}");
    }
}

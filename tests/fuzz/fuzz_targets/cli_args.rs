//! Whole command lines: every flag of every command. Malformed arguments are usage errors
//! (exit code 2); help and version exit 0; nothing panics.
#![no_main]

use clap::Parser;
use libfuzzer_sys::fuzz_target;
use tcptrace::cli::Cli;

fuzz_target!(|s: &str| {
    // NUL separates arguments, so arguments may hold spaces.
    let args = std::iter::once("tcptrace").chain(s.split('\0'));
    if let Err(e) = Cli::try_parse_from(args) {
        let code = e.exit_code();
        assert!(code == 2 || code == 0, "exit code {code} for {s:?}: {e}");
    }
});

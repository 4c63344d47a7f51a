//! Text that processes choose for themselves (comm via `prctl(PR_SET_NAME)`, cmdline, and what
//! a recording file says) made inert for a terminal: every text view passes such strings
//! through here, so a process named `"\x1b[2Jevil\x07"` cannot clear the operator's screen,
//! ring the bell, retitle the window or reorder what a line shows.
//!
//! JSON output needs none of this: JSON escapes control characters itself.

use std::borrow::Cow;

/// Shown instead of a character a terminal would act on.
pub const REPLACEMENT: char = '?';

/// Characters a terminal acts on rather than shows: the C0 and C1 controls and DEL (`ESC`,
/// `BEL`, `CR`, `\n`, `0x9b` CSI, ...), and the Unicode bidirectional controls, which reorder
/// the rest of the line as displayed ("Trojan Source", CVE-2021-42574).
#[inline]
pub fn is_inert(c: char) -> bool {
    !(c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        ))
}

/// `s` with every character a terminal would act on replaced by `?`; borrowed when there is
/// none, which is the usual case.
pub fn printable(s: &str) -> Cow<'_, str> {
    // Printable ASCII needs no look at characters: one pass over the bytes.
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) || s.chars().all(is_inert) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| if is_inert(c) { c } else { REPLACEMENT })
            .collect(),
    )
}

/// [`printable`] as an owned `String`, for cells and `format!` arguments.
pub fn printable_owned(s: String) -> String {
    match printable(&s) {
        Cow::Borrowed(_) => s,
        Cow::Owned(clean) => clean,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_neutralised() {
        assert_eq!(printable("a\x1b[2Jb\n"), "a?[2Jb?");
        assert_eq!(printable("\x1b[2Jevil\x07"), "?[2Jevil?");
        // DEL, a C1 CSI, a bidi override; tabs and carriage returns too.
        assert_eq!(printable("x\u{7f}\u{9b}2J\u{202e}y\tz\r"), "x??2J?y?z?");
    }

    #[test]
    fn clean_text_is_borrowed_unchanged() {
        for s in [
            "tcpscenario",
            "kworker/0:1H",
            "python3",
            "nginx: worker",
            "naïve-日本",
        ] {
            assert!(matches!(printable(s), Cow::Borrowed(b) if b == s), "{s}");
        }
    }
}

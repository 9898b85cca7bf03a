//! Terminal safety: every string that comes from the target or a peer
//! (thread and process names, QMP strings, console text, notes) goes through
//! [`for_terminal`] before it reaches stderr or the status line, so a process
//! that names itself `\e]0;pwned\a` cannot drive the user's terminal.

use std::borrow::Cow;
use std::fmt::Write;

/// `text` with every control character (C0, DEL, C1, and the Unicode
/// bidi/format controls that reorder what a terminal shows) replaced by a
/// visible escape: `\e`, `\a`, `\r`, `\n`, `\t`, `\0`, `\\`, else `\u{..}`.
/// A backslash is doubled so an escape cannot be faked.
pub fn for_terminal(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\x1b' => out.push_str("\\e"),
            '\x07' => out.push_str("\\a"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            '\\' => out.push_str("\\\\"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || c == '\\'
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(
            for_terminal("qemu-system-x86 µs"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn control_bytes_are_shown_not_sent() {
        assert_eq!(for_terminal("\x1b]0;pwned\x07"), "\\e]0;pwned\\a");
        assert_eq!(for_terminal("a\rb\0c\nd\te"), "a\\rb\\0c\\nd\\te");
        assert_eq!(for_terminal("\x7f\u{9b}31m"), "\\u{7f}\\u{9b}31m");
        assert_eq!(for_terminal("rtl\u{202e}txt"), "rtl\\u{202e}txt");
        assert_eq!(for_terminal("back\\e"), "back\\\\e");
    }

    #[test]
    fn nothing_escaped_contains_a_control_character() {
        for b in 0u8..=255 {
            let s = String::from_utf8_lossy(&[b'x', b, b'y']).into_owned();
            let shown = for_terminal(&s);
            assert!(
                !shown.chars().any(char::is_control),
                "byte {b:#x} came through as {shown:?}"
            );
        }
    }
}

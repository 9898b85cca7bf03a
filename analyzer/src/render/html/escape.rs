//! Escaping for HTML element content and quoted attribute values: every
//! string from a trace or a guest log goes through [`escape`] before it
//! reaches the page (ARCHITECTURE.md, "Safety rules").

/// Escapes text for HTML element content and quoted attribute values (also
/// inside inline SVG).
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => o.push('\u{fffd}'),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>alert("x&'y")</script>"#),
            "&lt;script&gt;alert(&quot;x&amp;&#39;y&quot;)&lt;/script&gt;"
        );
        assert_eq!(escape("CPU 0/TCG"), "CPU 0/TCG");
        assert_eq!(
            escape("a\u{1b}[2J\u{7}\0\u{9b}b"),
            "a\u{fffd}[2J\u{fffd}\u{fffd}\u{fffd}b"
        );
    }
}

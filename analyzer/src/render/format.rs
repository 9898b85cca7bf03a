//! Number formatting shared by the text, markdown and HTML renderers.

/// A figure with 3 significant-ish digits (`1234`, `12.3`, `1.23`), or `n/a`.
pub(crate) fn num(v: Option<f64>) -> String {
    match v {
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
        None => "n/a".to_owned(),
    }
}

/// A share (0..=1) as a whole percentage; a non-zero share under 1% is `<1%`.
pub(crate) fn pct(v: Option<f64>) -> String {
    match v {
        Some(x) if x > 0.0 && x < 0.01 => "<1%".to_owned(),
        Some(x) => format!("{:.0}%", x * 100.0),
        None => "n/a".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_figures_and_shares() {
        assert_eq!(num(Some(1234.5)), "1234");
        assert_eq!(num(Some(-12.34)), "-12.3");
        assert_eq!(num(Some(1.234)), "1.23");
        assert_eq!(num(None), "n/a");
        assert_eq!(pct(Some(0.004)), "<1%");
        assert_eq!(pct(Some(0.0)), "0%");
        assert_eq!(pct(Some(0.926)), "93%");
        assert_eq!(pct(None), "n/a");
    }
}

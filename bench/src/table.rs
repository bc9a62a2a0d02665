//! How a figure reads in the results' tables (the terminal's and `bench/results/compare.md`).

/// A figure for a table: thousands separated, two decimals below 100.
pub fn number(value: f64) -> String {
    if !value.is_finite() {
        "—".to_owned()
    } else if value.abs() >= 1000.0 {
        let whole = format!("{:.0}", value);
        let mut out = String::new();
        for (i, c) in whole.chars().enumerate() {
            if i > 0 && (whole.len() - i) % 3 == 0 && c.is_ascii_digit() {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if value.abs() >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_readable() {
        assert_eq!(number(1234567.4), "1,234,567");
        assert_eq!(number(12.345), "12.35");
        assert_eq!(number(f64::NAN), "—");
    }
}

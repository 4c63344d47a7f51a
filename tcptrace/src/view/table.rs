//! Plain aligned text tables, shared by `report` and `top`.

use super::sanitize::printable_owned;

/// Column alignment.
#[derive(Clone, Copy)]
pub enum Align {
    Left,
    Right,
}

pub struct Table {
    headers: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[(&str, Align)]) -> Table {
        Table {
            headers: headers.iter().map(|(h, a)| (h.to_string(), *a)).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; control characters in any cell are neutralised (cells may hold process
    /// names and other text that processes choose).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(printable_owned).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Renders with two spaces between columns; the last column is not padded.
    pub fn render(&self) -> String {
        let n = self.headers.len();
        let mut w: Vec<usize> = self
            .headers
            .iter()
            .map(|(h, _)| h.chars().count())
            .collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        let line = |cells: Vec<&str>, out: &mut String| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                let pad = w[i].saturating_sub(c.chars().count());
                let last = i + 1 == cells.len();
                match self.headers[i].1 {
                    Align::Left if last => s.push_str(c),
                    Align::Left => {
                        s.push_str(c);
                        s.push_str(&" ".repeat(pad));
                    }
                    Align::Right => {
                        s.push_str(&" ".repeat(pad));
                        s.push_str(c);
                    }
                }
                if !last {
                    s.push_str("  ");
                }
            }
            out.push_str(s.trim_end());
            out.push('\n');
        };
        line(
            self.headers.iter().map(|(h, _)| h.as_str()).collect(),
            &mut out,
        );
        for r in &self.rows {
            line(r.iter().map(|c| c.as_str()).collect(), &mut out);
        }
        out
    }
}

/// A rate with one decimal, `-` for zero.
pub fn rate(per_s: f64) -> String {
    if per_s <= 0.0 {
        "-".into()
    } else {
        format!("{per_s:.1}")
    }
}

/// Replaces control characters in attacker-controlled strings (comm is set by the process
/// itself) so they cannot move the cursor or rewrite the terminal.
pub fn printable(s: &str) -> String {
    super::sanitize::printable(s).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_trailing_space_is_trimmed() {
        let mut t = Table::new(&[
            ("PID", Align::Right),
            ("COMM", Align::Left),
            ("N", Align::Right),
        ]);
        t.row(vec!["1".into(), "a".into(), "10".into()]);
        t.row(vec!["12345".into(), "longname".into(), "2".into()]);
        let r = t.render();
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(lines[0], "  PID  COMM       N");
        assert_eq!(lines[1], "    1  a         10");
        assert_eq!(lines[2], "12345  longname   2");
    }

    #[test]
    fn cells_are_neutralised() {
        let mut t = Table::new(&[("COMM", Align::Left)]);
        t.row(vec!["\x1b[2Jevil\x07".into()]);
        assert_eq!(t.render(), "COMM\n?[2Jevil?\n");
    }
}

//! Text and columns fitted to a terminal's width, so that the terminal never wraps a line:
//! long text is cut with an ellipsis, and columns give way in the order their [`Give`] says.

use std::borrow::Cow;

use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

use super::{Column, Give};

pub const ELLIPSIS: &str = "…";

/// Cells between two columns (as in the plain table).
pub const GAP: u16 = 2;

/// Cells `s` takes on a terminal (wide characters take two).
pub fn width(s: &str) -> usize {
    UnicodeWidthStr::width(s)
}

/// `s` in at most `w` cells: cut with an ellipsis at the end, or in the middle when `keep_end`
/// (the end of an address is its port).
pub fn cut(s: &str, w: usize, keep_end: bool) -> Cow<'_, str> {
    if width(s) <= w {
        return Cow::Borrowed(s);
    }
    if w == 0 {
        return Cow::Borrowed("");
    }
    let budget = w - 1;
    if !keep_end {
        let mut out = String::with_capacity(w + 3);
        out.push_str(prefix(s, budget));
        out.push_str(ELLIPSIS);
        return Cow::Owned(out);
    }
    let head = prefix(s, budget / 2);
    let tail = suffix(s, budget - width(head));
    Cow::Owned(format!("{head}{ELLIPSIS}{tail}"))
}

/// The longest start of `s` within `w` cells.
fn prefix(s: &str, w: usize) -> &str {
    let mut used = 0;
    for (i, c) in s.char_indices() {
        used += c.width().unwrap_or(0);
        if used > w {
            return &s[..i];
        }
    }
    s
}

/// The longest end of `s` within `w` cells.
fn suffix(s: &str, w: usize) -> &str {
    let mut used = 0;
    for (i, c) in s.char_indices().rev() {
        used += c.width().unwrap_or(0);
        if used > w {
            return &s[i + c.len_utf8()..];
        }
    }
    s
}

/// Lays `items` out on lines of at most `w` cells, `sep` between two items on a line; an item
/// wider than a line is cut. (For the status fields: every one stays readable, the lost-event
/// count included, where cutting the joined line would lose the last ones.)
pub fn flow(items: &[impl AsRef<str>], sep: &str, w: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut used = 0;
    for item in items {
        let item = cut(item.as_ref(), w, false);
        let iw = width(&item);
        match lines.last_mut() {
            Some(line) if used + width(sep) + iw <= w => {
                line.push_str(sep);
                line.push_str(&item);
                used += width(sep) + iw;
            }
            _ => {
                lines.push(item.into_owned());
                used = iw;
            }
        }
    }
    lines
}

/// Which columns a terminal shows, and how wide.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// (index into the columns, cells), left to right.
    pub shown: Vec<(usize, u16)>,
    /// Heads of the columns hidden for want of room.
    pub hidden: Vec<&'static str>,
    /// Cells left of `width` after the shown columns and their gaps.
    pub spare: u16,
}

/// Fits `columns`, whose widest cells (heads included) are `natural`, into `width` cells:
/// columns give way by rank, lowest first (hidden, or cut down to their minimum), until the
/// rest fits; cut columns then get back what is left, in order. Columns that never give way
/// are kept whole even when they overflow (a terminal narrower than those shows their left
/// part: the table is clipped, never wrapped).
pub fn plan(columns: &[Column], natural: &[u16], width: u16) -> Plan {
    let least = |i: usize| match columns[i].give {
        Give::Cut { min, .. } => natural[i].min(min.max(head_width(&columns[i]))),
        _ => natural[i],
    };
    let mut shown: Vec<usize> = (0..columns.len()).collect();
    let mut cut = vec![false; columns.len()];
    let total = |shown: &[usize], cut: &[bool]| -> u32 {
        shown
            .iter()
            .map(|&i| u32::from(if cut[i] { least(i) } else { natural[i] }))
            .sum::<u32>()
            + u32::from(GAP) * shown.len().saturating_sub(1) as u32
    };
    let mut hidden = Vec::new();
    while total(&shown, &cut) > u32::from(width) {
        let next = shown
            .iter()
            .enumerate()
            .filter_map(|(at, &i)| match columns[i].give {
                Give::Hide(rank) => Some((rank, at)),
                Give::Cut { rank, .. } if !cut[i] => Some((rank, at)),
                _ => None,
            })
            .min();
        let Some((_, at)) = next else { break };
        let i = shown[at];
        if matches!(columns[i].give, Give::Hide(_)) {
            hidden.push(columns[shown.remove(at)].head);
        } else {
            cut[i] = true;
        }
    }
    let mut spare = u32::from(width).saturating_sub(total(&shown, &cut));
    let shown = shown
        .into_iter()
        .map(|i| {
            if !cut[i] {
                return (i, natural[i]);
            }
            let grow = u32::from(natural[i] - least(i)).min(spare);
            spare -= grow;
            (i, least(i) + grow as u16)
        })
        .collect();
    Plan {
        shown,
        hidden,
        spare: spare as u16,
    }
}

fn head_width(c: &Column) -> u16 {
    width(c.head) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::table::Align;

    #[test]
    fn cut_keeps_text_that_fits_and_ends_long_text_with_an_ellipsis() {
        assert_eq!(cut("python3", 7, false), "python3");
        assert_eq!(cut("python3 leak.py", 8, false), "python3…");
        assert_eq!(cut("abc", 0, false), "");
        assert_eq!(cut("abc", 1, false), "…");
        // Wide characters take two cells and are never split.
        assert_eq!(cut("日本語テキスト", 6, false), "日本…");
        assert_eq!(width(&cut("日本語テキスト", 6, false)), 5);
    }

    #[test]
    fn cut_in_the_middle_keeps_the_port() {
        let peer = "[2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff]:65535";
        let c = cut(peer, 16, true);
        assert_eq!(c, "[2001:d…f]:65535");
        assert_eq!(width(&c), 16);
    }

    #[test]
    fn flow_puts_each_field_whole_on_the_first_line_with_room() {
        let items = ["tcptrace top", "12:00:00", "up 5s", "lost events 0"];
        assert_eq!(
            flow(&items, "  ", 30),
            ["tcptrace top  12:00:00  up 5s", "lost events 0"]
        );
        assert_eq!(flow(&items, "  ", 80).len(), 1);
        assert_eq!(flow(&["a very long field"], "  ", 8), ["a very …"]);
    }

    fn cols() -> Vec<Column> {
        use super::super::{COMM, PID, col};
        vec![
            PID,
            COMM,
            col("CLOSE_WAIT", Align::Right, Give::Never),
            col("CW/s", Align::Right, Give::Hide(3)),
            col("TW_P50", Align::Right, Give::Hide(1)),
        ]
    }

    #[test]
    fn everything_whole_when_it_fits_with_the_spare_reported() {
        let p = plan(&cols(), &[5, 15, 10, 4, 6], 60);
        assert_eq!(p.shown, [(0, 5), (1, 15), (2, 10), (3, 4), (4, 6)]);
        assert!(p.hidden.is_empty());
        assert_eq!(p.spare, 60 - 40 - 8);
    }

    #[test]
    fn columns_give_way_by_rank_and_cut_names_get_back_what_is_left() {
        let p = |w| plan(&cols(), &[5, 15, 10, 4, 6], w);
        // 5+15+10+4+6 + 8 gaps = 48. At 42 TW_P50 (rank 1) goes and the rest fits.
        assert_eq!(p(42).hidden, ["TW_P50"]);
        assert_eq!(p(42).shown, [(0, 5), (1, 15), (2, 10), (3, 4)]);
        assert_eq!(p(42).spare, 2);
        // At 38 CW/s (rank 3) goes too, before the name is cut (rank 4).
        assert_eq!(p(38).hidden, ["TW_P50", "CW/s"]);
        assert_eq!(p(38).shown, [(0, 5), (1, 15), (2, 10)]);
        // At 30 the name is cut to its minimum (8), then gets back the 3 cells left.
        assert_eq!(p(30).shown, [(0, 5), (1, 11), (2, 10)]);
        assert_eq!(p(30).spare, 0);
        // Columns that never give way stay whole even past the width.
        assert_eq!(p(10).hidden, ["TW_P50", "CW/s"]);
        assert_eq!(p(10).shown, [(0, 5), (1, 8), (2, 10)]);
    }
}

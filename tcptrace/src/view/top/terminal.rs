//! The top screen on a terminal, drawn with ratatui into its cell buffer: laid out anew for
//! the terminal's size at every frame, nothing wider than the terminal (cut with an ellipsis,
//! or columns hidden, as [`fit`](super::fit) says), and the command line of each process in
//! the room that is left. Terminal I/O (raw mode, keys, resizes) is the sink's.

use ratatui::{
    Frame,
    layout::{Constraint, Flex, Layout, Rect},
    style::{Modifier, Style},
    text::Line,
    widgets::{Cell, Paragraph, Row, Table},
};

use super::fit::{GAP, cut, flow, plan, width};
use super::{Content, EMPTY, Give, TopState};
use crate::lifecycle::Comm;
use crate::owner::cmdline::CommandLine;
use crate::view::table::{Align, printable};

/// The bottom line.
pub const KEYS: &str = "keys: p process  o port  e peer  c/t sort  q quit";

/// Cells left over that make a COMMAND column worth showing.
pub const COMMAND_MIN: u16 = 16;

/// The command lines of the processes on screen, as far as they are known.
pub trait Commands {
    /// The arguments of `pid`; `None` while unknown, or when the process has none to read (it
    /// exited, or is a kernel thread): its row then shows its name.
    fn command(&self, pid: u32, comm: Comm) -> Option<&CommandLine>;
}

/// `st` with no more rows than a terminal `height` lines tall can show: the rows below would
/// be formatted for nothing (a host with thousands of processes, `--rows` as large).
pub fn fitting(st: &TopState, height: u16) -> TopState {
    TopState {
        rows: st.rows.min(usize::from(height)),
        ..*st
    }
}

/// Draws `c` on the whole frame.
pub fn draw(frame: &mut Frame, c: &Content, commands: &dyn Commands) {
    let area = frame.area();
    let w = usize::from(area.width);
    let table = TableLayout::new(c, area.width);

    let mut head: Vec<Line> = Vec::new();
    if let Some(o) = &c.overload {
        let words: Vec<&str> = o.split(' ').collect();
        let bold = Style::new().add_modifier(Modifier::BOLD);
        head.extend(
            flow(&words, " ", w)
                .into_iter()
                .map(|l| Line::styled(l, bold)),
        );
    }
    head.extend(flow(&c.status, "  ", w).into_iter().map(Line::from));
    let mut title = vec![c.title.clone()];
    if !table.plan.hidden.is_empty() {
        title.push(format!(
            "(hidden, too narrow: {})",
            table.plan.hidden.join(" ")
        ));
    }
    head.extend(flow(&title, "  ", w).into_iter().map(Line::from));
    head.push(Line::default());

    // Failed connects under the table, after a blank line; the table keeps the rest.
    let failures: Vec<Line> = if c.failures.is_empty() {
        Vec::new()
    } else {
        std::iter::once(Line::default())
            .chain(
                c.failures
                    .iter()
                    .map(|l| Line::from(cut(l, w, false).into_owned())),
            )
            .collect()
    };
    let [top, body, fails, bottom] = Layout::vertical([
        Constraint::Length(head.len() as u16),
        Constraint::Fill(1),
        Constraint::Length(failures.len() as u16),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(head), top);
    table.render(frame, body, c, commands);
    frame.render_widget(Paragraph::new(failures), fails);
    frame.render_widget(Paragraph::new(cut(KEYS, w, false).into_owned()), bottom);
}

/// The columns a width shows, and whether the command lines fit.
struct TableLayout {
    plan: super::fit::Plan,
    /// Cells of the COMMAND column, when there is room for it.
    command: Option<u16>,
}

impl TableLayout {
    fn new(c: &Content, w: u16) -> TableLayout {
        let natural: Vec<u16> = c
            .columns
            .iter()
            .enumerate()
            .map(|(i, col)| {
                c.rows
                    .iter()
                    .map(|r| width(&r.cells[i]))
                    .chain([width(col.head)])
                    .max()
                    .unwrap_or(0)
                    .try_into()
                    .unwrap_or(u16::MAX)
            })
            .collect();
        let plan = plan(&c.columns, &natural, w);
        let processes = c.rows.iter().any(|r| r.process.is_some());
        let command = (processes && plan.spare >= GAP + COMMAND_MIN).then(|| plan.spare - GAP);
        TableLayout { plan, command }
    }

    fn render(&self, frame: &mut Frame, area: Rect, c: &Content, commands: &dyn Commands) {
        let mut widths: Vec<Constraint> = self
            .plan
            .shown
            .iter()
            .map(|&(_, w)| Constraint::Length(w))
            .collect();
        let mut header: Vec<Cell> = self
            .plan
            .shown
            .iter()
            .map(|&(i, w)| cell(c.columns[i].head, w, c.columns[i].align, false))
            .collect();
        if let Some(w) = self.command {
            widths.push(Constraint::Length(w));
            header.push(cell("COMMAND", w, Align::Left, false));
        }
        // The header takes one line of the area; the rest is rows (more are not built).
        let room = usize::from(area.height.saturating_sub(1));
        let rows: Vec<Row> = c
            .rows
            .iter()
            .take(room)
            .map(|r| {
                let mut cells: Vec<Cell> = self
                    .plan
                    .shown
                    .iter()
                    .map(|&(i, w)| {
                        let keep_end =
                            matches!(c.columns[i].give, Give::Cut { keep_end: true, .. });
                        cell(&r.cells[i], w, c.columns[i].align, keep_end)
                    })
                    .collect();
                if let Some(w) = self.command {
                    let text = match r.process {
                        Some((pid, comm)) => match commands.command(pid, comm) {
                            // The program's directory goes first when the line is too long.
                            Some(l) if width(l.full()) <= usize::from(w) => printable(l.full()),
                            Some(l) => printable(l.short()),
                            None => printable(comm.as_str()),
                        },
                        None => "-".into(),
                    };
                    // Cut in the middle: the arguments at the end tell two `python3` apart.
                    cells.push(cell(&text, w, Align::Left, true));
                }
                Row::new(cells)
            })
            .collect();
        let table = Table::new(rows, widths)
            .header(Row::new(header).style(Style::new().add_modifier(Modifier::BOLD)))
            .column_spacing(GAP)
            .flex(Flex::Start);
        frame.render_widget(table, area);
        if c.rows.is_empty() && area.height > 1 {
            let line = Rect {
                y: area.y + 1,
                height: 1,
                ..area
            };
            let text = cut(EMPTY, usize::from(area.width), false).into_owned();
            frame.render_widget(Paragraph::new(text), line);
        }
    }
}

fn cell(text: &str, w: u16, align: Align, keep_end: bool) -> Cell<'static> {
    let line = Line::from(cut(text, usize::from(w), keep_end).into_owned());
    Cell::from(match align {
        Align::Left => line,
        Align::Right => line.right_aligned(),
    })
}

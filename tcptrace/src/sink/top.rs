//! The top screen: a refreshing table in a terminal; plain snapshots when stdout is not one.

use std::{
    io::Write,
    time::{Duration, Instant},
};

use crossterm::{
    cursor,
    event::{self, Event as TermEvent, KeyCode, KeyModifiers},
    execute, terminal,
};

use crate::{
    session::{Flow, Session, Sink},
    view::top::{TopState, screen},
};

pub struct Top {
    pub state: TopState,
    pub interval: Duration,
    /// Stop after this many screens.
    pub iterations: Option<u64>,
    /// A terminal on both ends: raw mode, keys, and the alternate screen.
    interactive: Option<RawMode>,
    next_refresh: Instant,
    shown: u64,
}

impl Top {
    pub fn new(
        state: TopState,
        interval: Duration,
        iterations: Option<u64>,
        interactive: bool,
    ) -> anyhow::Result<Top> {
        Ok(Top {
            state,
            interval,
            iterations,
            interactive: if interactive {
                Some(RawMode::enter()?)
            } else {
                None
            },
            next_refresh: Instant::now(),
            shown: 0,
        })
    }

    /// Reads the keys pressed; false when the user quits.
    fn keys(&mut self) -> anyhow::Result<bool> {
        while event::poll(Duration::ZERO)? {
            if let TermEvent::Key(k) = event::read()? {
                let quit = matches!(k.code, KeyCode::Char('c'))
                    && k.modifiers.contains(KeyModifiers::CONTROL);
                let c = match k.code {
                    KeyCode::Char(c) => c,
                    KeyCode::Esc => 'q',
                    _ => continue,
                };
                if quit || !self.state.key(c) {
                    return Ok(false);
                }
                self.next_refresh = Instant::now();
            }
        }
        Ok(true)
    }

    fn render(&mut self, s: &mut Session) -> anyhow::Result<()> {
        let interactive = self.interactive.is_some();
        let summary = s.summary_named(usize::MAX, s.now_ns());
        let mut text = screen(
            &summary,
            &self.state,
            s.loss().lost(),
            &time_of_day(),
            interactive,
        );
        if let Some(o) = s.overload().filter(|o| o.counting) {
            text = format!(
                "OVERLOAD: over {} events/s, the kernel counts transitions ({} so far); \
                 counts come from the kernel table\n{text}",
                o.budget_per_s, o.counted_events
            );
        }
        let mut out = std::io::stdout().lock();
        if interactive {
            execute!(
                out,
                cursor::MoveTo(0, 0),
                terminal::Clear(terminal::ClearType::All)
            )?;
            // Raw mode: lines need an explicit carriage return.
            out.write_all(text.replace('\n', "\r\n").as_bytes())?;
        } else {
            writeln!(out, "{text}")?;
        }
        out.flush()?;
        Ok(())
    }
}

impl Sink for Top {
    fn batch(&mut self, s: &mut Session, ended: bool) -> anyhow::Result<Flow> {
        if self.interactive.is_some() && !self.keys()? {
            return Ok(Flow::Stop);
        }
        let replay_over = s.is_done();
        // Stopped by the user or the duration: the last screen stays as it was.
        if ended && !replay_over {
            return Ok(Flow::Stop);
        }
        if Instant::now() >= self.next_refresh || replay_over {
            self.next_refresh = Instant::now() + self.interval;
            self.render(s)?;
            self.shown += 1;
            if self.iterations.is_some_and(|n| self.shown >= n) || replay_over {
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Continue)
    }

    /// Leaves the alternate screen before the closing line is printed.
    fn finish(&mut self, _s: &mut Session, _end_ns: u64) -> anyhow::Result<()> {
        self.interactive = None;
        Ok(())
    }
}

fn time_of_day() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as libc::time_t;
    // SAFETY: localtime_r writes only into `t`; all-zero is a valid tm.
    let mut t: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::localtime_r(&secs, &mut t) };
    format!("{:02}:{:02}:{:02}", t.tm_hour, t.tm_min, t.tm_sec)
}

/// Raw terminal mode and the alternate screen, restored on drop (also on error paths).
struct RawMode;

impl RawMode {
    fn enter() -> anyhow::Result<RawMode> {
        terminal::enable_raw_mode()?;
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide
        )?;
        Ok(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = execute!(
            std::io::stdout(),
            cursor::Show,
            terminal::LeaveAlternateScreen
        );
        let _ = terminal::disable_raw_mode();
    }
}

//! The top screen: a refreshing table on a terminal (ratatui on crossterm: raw mode, the
//! alternate screen, keys and resizes); plain snapshots when stdout is not one.

use std::{
    io::{Stdout, Write},
    time::{Duration, Instant},
};

use crossterm::{
    cursor,
    event::{self, Event as TermEvent, KeyCode, KeyEventKind, KeyModifiers},
    execute, terminal,
};
use ratatui::{Terminal, backend::CrosstermBackend};

use crate::{
    lifecycle::Comm,
    owner::cmdline::{Cmdlines, CommandLine},
    session::{Flow, Session, Sink},
    view::top::{
        Content, TopState,
        terminal::{Commands, draw, fitting},
    },
};

pub struct Top {
    pub state: TopState,
    pub interval: Duration,
    /// Stop after this many screens.
    pub iterations: Option<u64>,
    /// A terminal on both ends: raw mode, keys, the alternate screen.
    tty: Option<Tty>,
    next_refresh: Instant,
    shown: u64,
}

/// The interactive screen.
struct Tty {
    terminal: Terminal<CrosstermBackend<Stdout>>,
    /// Command lines of the processes on screen, by pid and name.
    cmdlines: Cmdlines<Comm>,
    /// The last screen, drawn again when the terminal is resized or a command line arrives
    /// between two refreshes.
    last: Option<Content>,
    redraw: bool,
    /// Declared last: dropped after the terminal, it leaves the alternate screen last.
    _raw: RawMode,
}

impl Commands for Cmdlines<Comm> {
    fn command(&self, pid: u32, comm: Comm) -> Option<&CommandLine> {
        self.get(pid, comm)
    }
}

impl Top {
    pub fn new(
        state: TopState,
        interval: Duration,
        iterations: Option<u64>,
        interactive: bool,
    ) -> anyhow::Result<Top> {
        let tty = if interactive {
            let raw = RawMode::enter()?;
            Some(Tty {
                terminal: Terminal::new(CrosstermBackend::new(std::io::stdout()))?,
                cmdlines: Cmdlines::new()?,
                last: None,
                redraw: false,
                _raw: raw,
            })
        } else {
            None
        };
        Ok(Top {
            state,
            interval,
            iterations,
            tty,
            next_refresh: Instant::now(),
            shown: 0,
        })
    }

    /// Reads the keys pressed and the resizes; false when the user quits.
    fn keys(&mut self) -> anyhow::Result<bool> {
        while event::poll(Duration::ZERO)? {
            match event::read()? {
                TermEvent::Key(k) if k.kind != KeyEventKind::Release => {
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
                // Drawn again at once for the new size (ratatui resizes its buffers and
                // clears the screen when the size it reads has changed).
                TermEvent::Resize(..) => {
                    if let Some(t) = &mut self.tty {
                        t.redraw = true;
                    }
                }
                _ => {}
            }
        }
        Ok(true)
    }

    fn render(&mut self, s: &mut Session) -> anyhow::Result<()> {
        let summary = s.summary_named(usize::MAX, s.now_ns());
        let overload = s.overload();
        let (lost, clock) = (s.loss().lost(), time_of_day());
        match &mut self.tty {
            Some(t) => {
                let st = fitting(&self.state, t.terminal.size()?.height);
                let content = Content::new(&summary, &st, lost, &clock, overload.as_ref());
                t.cmdlines
                    .want(content.rows.iter().filter_map(|r| r.process));
                t.cmdlines.collect();
                t.last = Some(content);
                t.draw()?;
            }
            None => {
                let content = Content::new(&summary, &self.state, lost, &clock, overload.as_ref());
                let mut out = std::io::stdout().lock();
                writeln!(out, "{}", content.plain())?;
                out.flush()?;
            }
        }
        Ok(())
    }
}

impl Tty {
    fn draw(&mut self) -> anyhow::Result<()> {
        self.redraw = false;
        if let Some(c) = &self.last {
            let cmdlines = &self.cmdlines;
            self.terminal.draw(|f| draw(f, c, cmdlines))?;
        }
        Ok(())
    }
}

impl Sink for Top {
    fn batch(&mut self, s: &mut Session, ended: bool) -> anyhow::Result<Flow> {
        if self.tty.is_some() && !self.keys()? {
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
        } else if let Some(t) = &mut self.tty
            && (t.cmdlines.collect() || t.redraw)
        {
            t.draw()?;
        }
        Ok(Flow::Continue)
    }

    /// Leaves the alternate screen before the closing line is printed.
    fn finish(&mut self, _s: &mut Session, _end_ns: u64) -> anyhow::Result<()> {
        self.tty = None;
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
        // A panic's message is printed before unwinding drops this: restore the terminal
        // first, or the message goes to the alternate screen and is lost with it.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
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
        restore();
    }
}

fn restore() {
    let _ = execute!(
        std::io::stdout(),
        cursor::Show,
        terminal::LeaveAlternateScreen
    );
    let _ = terminal::disable_raw_mode();
}

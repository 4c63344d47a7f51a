//! `tcptrace top`: a refreshing table in a terminal; plain snapshots when stdout is not one.

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use crossterm::{
    cursor,
    event::{self, Event as TermEvent, KeyCode, KeyModifiers},
    execute, terminal,
};

use crate::{
    app::{
        containers::name_containers,
        live::{Live, stop_signal},
    },
    cli::TopArgs,
    owner::container::ContainerNames,
    view::top::{TopState, screen},
};

pub async fn run(args: TopArgs) -> anyhow::Result<()> {
    let filters = args.filter.to_filters();
    let mut live = Live::start(&args.probe, &filters)?;
    let interactive = std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    let mut state = TopState {
        by: args.by,
        sort: args.sort,
        rows: args.rows,
    };
    let _raw = if interactive {
        Some(RawMode::enter()?)
    } else {
        None
    };
    let stop = stop_signal(args.duration);
    tokio::pin!(stop);
    let mut containers = ContainerNames::new();
    let mut batch = Vec::new();
    let mut next_refresh = Instant::now();
    let mut shown = 0u64;
    'outer: loop {
        let done = tokio::select! {
            r = &mut stop => { r?; true }
            _ = live.next_batch(&mut batch) => false,
        };
        for ev in batch.drain(..) {
            live.apply(&ev);
        }
        live.tick();
        if interactive {
            while event::poll(Duration::ZERO)? {
                if let TermEvent::Key(k) = event::read()? {
                    let quit = matches!(k.code, KeyCode::Char('c'))
                        && k.modifiers.contains(KeyModifiers::CONTROL);
                    let c = match k.code {
                        KeyCode::Char(c) => c,
                        KeyCode::Esc => 'q',
                        _ => continue,
                    };
                    if quit || !state.key(c) {
                        break 'outer;
                    }
                    next_refresh = Instant::now();
                }
            }
        }
        if done {
            break;
        }
        let replay_over = live.is_done();
        if Instant::now() >= next_refresh || replay_over {
            next_refresh = Instant::now() + args.interval;
            let mut s = live.summary(usize::MAX);
            name_containers(&mut s, &mut containers, &live.filters);
            let clock = time_of_day();
            let mut text = screen(&s, &state, live.loss().lost(), &clock, interactive);
            if let Some(o) = live.overload().filter(|o| o.counting) {
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
            shown += 1;
            if args.iterations.is_some_and(|n| shown >= n) || replay_over {
                break;
            }
        }
    }
    drop(_raw);
    let now = live.now_ns();
    live.finish(now)?;
    eprintln!("{}", live.summary_line());
    live.check_replay()
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

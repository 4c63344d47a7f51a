//! Kernel-free tests of the socket table, driven by synthetic event streams (see `fixtures`).

mod bounds;
mod close;
mod connection;
mod owner;
mod perf;
mod reconcile;
mod timewait;
mod timewait_hooks;

use std::collections::HashMap;

use tcptrace_common::TcpState;

use super::fixtures::{Ctx, Fx, MS, SWAPPER, Sk};
use super::table::{SocketTable, SocketView};

/// A process holding an fd, as the fd scan reports it.
fn holder(pid: u32, comm: &str) -> crate::owner::process::ProcessRef {
    crate::owner::process::ProcessRef {
        pid,
        comm: comm.to_string(),
    }
}

/// connect(): CLOSE -> SYN_SENT by the owner, then ESTABLISHED.
fn established(fx: &mut Fx, t: &mut SocketTable, sk: &Sk) {
    use TcpState::*;
    t.apply(&fx.tr(sk, Close, SynSent, &Ctx::Owner(7, "app")));
    t.apply(&fx.step(MS).tr(sk, SynSent, Established, &SWAPPER));
}

/// `established`, then the owner closes first and the socket goes FIN_WAIT1, FIN_WAIT2 and
/// into TIME_WAIT.
fn time_wait(fx: &mut Fx, t: &mut SocketTable, sk: &Sk) {
    use TcpState::*;
    established(fx, t, sk);
    t.apply(
        &fx.step(MS)
            .tr(sk, Established, FinWait1, &Ctx::Owner(7, "app")),
    );
    t.apply(&fx.step(MS).tr(sk, FinWait1, FinWait2, &SWAPPER));
    t.apply(&fx.step(MS).tr(sk, FinWait2, Close, &SWAPPER));
}

/// The socket with these addresses (None when gone).
fn find(t: &SocketTable, sk: &Sk) -> Option<SocketView> {
    let found: Vec<_> = t
        .iter()
        .filter(|v| v.local == sk.local && v.remote == sk.remote)
        .collect();
    assert!(found.len() <= 1, "two sockets on one 4-tuple: {found:?}");
    found.into_iter().next()
}

fn state_of(t: &SocketTable, sk: &Sk) -> Option<TcpState> {
    find(t, sk).map(|v| v.state)
}

/// The incremental counts must equal a full scan, always.
fn check_counts(t: &SocketTable) {
    let mut scan: HashMap<TcpState, u64> = HashMap::new();
    for v in t.iter() {
        *scan.entry(v.state).or_default() += 1;
    }
    let c = t.counts();
    for (s, n) in c.iter() {
        assert_eq!(
            n,
            scan.get(&s).copied().unwrap_or(0),
            "count of {}",
            s.name()
        );
    }
    assert_eq!(c.total() as usize, t.len());
    assert_eq!(t.iter().count(), t.len());
}

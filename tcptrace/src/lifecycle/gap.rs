//! How many transitions a socket must have made unseen, at the least, for the kernel's table to
//! show it in another state than ours: the state fixes of a reconciliation, counted in
//! transitions rather than sockets, so that what the kernel skipped without counting can be
//! set against what the programs counted lost (both are transitions).
//!
//! Seen in storms: a client socket last seen entering FIN_WAIT1, and the kernel's table holding
//! its timewait socket. It made FIN_WAIT1->FIN_WAIT2 and FIN_WAIT2->CLOSE (the hand-over), two
//! transitions, which "one per fixed socket" undercounted by half.

use tcptrace_common::TcpState::{self, *};

/// The transitions `tcp_set_state()` makes on a full socket, by the state they leave
/// (`tcp_close_state()`'s table, `tcp_fin()`, `tcp_rcv_state_process()`, `tcp_done()`).
/// <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/tcp.c#L2630> (`new_state`)
/// <https://github.com/torvalds/linux/blob/v6.1/net/ipv4/tcp_input.c#L4380> (`tcp_fin`)
fn next_states(s: TcpState) -> &'static [TcpState] {
    match s {
        Close => &[SynSent, Listen],
        Listen => &[SynRecv, Close],
        SynSent => &[Established, SynRecv, Close],
        SynRecv => &[Established, FinWait1, CloseWait, Close],
        Established => &[FinWait1, CloseWait, Close],
        FinWait1 => &[FinWait2, Closing, Close],
        FinWait2 | Closing | LastAck => &[Close],
        CloseWait => &[LastAck, Close],
        TimeWait | NewSynRecv => &[],
    }
}

/// The fewest transitions from `ours` to the kernel's `theirs`; at least one, since the two
/// differ. The kernel shows a timewait socket as TIME_WAIT (or in its FIN_WAIT2 substate, which
/// a full FIN_WAIT2 socket also shows, the shorter way): the full socket reached it through
/// FIN_WAIT2 or CLOSING and its ->CLOSE. States no path joins without passing CLOSE (an
/// address reused by another socket) count one.
pub fn fewest_transitions(ours: TcpState, theirs: TcpState) -> u64 {
    // A breadth-first walk over at most a dozen states.
    let mut seen = [false; 16];
    let mut frontier = vec![ours];
    seen[ours as usize] = true;
    for steps in 1..=TcpState::ALL.len() as u64 {
        let mut next = Vec::new();
        for s in frontier {
            for &n in next_states(s) {
                let handed_over =
                    theirs == TimeWait && n == Close && matches!(s, FinWait2 | Closing);
                if n == theirs || handed_over {
                    return steps;
                }
                // A closed socket is gone (its address may be another socket's): a path does not
                // go on through CLOSE, which keeps the count a lower bound.
                if n != Close && !seen[n as usize] {
                    seen[n as usize] = true;
                    next.push(n);
                }
            }
        }
        if next.is_empty() {
            break;
        }
        frontier = next;
    }
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_last_seen_closing_that_the_kernel_holds_in_time_wait_missed_two() {
        assert_eq!(fewest_transitions(FinWait1, TimeWait), 2);
        assert_eq!(fewest_transitions(FinWait2, TimeWait), 1);
        assert_eq!(fewest_transitions(Closing, TimeWait), 1);
        assert_eq!(fewest_transitions(Established, TimeWait), 3);
        assert_eq!(fewest_transitions(SynSent, TimeWait), 4);
    }

    #[test]
    fn one_step_gaps_count_one() {
        assert_eq!(fewest_transitions(Established, CloseWait), 1);
        assert_eq!(fewest_transitions(CloseWait, LastAck), 1);
        assert_eq!(fewest_transitions(SynSent, Established), 1);
        assert_eq!(fewest_transitions(FinWait1, FinWait2), 1);
        assert_eq!(fewest_transitions(SynRecv, CloseWait), 1);
    }

    #[test]
    fn longer_gaps_and_a_full_fin_wait2_socket() {
        assert_eq!(fewest_transitions(SynSent, CloseWait), 2);
        assert_eq!(fewest_transitions(Established, LastAck), 2);
        assert_eq!(fewest_transitions(Established, FinWait2), 2);
    }

    #[test]
    fn states_no_path_joins_count_one() {
        // A socket we hold in LAST_ACK and a kernel socket ESTABLISHED on its address: another
        // socket; the reconciliation still fixes ours, and one transition at least was missed.
        assert_eq!(fewest_transitions(LastAck, Established), 1);
        assert_eq!(fewest_transitions(TimeWait, Established), 1);
    }
}

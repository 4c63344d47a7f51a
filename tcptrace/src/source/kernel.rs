//! The live source: the kernel programs' event stream, and the kernel's own socket table with
//! the holders of each socket, read for reconciliation.

use anyhow::Context;

use crate::{
    event::Event,
    filter::Filters,
    owner::fdscan::{self, FdHolders},
    probe::{EventReader, KernelCounters, LossReport, Probe, ProbeOptions, TimewaitMethod},
    source::{netns, snapshot::Snapshot},
};

/// The attached programs and the reader of their ring buffer.
pub struct KernelSource {
    pub probe: Probe,
    pub reader: EventReader,
}

/// A dump of the kernel's socket table (every namespace), cut to the session's filters, and the
/// `/proc/*/fd` scan taken right after it.
pub struct Dump {
    pub snap: Snapshot,
    /// When the fd scan started (CLOCK_MONOTONIC).
    pub scan_ns: u64,
    pub holders: FdHolders,
}

impl KernelSource {
    /// Loads and attaches the programs; says on stderr which hook path and TIME_WAIT method this
    /// kernel allowed, and why a preferred one was refused.
    pub fn open(opts: &ProbeOptions) -> anyhow::Result<KernelSource> {
        let (probe, reader) = Probe::load(opts)?;
        if let Some(notice) = probe.memlock.notice() {
            eprintln!("tcptrace: {notice}");
        }
        if let Some(why) = &probe.fallback_reason {
            eprintln!("tcptrace: kernel BTF unavailable ({why}); using the classic tracepoint");
        }
        if let Some(why) = &probe.socket_key_fallback {
            eprintln!("tcptrace: no socket cookies ({why}); sockets are keyed by address");
        }
        if let Some(why) = &probe.timewait_fallback {
            let then = if probe.timewait_method().exact_end() {
                "inferring TIME_WAIT entry, its end exact from timer:timer_expire_entry"
            } else {
                "inferring TIME_WAIT"
            };
            eprintln!("tcptrace: fentry timewait hooks unavailable ({why}); {then}");
        }
        if let Some(why) = &probe.summary_fallback {
            eprintln!(
                "tcptrace: socket-local storage from tp_btf unavailable ({why}); every transition \
                 is sent to userspace instead (costlier)"
            );
        }
        if let Some(why) = &probe.timewait_timer_fallback {
            eprintln!(
                "tcptrace: timer:timer_expire_entry timewait hook unavailable ({why}); inferring \
                 TIME_WAIT's end as its start + 60 s"
            );
        }
        if let Some(why) = &probe.timewait_lookup_fallback {
            eprintln!(
                "tcptrace: closes that make no timewait socket cannot be told apart ({why}); at \
                 the tcp_max_tw_buckets cap TIME_WAIT counts stay high until the next check \
                 against the kernel's table"
            );
        }
        Ok(KernelSource { probe, reader })
    }

    /// Says that every change from here on is seen live (tests wait for the word "attached").
    pub fn announce(&self, existing: usize) {
        let p = &self.probe;
        eprintln!(
            "tcptrace: attached via {} to sock:inet_sock_set_state, tcp:tcp_receive_reset, \
             tcp:tcp_send_reset (ring {} KiB: {} x {} KiB, one per CPU, {}; TIME_WAIT {}); \
             {existing} existing sockets loaded",
            p.hook_description(),
            p.ring_bytes / 1024,
            p.rings.cpus,
            p.rings.per_cpu / 1024,
            if p.summary {
                "a summary per CLOSE_WAIT entry and close"
            } else {
                "every transition"
            },
            p.timewait_method().as_str(),
        );
    }

    pub fn timewait_method(&self) -> TimewaitMethod {
        self.probe.timewait_method()
    }

    /// Waits for the poll interval (or a wakeup) and appends the events in the ring.
    pub async fn next_batch(&mut self, out: &mut Vec<Event>) -> usize {
        self.reader.next_batch(out).await
    }

    /// Appends what the rings hold now, up to the watermark, without waiting.
    pub fn drain(&mut self, out: &mut Vec<Event>) -> usize {
        self.reader.drain_into(out)
    }

    /// Appends everything the rings hold now, younger records too: the end of a session.
    pub fn drain_all(&mut self, out: &mut Vec<Event>) -> usize {
        self.reader.drain_all_into(out)
    }

    /// The loss picture from kernel counters read earlier (`k`) and what the reader has taken
    /// from the ring since (read `k` before the drain: see `probe::Probe::loss_with`).
    pub fn loss_with(&self, k: &KernelCounters) -> LossReport {
        self.probe.loss_with(k, &self.reader)
    }

    /// The loss picture now.
    pub fn loss(&self) -> LossReport {
        self.loss_with(&self.probe.kernel_counters())
    }
}

/// Reads the kernel's socket table in every network namespace, keeps the sockets `filters`
/// wants, and scans `/proc/*/fd` for their holders. Blocking (tens of ms on a busy host, more
/// with many processes): the session runs it off its event loop.
pub fn dump(filters: &Filters) -> anyhow::Result<Dump> {
    let mut snap = netns::dump_all_namespaces()
        .context("reading the kernel socket table (NETLINK_SOCK_DIAG)")?;
    keep_wanted(filters, &mut snap);
    let scan_ns = crate::clock::monotonic_ns();
    // Every holder, not only of the sockets kept: a process that still holds any socket has
    // not ended, so its groups stay unfolded (see `Session::apply_dump`).
    let holders = fdscan::scan_socket_owners(None);
    Ok(Dump {
        snap,
        scan_ns,
        holders,
    })
}

/// Cuts a dump to the endpoint and namespace filters the kernel applies to events, so the table
/// holds the same sockets from both sources.
pub fn keep_wanted(filters: &Filters, snap: &mut Snapshot) {
    snap.sockets.retain(|k| {
        filters.matches_endpoints(&k.local, &k.remote) && filters.matches_netns(k.netns)
    });
}

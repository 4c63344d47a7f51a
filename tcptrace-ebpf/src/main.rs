//! tcptrace's kernel programs.
//!
//! One file per hook family; the entry points here are thin and the work lives in those files:
//! - `state_change`: `sock:inet_sock_set_state`, the TCP state machine itself. The tp_btf
//!   programs come in two variants: with socket cookies, and keyed by address for kernels
//!   whose tracing programs may not ask for cookies (before 5.12).
//! - `reset`: `tcp:tcp_receive_reset` / `tcp:tcp_send_reset`, which tell a RST close apart from a
//!   close that leaves a TIME_WAIT socket behind.
//! - `timewait`: fentry on `tcp_time_wait` / `inet_twsk_free`, the exact start and end of a
//!   timewait socket, where the kernel allows fentry; else `timer:timer_expire_entry` gives its
//!   exact end when its timer runs out, and its start is inferred.
//!
//! Shared plumbing: `sock` reads `struct sock` fields at offsets resolved from BTF by userspace,
//! `emit` fills and submits records with batched wakeups into `rings`, one ring buffer per CPU,
//! and `config` holds the load-time configuration and the other maps.
// The crate builds for the BPF target; on the host (e.g. `cargo clippy --workspace`) it is an
// empty program, so workspace-wide commands work.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// For `config::add_n`'s atomic add (the toolchain builds `core` with RUSTC_BOOTSTRAP anyway).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
#![cfg_attr(not(target_arch = "bpf"), allow(dead_code, unused_imports))]

mod config;
mod emit;
mod record;
mod reset;
mod rings;
mod sock;
mod state_change;
mod summary;
mod timewait;
mod timewait_made;

use aya_ebpf::{
    macros::{btf_tracepoint, fentry, tracepoint},
    programs::{BtfTracePointContext, FEntryContext, TracePointContext},
};
use reset::Direction;
use state_change::{Role, SockKey};

/// Primary tp_btf program on `inet_sock_set_state(const struct sock *sk, int oldstate, int newstate)`.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn set_state_btf(ctx: BtfTracePointContext) -> i32 {
    state_change::on_btf(&ctx, Role::Primary, SockKey::Cookie)
}

/// Backup tp_btf program on the same hook. The kernel skips a nested run of a program that is
/// already running on this CPU (`prog->active` in `__bpf_trace_run`, counted only as
/// `recursion_misses`); a second program has its own guard, so it runs, and emits exactly the
/// transitions the primary could not have handled.
/// <https://github.com/torvalds/linux/blob/v6.1/kernel/trace/bpf_trace.c#L2241>
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn set_state_btf_backup(ctx: BtfTracePointContext) -> i32 {
    state_change::on_btf(&ctx, Role::Backup, SockKey::Cookie)
}

/// The same pair for kernels whose tracing programs may not call `bpf_get_socket_cookie`
/// (before 5.12): sockets are named by address. Userspace loads these only when the cookie
/// variant is refused.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn set_state_btf_addr(ctx: BtfTracePointContext) -> i32 {
    state_change::on_btf(&ctx, Role::Primary, SockKey::Address)
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn set_state_btf_addr_backup(ctx: BtfTracePointContext) -> i32 {
    state_change::on_btf(&ctx, Role::Backup, SockKey::Address)
}

/// Classic tracepoint fallback for kernels without BTF: fields come from the tracepoint record at
/// offsets userspace read from its format file.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn set_state_tp(ctx: TracePointContext) -> u32 {
    state_change::on_tracepoint(&ctx)
}

/// `tcp_receive_reset(const struct sock *sk)`.
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn reset_rx_btf(ctx: BtfTracePointContext) -> i32 {
    reset::on_btf(&ctx, Direction::Received, SockKey::Cookie)
}

/// `tcp_send_reset(const struct sock *sk, const struct sk_buff *skb, ...)`: `sk` is first on every
/// kernel version and may be NULL (a RST answering a segment that matched no socket).
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn reset_tx_btf(ctx: BtfTracePointContext) -> i32 {
    reset::on_btf(&ctx, Direction::Sent, SockKey::Cookie)
}

/// The reset programs without the cookie, beside `set_state_btf_addr`.
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn reset_rx_btf_addr(ctx: BtfTracePointContext) -> i32 {
    reset::on_btf(&ctx, Direction::Received, SockKey::Address)
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn reset_tx_btf_addr(ctx: BtfTracePointContext) -> i32 {
    reset::on_btf(&ctx, Direction::Sent, SockKey::Address)
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn reset_rx_tp(ctx: TracePointContext) -> u32 {
    reset::on_tracepoint(&ctx, Direction::Received)
}

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn reset_tx_tp(ctx: TracePointContext) -> u32 {
    reset::on_tracepoint(&ctx, Direction::Sent)
}

/// `tcp_time_wait(struct sock *sk, int state, int timeo)`.
#[fentry(function = "tcp_time_wait")]
pub fn timewait_enter(ctx: FEntryContext) -> i32 {
    timewait::on_fentry(&ctx, timewait::Hook::Enter)
}

/// `inet_twsk_free(struct inet_timewait_sock *tw)`.
#[fentry(function = "inet_twsk_free")]
pub fn timewait_end(ctx: FEntryContext) -> i32 {
    timewait::on_fentry(&ctx, timewait::Hook::End)
}

/// `timer:timer_expire_entry`, where fentry is refused: the end of timewait sockets whose timer
/// ran out.
#[tracepoint(category = "timer", name = "timer_expire_entry")]
pub fn timewait_timer(ctx: TracePointContext) -> u32 {
    timewait::on_timer(&ctx)
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

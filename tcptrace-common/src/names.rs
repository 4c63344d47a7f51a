//! The names by which userspace finds the kernel object's maps, programs and configuration.
//! The kernel side names them by its identifiers (`#[map] static COUNTERS`, `fn set_state_btf`);
//! a userspace test checks that the built object has every name listed here
//! (`probe::tests::the_object_has_every_name_of_the_contract`).

/// The load-time configuration global (`ProbeConfig`).
pub const CONFIG: &str = "CONFIG";

/// Maps.
pub mod map {
    /// Event records: an array of ring buffers, one per CPU, which userspace creates.
    pub const RINGS: &str = "RINGS";
    /// Per-CPU counters: see [`crate::counter::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// Ports of the port filter.
    pub const PORTS: &str = "PORTS";
    /// Sockets the port filter let through, so their close passes too.
    pub const ADMITTED: &str = "ADMITTED";
    /// Slot 0: counting mode on (1) or off.
    pub const MODE: &str = "MODE";
    /// Per-CPU transition counts in counting mode: see [`crate::counter::transition_slot`].
    pub const TRANSITIONS: &str = "TRANSITIONS";
    pub const ALL: [&str; 6] = [RINGS, COUNTERS, PORTS, ADMITTED, MODE, TRANSITIONS];
}

/// Programs, and the hook each attaches to.
pub mod program {
    /// tp_btf on `inet_sock_set_state`, primary and backup.
    pub const SET_STATE_BTF: &str = "set_state_btf";
    pub const SET_STATE_BTF_BACKUP: &str = "set_state_btf_backup";
    /// The same pair keyed by address, for kernels whose tracing programs may not ask for the
    /// socket cookie (before 5.12).
    pub const SET_STATE_BTF_ADDR: &str = "set_state_btf_addr";
    pub const SET_STATE_BTF_ADDR_BACKUP: &str = "set_state_btf_addr_backup";
    /// The classic tracepoint `sock:inet_sock_set_state`.
    pub const SET_STATE_TP: &str = "set_state_tp";
    /// tp_btf on `tcp_receive_reset` / `tcp_send_reset`.
    pub const RESET_RX_BTF: &str = "reset_rx_btf";
    pub const RESET_TX_BTF: &str = "reset_tx_btf";
    /// And keyed by address.
    pub const RESET_RX_BTF_ADDR: &str = "reset_rx_btf_addr";
    pub const RESET_TX_BTF_ADDR: &str = "reset_tx_btf_addr";
    /// Classic tracepoints `tcp:tcp_receive_reset` / `tcp:tcp_send_reset`.
    pub const RESET_RX_TP: &str = "reset_rx_tp";
    pub const RESET_TX_TP: &str = "reset_tx_tp";
    /// fentry on `tcp_time_wait` / `inet_twsk_free`.
    pub const TIMEWAIT_ENTER: &str = "timewait_enter";
    pub const TIMEWAIT_END: &str = "timewait_end";
    /// `timer:timer_expire_entry`, where fentry is refused.
    pub const TIMEWAIT_TIMER: &str = "timewait_timer";
    pub const ALL: [&str; 14] = [
        SET_STATE_BTF,
        SET_STATE_BTF_BACKUP,
        SET_STATE_BTF_ADDR,
        SET_STATE_BTF_ADDR_BACKUP,
        SET_STATE_TP,
        RESET_RX_BTF,
        RESET_TX_BTF,
        RESET_RX_BTF_ADDR,
        RESET_TX_BTF_ADDR,
        RESET_RX_TP,
        RESET_TX_TP,
        TIMEWAIT_ENTER,
        TIMEWAIT_END,
        TIMEWAIT_TIMER,
    ];
}

//! Views: how results reach the user.

pub mod trace;

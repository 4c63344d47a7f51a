//! Tests of cgroup resolution, by theme.

mod hierarchy;
mod paths;

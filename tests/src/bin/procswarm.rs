//! Many processes holding descriptors, for measuring what the `/proc/*/fd` scan costs the
//! tracer (`xtask bench --procs`): every reconciliation reads every process's fd table, as
//! `ss -p` does.
//!
//! ```text
//! procswarm --procs N [--fds K]
//! ```
//! Forks N processes that each open K sockets and sleep; prints `ready N` once all exist, and
//! ends them all when its stdin closes (each also dies with it: `PR_SET_PDEATHSIG`).

use std::io::Read;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut procs = 1000usize;
    let mut fds = 4usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let n: usize = it.next().expect("value").parse().expect("number");
        match a.as_str() {
            "--procs" => procs = n,
            "--fds" => fds = n,
            other => panic!("procswarm: unknown argument {other}"),
        }
    }
    let mut children = Vec::with_capacity(procs);
    for _ in 0..procs {
        // SAFETY: the child only makes syscalls (no allocation, no locks) before pause().
        match unsafe { libc::fork() } {
            0 => unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                for _ in 0..fds {
                    libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                }
                loop {
                    libc::pause();
                }
            },
            -1 => panic!("fork failed after {} processes", children.len()),
            pid => children.push(pid),
        }
    }
    println!("ready {}", children.len());
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    for pid in &children {
        // SAFETY: kill on our own children.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    for _ in &children {
        // SAFETY: reaping our own children.
        unsafe { libc::wait(std::ptr::null_mut()) };
    }
}

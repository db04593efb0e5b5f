//! Ports for servers the tests start as processes of their own (kvd, etcd, the watcher's
//! metrics): free on the given addresses now, handed out once per test process.
//!
//! Not `bind(":0")`: that draws from the kernel's ephemeral range, and a port released to be
//! handed to another process can be taken before that process binds it, by any outgoing
//! connection (a client's, a probe's) or by another test's server. Two chaos runs in one
//! binary once did exactly that, and a client pinned to a killed replica read the other
//! cluster's values; an etcd started by the benchmark tool's tests once found its port taken
//! and never came up. So ports come from below the ephemeral range (Linux: 32768 and up),
//! never twice from one process, from a window chosen by the process id so that concurrent
//! test binaries rarely meet.

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

const LOW: u32 = 10_000;
/// Ports LOW .. LOW + SPAN, all below 32768.
const SPAN: u32 = 22_000;

/// A port free on 127.0.0.1 now.
pub fn free_port() -> u16 {
    free_port_on(&[IpAddr::V4(Ipv4Addr::LOCALHOST)])
}

/// A port free on every one of `addrs` now (replicas that each listen on a loopback address
/// of their own, at one port).
pub fn free_port_on(addrs: &[IpAddr]) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(2_003) % SPAN;
    loop {
        let i = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(i < SPAN, "the test process used up its {SPAN} ports");
        let port = (LOW + (start + i) % SPAN) as u16;
        // Held together, so that the port is checked free on all addresses at once.
        let held: Result<Vec<TcpListener>, _> = addrs
            .iter()
            .map(|&ip| TcpListener::bind((ip, port)))
            .collect();
        if held.is_ok() {
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_and_never_repeat() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        assert!(ports.iter().all(|&p| (10_000..32_000).contains(&p)));
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len());
    }
}

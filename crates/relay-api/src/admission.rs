//! Which connections are let in. The relay holds at most a configured number of connections in
//! all, and at most another number from any one client address, so neither many clients nor one
//! hostile client can take every descriptor: a connection beyond either cap is refused (answered
//! 503 and closed). A [`Slot`] is held for a connection's whole life, WebSocket included, and
//! gives its place back when dropped. [`ConnectionStats`] counts what happened.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Counters of the connections a server holds, shared with whoever watches it (tests, metrics).
#[derive(Debug, Default)]
pub struct ConnectionStats {
    open: AtomicUsize,
    accepted: AtomicU64,
    moved: AtomicU64,
    refused: AtomicU64,
    /// Open connections per client address (no entry when none).
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnectionStats {
    /// Connections whose socket is open now (a WebSocket's included).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections let in since the server started.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections that moved to the work runtime (upgraded to WebSockets).
    pub fn moved(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    /// Connections refused because a cap was reached.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Open connections from `addr`.
    pub fn open_from(&self, addr: IpAddr) -> usize {
        self.clients().get(&addr).copied().unwrap_or(0)
    }

    pub(crate) fn count_move(&self) {
        self.moved.fetch_add(1, Ordering::Relaxed);
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_client.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The caps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Caps {
    pub(crate) total: usize,
    pub(crate) per_client: usize,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The relay holds its maximum of connections.
    Full,
    /// This client address holds its maximum.
    ClientFull,
}

/// A connection's place among the open ones; given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    stats: Arc<ConnectionStats>,
    addr: IpAddr,
}

/// Lets the connection from `addr` in, or says which cap refuses it.
pub(crate) fn admit(
    stats: &Arc<ConnectionStats>,
    addr: IpAddr,
    caps: Caps,
) -> Result<Slot, Refusal> {
    let mut clients = stats.clients();
    let from_client = clients.get(&addr).copied().unwrap_or(0);
    let refusal = if stats.open() >= caps.total {
        Some(Refusal::Full)
    } else if from_client >= caps.per_client {
        Some(Refusal::ClientFull)
    } else {
        None
    };
    if let Some(r) = refusal {
        stats.refused.fetch_add(1, Ordering::Relaxed);
        return Err(r);
    }
    clients.insert(addr, from_client + 1);
    stats.open.fetch_add(1, Ordering::Relaxed);
    stats.accepted.fetch_add(1, Ordering::Relaxed);
    Ok(Slot {
        stats: stats.clone(),
        addr,
    })
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut clients = self.stats.clients();
        if let Some(n) = clients.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                clients.remove(&self.addr);
            }
        }
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: Caps = Caps {
        total: 3,
        per_client: 2,
    };

    #[test]
    fn each_cap_refuses_and_a_dropped_slot_frees_its_place() {
        let stats = Arc::new(ConnectionStats::default());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = admit(&stats, a, CAPS).unwrap();
        let _a2 = admit(&stats, a, CAPS).unwrap();
        assert_eq!(admit(&stats, a, CAPS).unwrap_err(), Refusal::ClientFull);
        let _b1 = admit(&stats, b, CAPS).unwrap();
        assert_eq!(admit(&stats, b, CAPS).unwrap_err(), Refusal::Full);
        assert_eq!(
            (stats.open(), stats.open_from(a), stats.refused()),
            (3, 2, 2)
        );
        drop(a1);
        assert_eq!((stats.open(), stats.open_from(a)), (2, 1));
        let _b2 = admit(&stats, b, CAPS).unwrap();
        assert_eq!(stats.accepted(), 4);
    }

    #[test]
    fn an_address_without_connections_is_forgotten() {
        let stats = Arc::new(ConnectionStats::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        drop(admit(&stats, a, CAPS).unwrap());
        assert!(stats.clients().is_empty());
        assert_eq!(stats.open(), 0);
    }
}

//! Listens for VRRP adverts on the wire (a raw socket for IP protocol 112,
//! beside keepalived's own), so a peer that stepped down from a split brain
//! knows when the holder's adverts reach it again. Needs CAP_NET_RAW; without
//! it the listener logs once and stops, and a peer that stepped down waits
//! for the holder to give up the VIP instead.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::watch;

use crate::clock::{Clock, SystemClock};

const VRRP: i32 = 112;
/// More sources than any mesh has peers: the oldest are forgotten.
const MAX_SOURCES: usize = 256;

/// When an advert was last heard from each source address (wall-clock ms).
pub type Heard = Arc<Mutex<BTreeMap<IpAddr, u64>>>;

/// The source of a VRRP advertisement (version 2 or 3, type 1) in `packet`,
/// which starts with the IPv4 header when `ipv4`.
pub fn advert_source(packet: &[u8], ipv4: bool, from: IpAddr) -> Option<IpAddr> {
    let vrrp = if ipv4 {
        let ihl = usize::from(packet.first()? & 0x0f) * 4;
        if ihl < 20 || packet.get(9) != Some(&(VRRP as u8)) {
            return None;
        }
        packet.get(ihl..)?
    } else {
        packet
    };
    let first = *vrrp.first()?;
    let (version, kind) = (first >> 4, first & 0x0f);
    ((version == 2 || version == 3) && kind == 1 && vrrp.len() >= 8).then_some(from)
}

fn open(domain: Domain) -> std::io::Result<tokio::net::UdpSocket> {
    let s = Socket::new(domain, Type::RAW, Some(Protocol::from(VRRP)))?;
    s.set_nonblocking(true)?;
    // recvfrom(2) reads a raw socket as it reads a UDP one; tokio's datagram
    // socket gives it a safe, async face.
    tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(s))
}

async fn listen_on(socket: tokio::net::UdpSocket, ipv4: bool, heard: Heard) {
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "VRRP advert listener stopped");
                return;
            }
        };
        if let Some(src) = advert_source(&buf[..n], ipv4, from.ip()) {
            let mut h = heard.lock().unwrap_or_else(|p| p.into_inner());
            h.insert(src, SystemClock.now_ms());
            if h.len() > MAX_SOURCES {
                if let Some(oldest) = h.iter().min_by_key(|(_, t)| **t).map(|(a, _)| *a) {
                    h.remove(&oldest);
                }
            }
        }
    }
}

/// Runs until shutdown; returns at once when no raw socket can be opened.
pub async fn listen(heard: Heard, mut shutdown: watch::Receiver<bool>) {
    let mut tasks = tokio::task::JoinSet::new();
    for (domain, ipv4) in [(Domain::IPV4, true), (Domain::IPV6, false)] {
        match open(domain) {
            Ok(socket) => {
                tasks.spawn(listen_on(socket, ipv4, heard.clone()));
            }
            Err(e) => tracing::warn!(
                error = %e,
                ipv4,
                "cannot listen for VRRP adverts (needs CAP_NET_RAW): a peer that stepped down from a split brain waits for the holder to give up the VIP"
            ),
        }
    }
    if tasks.is_empty() {
        return;
    }
    crate::shutdown::signalled(&mut shutdown).await;
    tasks.abort_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_vrrp_adverts_count() {
        let from: IpAddr = "198.18.0.12".parse().unwrap();
        let mut v4 = vec![0x45, 0, 0, 40, 0, 0, 0, 0, 255, 112, 0, 0];
        v4.extend([198, 18, 0, 12, 198, 18, 0, 11]);
        let advert = [0x31, 51, 200, 1, 0, 5, 0, 0];
        let with = |tail: &[u8]| [v4.as_slice(), tail].concat();
        assert_eq!(advert_source(&with(&advert), true, from), Some(from));
        assert_eq!(advert_source(&advert, false, from), Some(from));
        // Not an advert (type 2), VRRP version 4, truncated, another protocol.
        assert_eq!(
            advert_source(&with(&[0x32, 51, 200, 1, 0, 5, 0, 0]), true, from),
            None
        );
        assert_eq!(
            advert_source(&with(&[0x41, 51, 200, 1, 0, 5, 0, 0]), true, from),
            None
        );
        assert_eq!(advert_source(&with(&advert[..4]), true, from), None);
        let mut udp = with(&advert);
        udp[9] = 17;
        assert_eq!(advert_source(&udp, true, from), None);
        assert_eq!(advert_source(&[], true, from), None);
    }
}

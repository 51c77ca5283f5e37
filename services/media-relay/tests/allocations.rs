//! The forwarding loop allocates nothing per packet. `allocation-counter`
//! replaces the global allocator, so this is a test binary of its own.
#![allow(clippy::unwrap_used)]
#![cfg(target_os = "linux")]

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;

use relaymesh_media_relay::engine::{Forwarder, RelayCounters, RelayTable, Ssrc};

const LISTENERS: usize = 10;

fn bind() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    socket
}

fn rtp(ssrc: u32, seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 96];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0; 4]);
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[0xab; 160]);
    p
}

#[test]
fn relaying_reads_of_any_size_allocates_nothing() {
    let table = Arc::new(RelayTable::new());
    let counters = Arc::new(RelayCounters::default());
    let relay = bind();
    let relay_addr = relay.local_addr().unwrap();
    let mut forwarder = Forwarder::new(relay, table.clone(), counters.clone()).unwrap();

    // A talker (SSRC 1) and listeners, latched; a floor-controlled channel
    // whose member is refused, to cover every drop path too.
    let mut dests = Vec::new();
    let talker = bind();
    table.add_peer("c", Ssrc(1), "talker", 0, 60_000).unwrap();
    table.route(Ssrc(1), talker.local_addr().unwrap(), 0, &mut dests);
    let listeners: Vec<UdpSocket> = (0..LISTENERS)
        .map(|i| {
            let s = bind();
            let ssrc = Ssrc(100 + i as u32);
            table.add_peer("c", ssrc, &format!("l{i}"), 0, 60_000).unwrap();
            table.route(ssrc, s.local_addr().unwrap(), 0, &mut dests);
            s
        })
        .collect();
    let muted = bind();
    table.add_peer("ptt", Ssrc(7), "muted", 0, 60_000).unwrap();
    table.set_floor("ptt", true, None, 0).unwrap();
    table.route(Ssrc(7), muted.local_addr().unwrap(), 0, &mut dests);

    // Warm up: the first read brings the forwarder's copy of the routes up
    // to date (a control-plane change, not a per-packet cost).
    talker.send_to(&rtp(1, 0), relay_addr).unwrap();
    forwarder.relay_once().unwrap();

    let mut forwarded = 1;
    for (round, batch) in [1usize, 2, 5, 17, 32, 32, 3].into_iter().enumerate() {
        for i in 0..batch {
            talker.send_to(&rtp(1, (round * 100 + i) as u16), relay_addr).unwrap();
        }
        talker.send_to(b"not rtp", relay_addr).unwrap();
        talker.send_to(&rtp(99, 0), relay_addr).unwrap();
        muted.send_to(&rtp(7, 0), relay_addr).unwrap();
        let queued = batch + 3;
        let mut read = 0;
        while read < queued {
            let info = allocation_counter::measure(|| {
                read += forwarder.relay_once().unwrap();
            });
            assert_eq!(info.count_total, 0, "a read of {batch} packets allocated: {info:?}");
        }
        forwarded += batch;
    }

    // Everything was in fact relayed to every listener.
    let mut buf = [0u8; 2048];
    for l in &listeners {
        for _ in 0..forwarded {
            let (len, _) = l.recv_from(&mut buf).unwrap();
            assert_eq!(len, 172);
        }
    }
    forwarder.flush_counts();
    let stats = counters.snapshot(&table);
    assert_eq!(stats.packets_out, (forwarded * LISTENERS) as u64);
    assert_eq!(
        (
            stats.dropped_malformed,
            stats.dropped_unknown_ssrc,
            stats.dropped_no_floor
        ),
        (7, 7, 7)
    );
}

//! The test harness's fault proxy as a program, for `make bench`: this kernel has no netem,
//! so a WAN link is made in user space. Usage:
//! netem_proxy LISTEN_PORT UPSTREAM_PORT ONE_WAY_LATENCY_MS [LINK_MBIT_PER_S [QUEUE_MS
//! [IN_FLIGHT_MIB]]]
//! (with a rate, all connections share that capacity each way; QUEUE_MS, 2 by default, is
//! the router's buffer in the link's time: a deep one, e.g. 10000, never drops and queued
//! bytes lengthen the round trip; IN_FLIGHT_MIB, 6 by default, is what one connection may
//! have in the line each way, its TCP window. 10000 and 64: the link model of
//! field-notes.md, where one raw TCP connection fills the link at 100 ms).

#[path = "../tests/common/proxy.rs"]
#[allow(dead_code)]
mod proxy;

use proxy::{Fault, Proxy};
use std::time::Duration;

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let window = proxy::IN_FLIGHT_PER_CONNECTION as u64 >> 20;
    let (listen, upstream, latency_ms, mbit, queue_ms, window_mib) = match args[..] {
        [listen, upstream, latency_ms] => (listen, upstream, latency_ms, None, 2, window),
        [listen, upstream, latency_ms, mbit] => {
            (listen, upstream, latency_ms, Some(mbit), 2, window)
        }
        [listen, upstream, latency_ms, mbit, queue] => {
            (listen, upstream, latency_ms, Some(mbit), queue, window)
        }
        [listen, upstream, latency_ms, mbit, queue, mib] => {
            (listen, upstream, latency_ms, Some(mbit), queue, mib)
        }
        _ => {
            eprintln!(
                "usage: netem_proxy LISTEN_PORT UPSTREAM_PORT ONE_WAY_LATENCY_MS \
                 [LINK_MBIT_PER_S [QUEUE_MS [IN_FLIGHT_MIB]]]"
            );
            std::process::exit(2);
        }
    };
    let latency = Duration::from_millis(latency_ms);
    let fault = match mbit {
        None => Fault::Latency(latency),
        Some(mbit) => Fault::Link {
            latency,
            bytes_per_second: mbit * 1_000_000 / 8,
            queue: Duration::from_millis(queue_ms),
            in_flight: usize::try_from(window_mib << 20).unwrap_or(usize::MAX),
        },
    };
    let (Ok(listen), Ok(upstream)) = (u16::try_from(listen), u16::try_from(upstream)) else {
        eprintln!("ports are 1-65535");
        std::process::exit(2);
    };
    let _proxy = Proxy::start_on(listen, upstream, fault);
    loop {
        std::thread::park();
    }
}

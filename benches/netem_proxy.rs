//! The test harness's fault proxy as a program, for `make bench`: this kernel has no netem,
//! so a WAN link is made in user space. Usage:
//! netem_proxy LISTEN_PORT UPSTREAM_PORT ONE_WAY_LATENCY_MS [LINK_MBIT_PER_S]
//! (with a rate, all connections share that capacity each way).

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
    let (listen, upstream, latency_ms, mbit) = match args[..] {
        [listen, upstream, latency_ms] => (listen, upstream, latency_ms, None),
        [listen, upstream, latency_ms, mbit] => (listen, upstream, latency_ms, Some(mbit)),
        _ => {
            eprintln!(
                "usage: netem_proxy LISTEN_PORT UPSTREAM_PORT ONE_WAY_LATENCY_MS [LINK_MBIT_PER_S]"
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

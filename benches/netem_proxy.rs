//! The test harness's fault proxy as a program, for `make bench`: this kernel has no netem,
//! so WAN latency is made in user space. Usage: netem_proxy LISTEN_PORT UPSTREAM_PORT LATENCY_MS

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
    let [listen, upstream, latency_ms] = args[..] else {
        eprintln!("usage: netem_proxy LISTEN_PORT UPSTREAM_PORT LATENCY_MS");
        std::process::exit(2);
    };
    let (Ok(listen), Ok(upstream)) = (u16::try_from(listen), u16::try_from(upstream)) else {
        eprintln!("ports are 1-65535");
        std::process::exit(2);
    };
    let _proxy = Proxy::start_on(
        listen,
        upstream,
        Fault::Latency(Duration::from_millis(latency_ms)),
    );
    loop {
        std::thread::park();
    }
}

//! A TCP proxy between the tool and sshd that injects network faults: cut a connection after
//! N bytes from the client, stall it (stop forwarding, keep it open), delay every chunk, or
//! make a WAN link: a fixed one-way latency and a capacity all connections share.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    Pass,
    /// Close both sides once the client has sent this many bytes.
    CutAfter(u64),
    /// Stop forwarding (both ways) once the client has sent this many bytes.
    StallAfter(u64),
    /// Sleep this long before forwarding each chunk, both ways (a slow, throttled link).
    Delay(Duration),
    /// Deliver every chunk this long after it was sent, both ways, without limiting
    /// throughput: a WAN's one-way latency (25 ms each way = 50 ms RTT).
    Latency(Duration),
    /// A WAN link: `Latency`, and at most `bytes_per_second` each way, shared by every
    /// connection through this proxy (so more streams share one pipe, as on a real link).
    /// `queue`: how much of the link's time the bytes waiting for the wire may take before
    /// a sender waits (a router's buffer): 2 ms is shallow; seconds is a deep buffer that
    /// never drops, where queued bytes lengthen every connection's round trip.
    /// `in_flight`: the most one connection may have in the line each way (its TCP window).
    Link {
        latency: Duration,
        bytes_per_second: u64,
        queue: Duration,
        in_flight: usize,
    },
}

/// One direction of the shared link: when it is next free to put a byte on the wire.
#[derive(Default)]
struct Wire {
    free_at: Mutex<Option<Instant>>,
}

impl Wire {
    /// Reserve the wire for `bytes`; the instant their last byte has left.
    fn send(&self, bytes: usize, bytes_per_second: u64) -> Instant {
        let mut free_at = self.free_at.lock().expect("wire");
        let now = Instant::now();
        let start = free_at.map_or(now, |at| at.max(now));
        let done = start + Duration::from_secs_f64(bytes as f64 / bytes_per_second.max(1) as f64);
        *free_at = Some(done);
        done
    }
}

struct Plan {
    next: VecDeque<Fault>,
    default: Fault,
}

pub struct Proxy {
    pub port: u16,
    plan: Arc<Mutex<Plan>>,
    stop: Arc<AtomicBool>,
    pub connections: Arc<AtomicUsize>,
}

/// The link's two directions, shared by all connections: client to server, and back.
type Wires = Arc<[Wire; 2]>;

impl Proxy {
    pub fn start(upstream: u16, default: Fault) -> Proxy {
        Proxy::start_on(0, upstream, default)
    }

    pub fn start_on(port: u16, upstream: u16, default: Fault) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("proxy bind");
        let port = listener.local_addr().expect("addr").port();
        let plan = Arc::new(Mutex::new(Plan {
            next: VecDeque::new(),
            default,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicUsize::new(0));
        let (plan_, stop_, count) = (plan.clone(), stop.clone(), connections.clone());
        let wires: Wires = Arc::new([Wire::default(), Wire::default()]);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop_.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let fault = {
                    let mut plan = plan_.lock().expect("plan");
                    let default = plan.default;
                    plan.next.pop_front().unwrap_or(default)
                };
                let (stop, wires) = (stop_.clone(), wires.clone());
                std::thread::spawn(move || serve(client, upstream, fault, stop, wires));
            }
        });
        Proxy {
            port,
            plan,
            stop,
            connections,
        }
    }

    /// Faults for the next connections, in order; later ones get the default.
    pub fn then(&self, fault: Fault) {
        self.plan.lock().expect("plan").next.push_back(fault);
    }

    pub fn set_default(&self, fault: Fault) {
        self.plan.lock().expect("plan").default = fault;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(client: TcpStream, upstream: u16, fault: Fault, stop: Arc<AtomicBool>, wires: Wires) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let link = match fault {
        Fault::Latency(latency) => Some((latency, None)),
        Fault::Link {
            latency,
            bytes_per_second,
            queue,
            in_flight,
        } => Some((latency, Some((bytes_per_second, queue, in_flight)))),
        _ => None,
    };
    if let Some((latency, rate)) = link {
        let (Ok(client_in), Ok(server_in)) = (client.try_clone(), server.try_clone()) else {
            return;
        };
        let wires_ = wires.clone();
        let back = std::thread::spawn(move || {
            delayed(server_in, client, latency, rate.map(|r| (&wires_[1], r)))
        });
        delayed(client_in, server, latency, rate.map(|r| (&wires[0], r)));
        let _ = back.join();
        return;
    }
    let (Ok(client_in), Ok(server_out)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let stalled = Arc::new(AtomicBool::new(false));
    let stalled_ = stalled.clone();
    let stop_ = stop.clone();
    let back = std::thread::spawn(move || pump(server, client, fault, None, stalled_, stop_));
    pump(client_in, server_out, fault, Some(()), stalled, stop);
    let _ = back.join();
}

/// Bytes one direction of one connection may have in the delay line: what a Linux TCP
/// connection can have unacknowledged on a long link (tcp_wmem's 4 MiB send buffer and the
/// receiver's window, up to tcp_rmem's 6 MiB), so one connection through the proxy is
/// limited as on a real WAN, not by how the bytes happened to be split into reads. A `Link`
/// says its own.
pub const IN_FLIGHT_PER_CONNECTION: usize = 6 * 1024 * 1024;

/// Copy `from` to `to`, each chunk delivered `latency` after it was read (after it has
/// crossed the shared `wire`, when there is one): a reader queues (deadline, bytes), a
/// writer sends when the deadline comes. The reader waits while IN_FLIGHT_PER_CONNECTION
/// bytes are in the line, and for the wire like a router's queue: the sender feels the
/// link's capacity.
fn delayed(
    mut from: TcpStream,
    mut to: TcpStream,
    latency: Duration,
    wire: Option<(&Wire, (u64, Duration, usize))>,
) {
    let in_flight = wire.map_or(IN_FLIGHT_PER_CONNECTION, |(_, (_, _, most))| most);
    let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
    let queued = Arc::new(AtomicUsize::new(0));
    let queued_ = queued.clone();
    let writer = std::thread::spawn(move || {
        for (due, chunk) in rx {
            let now = std::time::Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let written = to.write_all(&chunk);
            queued_.fetch_sub(chunk.len(), Ordering::SeqCst);
            if written.is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    // Small reads on a paced link: a chunk holds the wire for its whole length.
    let mut buf = vec![0u8; if wire.is_some() { 16 * 1024 } else { 64 * 1024 }];
    loop {
        while queued.load(Ordering::SeqCst) >= in_flight {
            if writer.is_finished() {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let sent = match wire {
            Some((wire, (bytes_per_second, router_queue, _))) => {
                let sent = wire.send(n, bytes_per_second);
                // The sender waits only when the router's queue is full: sleeping until
                // every chunk had left (131 µs for 16 KiB at 1 Gbit/s) overshoots by the
                // timer's slack each time and slowed each connection to about 45 MB/s.
                let queue_full_at = Instant::now() + router_queue;
                if sent > queue_full_at {
                    std::thread::sleep(sent - queue_full_at);
                }
                sent
            }
            None => Instant::now(),
        };
        queued.fetch_add(n, Ordering::SeqCst);
        if tx.send((sent + latency, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.join();
}

/// Copy `from` to `to`. Only the client-to-server direction (`counted`) counts bytes for
/// cuts and stalls; a stall freezes both directions.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    fault: Fault,
    counted: Option<()>,
    stalled: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut chunk = &buf[..n];
        if let Fault::Delay(delay) = fault {
            std::thread::sleep(delay);
        }
        if counted.is_some() {
            if let Fault::CutAfter(limit) | Fault::StallAfter(limit) = fault {
                if sent + n as u64 > limit {
                    chunk = &buf[..(limit - sent) as usize];
                    let _ = to.write_all(chunk);
                    if let Fault::CutAfter(_) = fault {
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = to.shutdown(Shutdown::Both);
                        return;
                    }
                    stalled.store(true, Ordering::SeqCst);
                }
            }
        }
        while stalled.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if stalled.load(Ordering::SeqCst) {
            break;
        }
        if to.write_all(chunk).is_err() {
            break;
        }
        sent += chunk.len() as u64;
    }
    let _ = to.shutdown(Shutdown::Write);
}

//! One upstream client per serving thread. A server that runs each connection on one thread
//! for its life (`keyturn serve`'s lanes) says which lane a thread is with [`serve_on_lane`];
//! a [`Transport`](super::Transport) then sends that thread's requests through a client of its
//! own, whose pooled connections — and the buffers they read answers into — stay on the thread.
//! Through one shared client, a request on one lane took a connection another lane had opened:
//! each answer was read on one thread and freed on the other, and the allocator's lock between
//! them was most of the proxy's futex calls at 32 connections. Threads that name no lane (every
//! other caller: the seed pipeline, tests) share lane 0's client, as before.

use std::cell::Cell;
use std::sync::OnceLock;

thread_local! {
    static LANE: Cell<usize> = const { Cell::new(0) };
}

/// Says that the calling thread serves lane `lane` (from 1; 0 is every thread that serves none)
/// for the rest of its life.
pub fn serve_on_lane(lane: usize) {
    LANE.with(|l| l.set(lane));
}

/// The calling thread's lane: 0 unless [`serve_on_lane`] said otherwise.
pub(super) fn this_lane() -> usize {
    LANE.with(Cell::get)
}

/// How many serving lanes a server runs (one per core), and so how many clients a transport
/// keeps besides lane 0's (the threads that serve none): `keyturn serve` starts this many.
pub fn lane_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Lane 0's client, built with the transport, and the others', built on first use with the
/// same settings.
#[derive(Debug)]
pub(super) struct Clients {
    first: reqwest::Client,
    rest: Box<[OnceLock<reqwest::Client>]>,
}

impl Clients {
    pub(super) fn new(first: reqwest::Client) -> Self {
        Self {
            first,
            rest: (0..lane_count()).map(|_| OnceLock::new()).collect(),
        }
    }

    /// The calling thread's client; `build` makes a lane's on its first use (lane 0's when that
    /// fails: the same settings built it once already).
    pub(super) fn for_this_lane(
        &self,
        build: impl FnOnce() -> Result<reqwest::Client, reqwest::Error>,
    ) -> &reqwest::Client {
        let lane = this_lane();
        if lane == 0 || self.rest.is_empty() {
            return &self.first;
        }
        let slot = &self.rest[(lane - 1) % self.rest.len()];
        if let Some(c) = slot.get() {
            return c;
        }
        match build() {
            Ok(c) => slot.get_or_init(|| c),
            Err(_) => &self.first,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> reqwest::Client {
        reqwest::Client::new()
    }

    #[test]
    fn threads_without_a_lane_share_the_first_client_and_lanes_get_their_own() {
        let clients = Clients {
            first: client(),
            rest: (0..2).map(|_| OnceLock::new()).collect(),
        };
        let first: *const reqwest::Client = clients.for_this_lane(|| unreachable!());
        let (a, b, a_again) = std::thread::scope(|s| {
            let on = |lane| {
                let clients = &clients;
                s.spawn(move || {
                    serve_on_lane(lane);
                    let c: *const reqwest::Client = clients.for_this_lane(|| Ok(client()));
                    c as usize
                })
            };
            let a = on(1).join().unwrap();
            let b = on(2).join().unwrap();
            let a_again = on(1).join().unwrap();
            (a, b, a_again)
        });
        assert_ne!(a, first as usize, "lane 1 has its own client");
        assert_ne!(b, first as usize, "lane 2 has its own client");
        assert_ne!(a, b, "lanes 1 and 2 do not share one");
        assert_eq!(a, a_again, "a lane keeps its client");
        let wrapped = std::thread::scope(|s| {
            s.spawn(|| {
                serve_on_lane(3);
                clients.for_this_lane(|| unreachable!()) as *const reqwest::Client as usize
            })
            .join()
            .unwrap()
        });
        assert_eq!(wrapped, a, "more lanes than clients wrap around");
    }
}

//! Clients sending to several gateways in turn until told to stop, counting every answer in
//! the phase of the test current when it arrived: what clients saw before, during and after
//! an event (a failover, an upgrade).

use super::try_send;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What the clients saw in one phase.
#[derive(Default, Debug, Clone)]
pub struct Tally {
    pub ok: usize,
    pub limited: usize,
    /// 503 because the rate-limit store could not decide (`fail_closed`).
    pub unavailable: usize,
    /// Any other answer.
    pub other: usize,
    /// No answer at all (a refused or dropped connection).
    pub dropped: usize,
    /// Answers (of any status) per gateway, in the order of the URLs.
    pub answered_by: Vec<usize>,
}

pub struct Load {
    phase: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    tallies: Arc<Mutex<Vec<Tally>>>,
    /// The last answers, newest last: a run of decisions shows they have resumed.
    recent: Arc<Mutex<Vec<u16>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

pub const PHASES: usize = 4;

impl Load {
    /// `clients` threads, each sending as `x-client: client-N` to `urls` in turn.
    pub fn start(urls: Vec<String>, clients: usize) -> Load {
        let tally = Tally {
            answered_by: vec![0; urls.len()],
            ..Tally::default()
        };
        let mut load = Load {
            phase: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            tallies: Arc::new(Mutex::new(vec![tally; PHASES])),
            recent: Arc::new(Mutex::new(Vec::new())),
            threads: Vec::new(),
        };
        load.threads = (0..clients)
            .map(|c| {
                let (urls, phase, stop) = (urls.clone(), load.phase.clone(), load.stop.clone());
                let (tallies, recent) = (load.tallies.clone(), load.recent.clone());
                std::thread::spawn(move || {
                    let client = format!("client-{c}");
                    let mut i = c;
                    while !stop.load(Ordering::SeqCst) {
                        i += 1;
                        let to = i % urls.len();
                        let r = try_send("GET", &urls[to], &[("x-client", &client)], "");
                        let p = phase.load(Ordering::SeqCst);
                        let mut t = tallies.lock().unwrap();
                        let Ok(r) = r else {
                            t[p].dropped += 1;
                            recent.lock().unwrap().push(0);
                            continue;
                        };
                        t[p].answered_by[to] += 1;
                        match r.status {
                            200 => t[p].ok += 1,
                            429 => t[p].limited += 1,
                            503 if r.json()["error"] == "rate limit store unavailable" => {
                                t[p].unavailable += 1
                            }
                            _ => {
                                if t[p].other == 0 {
                                    println!("unexpected answer: {r:?}");
                                }
                                t[p].other += 1
                            }
                        }
                        let mut recent = recent.lock().unwrap();
                        recent.push(r.status);
                        let len = recent.len();
                        if len > 200 {
                            recent.drain(..len - 200);
                        }
                    }
                })
            })
            .collect();
        load
    }

    /// Count what arrives from now on in `phase` (below [`PHASES`]).
    pub fn enter(&self, phase: usize) {
        self.recent.lock().unwrap().clear();
        self.phase.store(phase, Ordering::SeqCst);
    }

    /// The last `n` answers were all decisions (admitted or limited).
    pub fn deciding(&self, n: usize) -> bool {
        let recent = self.recent.lock().unwrap();
        recent.len() >= n
            && recent[recent.len() - n..]
                .iter()
                .all(|s| *s == 200 || *s == 429)
    }

    /// What phase `phase` has counted so far.
    pub fn tally(&self, phase: usize) -> Tally {
        self.tallies.lock().unwrap()[phase].clone()
    }

    /// Stop the clients; the tallies of every phase.
    pub fn finish(mut self) -> Vec<Tally> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            t.join().expect("a client thread");
        }
        let tallies = self.tallies.lock().unwrap().clone();
        tallies
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

//! Dispatch decisions per second of the scheduling core with 100 nodes x 100
//! devices, against a bare `VecDeque` push/pop of as many items (the floor
//! any queue-based scheduler pays), measured in the same run.
//!
//! `cargo bench -p relaymesh-scheduler --bench dispatch`

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Instant;

use relaymesh_scheduler::dispatch::NodeQueues;

const NODES: usize = 100;
const DEVICES: usize = 100;
const TASKS_PER_DEVICE: usize = 20;
const SLOTS: usize = 20;

fn core_run() -> (usize, f64) {
    let mut nodes: Vec<NodeQueues<u32, u64>> = (0..NODES)
        .map(|_| {
            let mut n = NodeQueues::new(SLOTS);
            for d in 0..DEVICES as u32 {
                n.add_device(d);
            }
            n
        })
        .collect();
    let mut id = 0u64;
    for n in &mut nodes {
        for d in 0..DEVICES as u32 {
            for _ in 0..TASKS_PER_DEVICE {
                n.enqueue(&d, id).expect("attached");
                id += 1;
            }
        }
    }
    let start = Instant::now();
    let mut decisions = 0usize;
    let mut running: Vec<Vec<u32>> = (0..NODES).map(|_| Vec::with_capacity(SLOTS)).collect();
    loop {
        let mut any = false;
        for (n, run) in nodes.iter_mut().zip(running.iter_mut()) {
            while let Some((d, t)) = n.start_next() {
                black_box(t);
                run.push(d);
                decisions += 1;
            }
            // Every running task finishes; the freed slots refill next round.
            for d in run.drain(..) {
                n.finish(&d);
                any = true;
            }
        }
        if !any {
            break;
        }
    }
    (decisions, start.elapsed().as_secs_f64())
}

fn baseline_run(items: usize) -> f64 {
    let mut q: VecDeque<u64> = (0..items as u64).collect();
    let start = Instant::now();
    while let Some(x) = q.pop_front() {
        black_box(x);
    }
    black_box(&mut q);
    start.elapsed().as_secs_f64()
}

fn main() {
    let mut best_core = f64::MAX;
    let mut best_base = f64::MAX;
    let mut decisions = 0;
    for _ in 0..5 {
        let (n, secs) = core_run();
        decisions = n;
        best_core = best_core.min(secs);
        best_base = best_base.min(baseline_run(n));
    }
    let rate = decisions as f64 / best_core;
    let base_rate = decisions as f64 / best_base;
    println!(
        "dispatch core: {decisions} decisions ({NODES} nodes x {DEVICES} devices x {TASKS_PER_DEVICE} tasks, {SLOTS} slots) in {:.1} ms = {:.2} M decisions/s",
        best_core * 1e3,
        rate / 1e6
    );
    println!(
        "baseline VecDeque pop: {:.2} M items/s; the core costs {:.1}x the bare queue per decision",
        base_rate / 1e6,
        base_rate / rate
    );
}

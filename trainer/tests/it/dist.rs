//! The c10d bridge for real: two ranks (threads of this process) rendezvous over a TCPStore on
//! 127.0.0.1 and run Gloo collectives; a rank that leaves makes the other fail, naming it.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use mdm_trainer::dist::{Group, Launch};
use mdm_trainer::tch::{Kind, Tensor};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn launch(rank: usize, world: usize, port: u16) -> Launch {
    Launch { rank, world, local_rank: rank, master_addr: "127.0.0.1".into(), master_port: port, launcher: "test" }
}

/// Runs `f(rank, group)` on `world` threads, returns their results in rank order.
fn on_ranks<T: Send + 'static>(world: usize, timeout: Duration, f: fn(usize, Group) -> T) -> Vec<T> {
    let port = free_port();
    let handles: Vec<_> = (0..world)
        .map(|r| {
            std::thread::spawn(move || {
                let g = Group::connect(&launch(r, world, port), timeout).expect("connect");
                f(r, g)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("rank thread")).collect()
}

#[test]
fn all_reduce_broadcast_and_barrier_across_two_ranks() {
    let out = on_ranks(2, Duration::from_secs(30), |r, g| {
        assert_eq!((g.rank, g.world), (r, 2));
        let t = Tensor::from_slice(&[1.0f32 + r as f32, 10.0 * r as f32, -3.0]);
        g.all_reduce_sum(&t, "sum").unwrap();
        let sum = Vec::<f32>::try_from(&t).unwrap();
        let m = Tensor::from_slice(&[r as f64, -(r as f64)]);
        g.all_reduce_max(&m, "max").unwrap();
        let max = Vec::<f64>::try_from(&m).unwrap();
        // Non-contiguous input: staged through a contiguous copy and written back.
        let b = Tensor::arange(6, (Kind::Float, mdm_trainer::tch::Device::Cpu)).view([2, 3]).tr() * (r as f64 + 1.0);
        g.broadcast(&b, 1, "broadcast").unwrap();
        let bc = Vec::<f32>::try_from(b.contiguous().view([-1])).unwrap();
        g.barrier("barrier").unwrap();
        g.check_same(0xDEAD_BEEF_0000_1234, "a hash").unwrap();
        let differ = g.check_same(r as u64 * 0x1_0000_0000, "the config").unwrap_err().to_string();
        (sum, max, bc, differ)
    });
    for (sum, max, bc, differ) in out {
        assert_eq!(sum, vec![3.0, 10.0, -6.0]);
        assert_eq!(max, vec![1.0, 0.0]);
        assert_eq!(bc, vec![0.0, 6.0, 2.0, 8.0, 4.0, 10.0]);
        assert!(differ.contains("ranks disagree on the config"), "{differ}");
    }
}

#[test]
fn a_rank_that_leaves_is_named_by_the_other() {
    let out = on_ranks(2, Duration::from_secs(20), |r, g| {
        g.barrier("start").unwrap();
        if r == 1 {
            drop(g); // leaves: its heartbeat stops and its connections close
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
        let t0 = Instant::now();
        let t = Tensor::from_slice(&[1.0f32]);
        let e = g.all_reduce_sum(&t, "gradient all-reduce at step 3").unwrap_err().to_string();
        Some((e, t0.elapsed()))
    });
    let (e, took) = out[0].clone().expect("rank 0 result");
    assert!(e.contains("rank 0: gradient all-reduce at step 3 failed"), "{e}");
    assert!(e.contains("rank 1 (silent for"), "{e}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[test]
fn nccl_set_up_fails_clearly_where_there_is_no_nccl() {
    if mdm_trainer::dist::nccl_available() {
        eprintln!("NCCL is loadable on this machine: the CPU-only failure path is not exercised here");
        return;
    }
    let out = on_ranks(2, Duration::from_secs(20), |_, mut g| g.enable_nccl(0).unwrap_err().to_string());
    for e in out {
        assert!(e.contains("NCCL set-up on cuda:0 failed") && e.contains("MDM_DIST_BACKEND=gloo"), "{e}");
    }
}

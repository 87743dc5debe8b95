//! `mdm train --config FILE [--resume] [--nproc N]`: one training run (see
//! `mdm_trainer::train`). Under torchrun or Slurm each process is one rank (read from the
//! environment); `--nproc N` spawns N local ranks itself, like `torchrun --standalone`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use mdm_trainer::dist::Launch;
use mdm_trainer::train::{train_from_file, Outcome, RunOptions, DEFAULT_DIST_TIMEOUT};

#[derive(Args)]
pub struct TrainArgs {
    /// Run config (TOML; see configs/).
    #[arg(long)]
    config: PathBuf,
    /// Continue from the newest checkpoint in the run folder (exactly: same losses on CPU).
    #[arg(long)]
    resume: bool,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
    /// Stop (with a checkpoint) after this many steps of this invocation.
    #[arg(long)]
    stop_after: Option<u64>,
    /// Spawn this many local ranks (data-parallel on this machine, rendezvous on 127.0.0.1);
    /// under torchrun or Slurm leave it out: each process reads its rank from the environment.
    #[arg(long)]
    nproc: Option<usize>,
    /// Seconds a rank waits for the others (rendezvous, each collective) before failing with
    /// the name of the rank that stopped answering.
    #[arg(long, default_value_t = DEFAULT_DIST_TIMEOUT.as_secs())]
    dist_timeout: u64,
}

pub fn run(a: TrainArgs) -> Result<ExitCode> {
    if let Some(n) = a.nproc {
        return spawn_local(n, &a);
    }
    let launch = Launch::from_env().context("reading the launcher's environment")?;
    let opts = RunOptions {
        resume: a.resume,
        quiet: a.quiet,
        stop_after: a.stop_after,
        launch,
        dist_timeout: Some(Duration::from_secs(a.dist_timeout.max(1))),
    };
    let outcome = train_from_file(&a.config, &opts).with_context(|| format!("training {}", a.config.display()))?;
    let lead = opts.launch.as_ref().is_none_or(|l| l.rank == 0);
    match outcome {
        Outcome::Finished { step, checkpoint } => {
            if lead {
                println!("finished at step {step}: {}", checkpoint.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Interrupted { step, checkpoint } => {
            if lead {
                println!("stopped at step {step}: {} (continue with --resume)", checkpoint.display());
            }
            Ok(ExitCode::from(if a.stop_after.is_some() { 0 } else { 130 }))
        }
    }
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
}

/// Runs `n` copies of this command as ranks 0..n on 127.0.0.1 (torchrun's variables), forwards
/// SIGINT/SIGTERM to them, and returns the first failing rank's exit code. When a rank fails,
/// the others get the collective timeout (plus 10 s) to fail on their own with a message naming
/// it, then are killed.
fn spawn_local(n: usize, a: &TrainArgs) -> Result<ExitCode> {
    if n == 0 {
        bail!("--nproc must be at least 1");
    }
    if std::env::var_os("RANK").is_some() || std::env::var_os("SLURM_PROCID").is_some() {
        bail!("--nproc spawns its own ranks: do not combine it with torchrun or srun");
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port on 127.0.0.1")?
        .port();
    let exe = std::env::current_exe().context("locating the mdm binary")?;
    // Like torchrun: split the cores between ranks unless the user chose.
    let threads = std::env::var("OMP_NUM_THREADS").ok().unwrap_or_else(|| {
        let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
        (cores / n).max(1).to_string()
    });
    // SAFETY: installs an async-signal-safe handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let mut children: Vec<Child> = vec![];
    for rank in 0..n {
        let mut cmd = Command::new(&exe);
        cmd.arg("train").arg("--config").arg(&a.config).arg("--dist-timeout").arg(a.dist_timeout.to_string());
        if a.resume {
            cmd.arg("--resume");
        }
        if a.quiet {
            cmd.arg("--quiet");
        }
        if let Some(s) = a.stop_after {
            cmd.arg("--stop-after").arg(s.to_string());
        }
        cmd.env("RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("OMP_NUM_THREADS", &threads);
        // Own process group: a terminal's Ctrl-C reaches only this launcher, which forwards one
        // SIGTERM (a rank that got two would exit before its checkpoint). A rank whose
        // launcher dies gets SIGTERM.
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
        }
        match cmd.spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                for c in &mut children {
                    let _ = c.kill();
                }
                return Err(e).with_context(|| format!("starting rank {rank} ({})", exe.display()));
            }
        }
    }
    let pids: Vec<i32> = children.iter().map(|c| c.id() as i32).collect();
    let mut codes: Vec<Option<i32>> = vec![None; n];
    let mut first_failure: Option<(usize, i32)> = None;
    let mut deadline: Option<Instant> = None;
    let mut forwarded = false;
    while codes.iter().any(Option::is_none) {
        if SIGNALLED.load(Ordering::SeqCst) && !forwarded {
            forwarded = true;
            for (pid, code) in pids.iter().zip(&codes) {
                if code.is_none() {
                    // SAFETY: signalling our own child processes.
                    unsafe { libc::kill(*pid, libc::SIGTERM) };
                }
            }
        }
        for (rank, child) in children.iter_mut().enumerate() {
            if codes[rank].is_some() {
                continue;
            }
            if let Some(status) = child.try_wait().with_context(|| format!("waiting for rank {rank}"))? {
                let code = status.code().unwrap_or_else(|| 128 + status_signal(&status));
                codes[rank] = Some(code);
                if code != 0 && first_failure.is_none() {
                    first_failure = Some((rank, code));
                    deadline = Some(Instant::now() + Duration::from_secs(a.dist_timeout + 10));
                }
            }
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            for (rank, child) in children.iter_mut().enumerate() {
                if codes[rank].is_none() {
                    eprintln!("rank {rank} did not stop after rank {} failed: killing it", first_failure.map_or(0, |f| f.0));
                    let _ = child.kill();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match first_failure {
        None => Ok(ExitCode::SUCCESS),
        Some((_, 130)) => Ok(ExitCode::from(130)),
        Some((rank, code)) => {
            eprintln!("rank {rank} exited with code {code}");
            Ok(ExitCode::from(code.clamp(1, 255) as u8))
        }
    }
}

fn status_signal(status: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.signal().unwrap_or(0)
}

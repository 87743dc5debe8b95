//! Where a rank is: torchrun's or Slurm's environment variables.

use crate::error::{Error, Result};

/// One rank's place in a data-parallel run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub world: usize,
    /// Rank on this host: the CUDA device it uses.
    pub local_rank: usize,
    pub master_addr: String,
    pub master_port: u16,
    /// Which launcher's variables were read (`torchrun`, `slurm`).
    pub launcher: &'static str,
}

/// torchrun's default rendezvous port.
const DEFAULT_PORT: u16 = 29500;

impl Launch {
    /// Reads the process environment (see [`Launch::from_vars`]).
    pub fn from_env() -> Result<Option<Launch>> {
        Launch::from_vars(|k| std::env::var(k).ok())
    }

    /// torchrun (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`) wins over
    /// Slurm (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`; master = `MASTER_ADDR` or the
    /// first host of `SLURM_STEP_NODELIST`/`SLURM_JOB_NODELIST`, port = `MASTER_PORT` or
    /// 20000 + job id mod 10000, the same on every task). `None`: a single process (no
    /// variables, or a world of 1).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let num = |k: &str, v: String| -> Result<usize> {
            v.trim().parse().map_err(|_| Error::Dist { rank: 0, msg: format!("{k}={v:?} is not a non-negative integer") })
        };
        let port = |v: String| -> Result<u16> {
            v.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| Error::Dist { rank: 0, msg: format!("MASTER_PORT={v:?} is not a port (1-65535)") })
        };
        let launch = if let (Some(r), Some(w)) = (var("RANK"), var("WORLD_SIZE")) {
            Launch {
                rank: num("RANK", r)?,
                world: num("WORLD_SIZE", w)?,
                local_rank: var("LOCAL_RANK").map(|v| num("LOCAL_RANK", v)).transpose()?.unwrap_or(0),
                master_addr: var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
                master_port: var("MASTER_PORT").map(port).transpose()?.unwrap_or(DEFAULT_PORT),
                launcher: "torchrun",
            }
        } else if let (Some(r), Some(w)) = (var("SLURM_PROCID"), var("SLURM_NTASKS")) {
            let addr = match var("MASTER_ADDR") {
                Some(a) => a,
                None => {
                    let list = var("SLURM_STEP_NODELIST").or_else(|| var("SLURM_JOB_NODELIST")).ok_or_else(|| {
                        Error::Dist { rank: 0, msg: "Slurm: neither MASTER_ADDR nor SLURM_JOB_NODELIST is set".into() }
                    })?;
                    first_slurm_host(&list)
                        .ok_or_else(|| Error::Dist { rank: 0, msg: format!("Slurm: cannot read a host from {list:?}") })?
                }
            };
            let master_port = match (var("MASTER_PORT"), var("SLURM_JOB_ID")) {
                (Some(p), _) => port(p)?,
                (None, Some(j)) => 20000 + (num("SLURM_JOB_ID", j)? % 10000) as u16,
                (None, None) => DEFAULT_PORT,
            };
            Launch {
                rank: num("SLURM_PROCID", r)?,
                world: num("SLURM_NTASKS", w)?,
                local_rank: var("SLURM_LOCALID").map(|v| num("SLURM_LOCALID", v)).transpose()?.unwrap_or(0),
                master_addr: addr,
                master_port,
                launcher: "slurm",
            }
        } else {
            return Ok(None);
        };
        if launch.world == 0 || launch.rank >= launch.world {
            return Err(Error::Dist {
                rank: launch.rank,
                msg: format!("{}: rank {} is not below the world size {}", launch.launcher, launch.rank, launch.world),
            });
        }
        Ok((launch.world > 1).then_some(launch))
    }
}

/// The first host of a Slurm node list: `gpu[003-006,9],cpu1` → `gpu003`.
pub fn first_slurm_host(list: &str) -> Option<String> {
    let list = list.trim();
    // The first top-level item (commas inside brackets belong to ranges).
    let mut depth = 0;
    let end = list
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                _ => {}
            }
            c == ',' && depth == 0
        })
        .map_or(list.len(), |(i, _)| i);
    let item = &list[..end];
    let mut out = String::new();
    let mut rest = item;
    while let Some(open) = rest.find('[') {
        let close = rest[open..].find(']')? + open;
        out.push_str(&rest[..open]);
        let first = rest[open + 1..close].split(',').next()?.split('-').next()?;
        out.push_str(first);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    (!out.is_empty() && !out.contains(']')).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn torchrun_variables() {
        let l = Launch::from_vars(env(&[
            ("RANK", "5"),
            ("WORLD_SIZE", "32"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node7"),
            ("MASTER_PORT", "29400"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((l.rank, l.world, l.local_rank, l.master_addr.as_str(), l.master_port), (5, 32, 1, "node7", 29400));
        assert_eq!(l.launcher, "torchrun");
    }

    #[test]
    fn slurm_variables_and_node_lists() {
        let l = Launch::from_vars(env(&[
            ("SLURM_PROCID", "9"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_JOB_NODELIST", "gpu[003-006,9],cpu1"),
            ("SLURM_JOB_ID", "123456"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((l.rank, l.world, l.local_rank, l.master_addr.as_str()), (9, 16, 1, "gpu003"));
        assert_eq!(l.master_port, 20000 + 3456);
        assert_eq!(first_slurm_host("a1,b2").as_deref(), Some("a1"));
        assert_eq!(first_slurm_host("rack[1-2]-n[07-08]").as_deref(), Some("rack1-n07"));
        assert_eq!(first_slurm_host("bad[1-2"), None);
    }

    #[test]
    fn single_process_and_bad_values() {
        assert_eq!(Launch::from_vars(env(&[])).unwrap(), None);
        assert_eq!(Launch::from_vars(env(&[("RANK", "0"), ("WORLD_SIZE", "1")])).unwrap(), None);
        let e = Launch::from_vars(env(&[("RANK", "2"), ("WORLD_SIZE", "2")])).unwrap_err().to_string();
        assert!(e.contains("not below the world size"), "{e}");
        let e = Launch::from_vars(env(&[("RANK", "x"), ("WORLD_SIZE", "2")])).unwrap_err().to_string();
        assert!(e.contains("RANK=\"x\""), "{e}");
        let e = Launch::from_vars(env(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "0")])).unwrap_err().to_string();
        assert!(e.contains("MASTER_PORT"), "{e}");
    }
}

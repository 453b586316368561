//! What the benchmark reads from the operating system and the Docker engine: a process's CPU
//! time and memory from `/proc`, TCP socket states from `/proc/net/tcp`, and the description of
//! the machine printed at the top of the report (the engine's part through bollard).

use std::io;
use std::time::Duration;

use super::{BoxError, Context};

/// Clock ticks per second of the `utime`/`stime` fields of `/proc/<pid>/stat`.
pub(crate) fn clock_ticks_per_sec() -> u64 {
    #[allow(unsafe_code)]
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // Linux has used 100 everywhere for decades; a failed call (-1) falls back to it.
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// User plus system CPU time of a whole process (all its threads), in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses; fields resume after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("malformed /proc/<pid>/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let field = |n: usize| -> io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other(format!("no field {n} in /proc/{pid}/stat")))
    };
    Ok(field(14)? + field(15)?)
}

/// A `kB` line of `/proc/<pid>/status`, e.g. `VmRSS`.
pub(crate) fn status_kb(pid: u32, key: &str) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .strip_prefix(':')?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .ok_or_else(|| io::Error::other(format!("no {key} in /proc/{pid}/status")))
}

/// Resident memory of a process in KiB.
pub(crate) fn rss_kb(pid: u32) -> io::Result<u64> {
    status_kb(pid, "VmRSS")
}

/// CPU time and time spent runnable but waiting for a CPU, in nanoseconds, summed over the
/// threads of a process that share a name (`tokio-rt-worker`, `store-writer`, …).
pub(crate) type ThreadTimes = std::collections::BTreeMap<String, (u64, u64)>;

/// [`ThreadTimes`] of `pid` now, from `/proc/<pid>/task/*/schedstat`.
pub(crate) fn thread_times(pid: u32) -> ThreadTimes {
    let mut out = ThreadTimes::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(task.path().join("comm")),
            std::fs::read_to_string(task.path().join("schedstat")),
        ) else {
            continue;
        };
        let mut f = stat
            .split_whitespace()
            .map(|v| v.parse::<u64>().unwrap_or(0));
        let (run, wait) = (f.next().unwrap_or(0), f.next().unwrap_or(0));
        let e = out.entry(comm.trim_end().to_owned()).or_default();
        e.0 += run;
        e.1 += wait;
    }
    out
}

/// What the threads did between two [`thread_times`] readings.
pub(crate) fn thread_times_since(before: &ThreadTimes, after: &ThreadTimes) -> ThreadTimes {
    after
        .iter()
        .map(|(name, (run, wait))| {
            let (r0, w0) = before.get(name).copied().unwrap_or((0, 0));
            (
                name.clone(),
                (run.saturating_sub(r0), wait.saturating_sub(w0)),
            )
        })
        .filter(|(_, (run, wait))| run + wait > 0)
        .collect()
}

/// The pid of the first process whose command name is `comm` (e.g. `dockerd`), if visible.
pub(crate) fn find_pid(comm: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let name = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (name.trim_end() == comm).then_some(pid)
    })
}

/// The effective uid and gid of this process, from `/proc/self/status`.
pub(crate) fn effective_ids() -> io::Result<(u32, u32)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    // "Uid:\treal\teffective\tsaved\tfs"
    let effective = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.split_whitespace().nth(1)?.parse().ok())
            .ok_or_else(|| io::Error::other(format!("no {key} in /proc/self/status")))
    };
    Ok((effective("Uid:")?, effective("Gid:")?))
}

/// `/proc/loadavg`'s three load averages.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

/// One IPv4 TCP socket as `/proc/net/tcp` shows it.
#[derive(Clone, Debug)]
pub(crate) struct TcpEntry {
    /// The kernel's state name (`ESTABLISHED`, `FIN_WAIT1`, …).
    pub state: &'static str,
    /// Bytes queued for sending and not yet acknowledged.
    pub tx_queue: u64,
    /// Bytes received and not yet read by the owner.
    pub rx_queue: u64,
}

/// The socket of this network namespace whose local port is `local` and remote port `remote`.
pub(crate) fn tcp_socket(local: u16, remote: u16) -> Option<TcpEntry> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = |addr: &str| {
        addr.rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || port(f[1])? != local || port(f[2])? != remote {
            return None;
        }
        let (tx, rx) = f[4].split_once(':')?;
        Some(TcpEntry {
            state: tcp_state_name(f[3]),
            tx_queue: u64::from_str_radix(tx, 16).ok()?,
            rx_queue: u64::from_str_radix(rx, 16).ok()?,
        })
    })
}

fn tcp_state_name(hex: &str) -> &'static str {
    match hex {
        "01" => "ESTABLISHED",
        "02" => "SYN_SENT",
        "03" => "SYN_RECV",
        "04" => "FIN_WAIT1",
        "05" => "FIN_WAIT2",
        "06" => "TIME_WAIT",
        "07" => "CLOSE",
        "08" => "CLOSE_WAIT",
        "09" => "LAST_ACK",
        "0A" => "LISTEN",
        "0B" => "CLOSING",
        _ => "UNKNOWN",
    }
}

/// The machine the numbers were taken on.
#[derive(Clone, Debug)]
pub(crate) struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory: String,
    pub kernel: String,
    pub os: String,
    pub docker: String,
    pub load_start: String,
}

impl Machine {
    /// Reads everything but the engine's answer from `/proc` and `/etc`.
    pub(crate) async fn describe(engine: &bollard::Docker) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "model name").then(|| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines().find_map(|l| {
                    let kb: f64 = l
                        .strip_prefix("MemTotal:")?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()?;
                    Some(format!("{:.1} GiB", kb / 1024.0 / 1024.0))
                })
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let os = std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|o| {
                o.lines().find_map(|l| {
                    Some(l.strip_prefix("PRETTY_NAME=")?.trim_matches('"').to_owned())
                })
            })
            .unwrap_or_else(|| "unknown".into());
        let docker = match docker_description(engine).await {
            Ok(d) => d,
            Err(e) => format!("unknown ({e})"),
        };
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            memory,
            kernel,
            os,
            docker,
            load_start: load_average(),
        }
    }
}

/// The engine's version, API version, storage driver and cgroup version.
async fn docker_description(engine: &bollard::Docker) -> Result<String, BoxError> {
    const LIMIT: Duration = Duration::from_secs(10);
    let (version, info) = tokio::time::timeout(LIMIT, async {
        tokio::try_join!(engine.version(), engine.info())
    })
    .await
    .map_err(|_| format!("the engine did not answer within {LIMIT:?}"))?
    .ctx("asking the Docker engine about itself")?;
    let or_unknown = |v: Option<String>| v.unwrap_or_else(|| "?".into());
    Ok(format!(
        "Docker Engine {} (API {}), storage driver {}, cgroup {}, {} containers on the host at start",
        or_unknown(version.version),
        or_unknown(version.api_version),
        or_unknown(info.driver),
        info.cgroup_version.map_or("?".into(), |c| c.to_string()),
        info.containers.unwrap_or(0)
    ))
}

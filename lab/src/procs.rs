//! Processes the lab starts and stops (agents, servers).

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::state::Proc;

/// Record a process just started.
pub fn record(pid: u32, marker: impl Into<String>) -> Proc {
    let pid = i32::try_from(pid).unwrap_or(i32::MAX);
    Proc {
        pid,
        marker: marker.into(),
        start_time: stat(pid).map(|(_, start)| start),
    }
}

/// `(state char, start time in ticks)` from `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is field 3, starttime field 22.
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((fields.first()?.chars().next()?, fields.get(19)?.parse().ok()?))
}

/// Is the process alive (not gone, not a zombie) and still the one we started?
pub fn alive(p: &Proc) -> bool {
    let Some((state, start)) = stat(p.pid) else {
        return false;
    };
    if matches!(state, 'Z' | 'X') {
        return false;
    }
    match p.start_time {
        Some(recorded) => recorded == start,
        None => std::fs::read(format!("/proc/{}/cmdline", p.pid))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&p.marker)),
    }
}

/// SIGTERM every live process, wait up to `grace`, then SIGKILL survivors.
/// Returns one message per failure.
pub fn stop_all(procs: &[Proc], grace: Duration) -> Vec<String> {
    let mut errors = Vec::new();
    let live: Vec<&Proc> = procs.iter().filter(|p| alive(p)).collect();
    for p in &live {
        if let Err(e) = kill(Pid::from_raw(p.pid), Signal::SIGTERM)
            && e != nix::errno::Errno::ESRCH
        {
            errors.push(format!("SIGTERM to pid {} ({}): {e}", p.pid, p.marker));
        }
    }
    let deadline = Instant::now() + grace;
    while live.iter().any(|p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in live.iter().filter(|p| alive(p)) {
        match kill(Pid::from_raw(p.pid), Signal::SIGKILL) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => errors.push(format!("SIGKILL to pid {} ({}): {e}", p.pid, p.marker)),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while live.iter().any(|p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in live.iter().filter(|p| alive(p)) {
        errors.push(format!("pid {} ({}) survived SIGKILL", p.pid, p.marker));
    }
    errors
}

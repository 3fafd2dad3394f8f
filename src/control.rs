//! `portico reload` and `portico upgrade`: act on a running gateway from the command line
//! (and from systemd's `ExecReload`). Both check the config first, so a bad file is
//! reported here and changes nothing.

use crate::runtime::Runtime;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a new process may take to take the listeners over and serve.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);

fn send(pid: u32, signal: libc::c_int) -> Result<(), String> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| format!("{pid} is not a process id"))?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(format!(
            "cannot signal process {pid}: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// The running gateway's pid: given, or read from the config's pid file.
pub fn running_pid(given: Option<u32>, rt: &Runtime) -> Result<u32, String> {
    if let Some(pid) = given {
        return Ok(pid);
    }
    let path = &rt.server.pid_file;
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read pid file {path}: {e}"))?;
    text.trim()
        .parse()
        .map_err(|_| format!("pid file {path} holds {:?}, not a pid", text.trim()))
}

/// Whether `pid` runs a binary other than this one (the file was replaced since it started).
pub fn runs_older_binary(pid: u32) -> bool {
    let Ok(this) = std::env::current_exe().and_then(std::fs::metadata) else {
        return false;
    };
    match std::fs::metadata(format!("/proc/{pid}/exe")) {
        Ok(running) => (running.dev(), running.ino()) != (this.dev(), this.ino()),
        // A process that gained capabilities at exec (systemd's AmbientCapabilities) hides
        // its exe link; then compare when it started with when this file was installed.
        Err(_) => started_at(pid).is_some_and(|start| this.ctime() > start),
    }
}

/// When `pid` started, in Unix seconds (from /proc, readable for any visible process).
fn started_at(pid: u32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may itself hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let ticks: i64 = rest.split(' ').nth(19)?.parse().ok()?;
    let boot: i64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf only reads a system constant.
    let hz = i64::from(i32::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?);
    (hz > 0).then(|| boot + ticks / hz)
}

/// Where the new process's standard error goes: the running one's (a log file, a pipe),
/// when it can be opened; else nowhere (journald's socket cannot be reopened: set
/// `server.error_log` to keep the log of an upgraded process).
fn error_stream(pid: u32) -> Stdio {
    std::fs::OpenOptions::new()
        .append(true)
        .open(format!("/proc/{pid}/fd/2"))
        .map_or_else(|_| Stdio::null(), Stdio::from)
}

/// Ask `pid` to reload its config (SIGHUP).
pub fn reload(pid: u32) -> Result<(), String> {
    send(pid, libc::SIGHUP)
}

/// Replace `pid` with a new process of this binary without closing a listener: start
/// `portico run -u`, wait until it waits for the sockets, send the old one SIGQUIT (it
/// hands the sockets over and drains), and wait until the new one serves. Returns the new
/// process's pid.
pub fn upgrade(conf: &Path, pid: u32, rt: &Runtime) -> Result<u32, String> {
    let sock = Path::new(&rt.server.upgrade_sock);
    let pid_file = Path::new(&rt.server.pid_file);
    // Its appearance is how we know the new process listens for the sockets.
    let _ = std::fs::remove_file(sock);
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut child = Command::new(exe)
        .args(["run", "-u", "-c"])
        .arg(conf)
        .stdin(Stdio::null())
        // Not this command's streams: `portico upgrade | cat` must end when this command
        // does, and a closed terminal must not break the new gateway's logging.
        .stdout(Stdio::null())
        .stderr(error_stream(pid))
        // Its own process group: a Ctrl-C meant for this command must not reach it.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start the new process: {e}"))?;
    let new_pid = child.id();
    let deadline = Instant::now() + UPGRADE_TIMEOUT;
    let exited = |child: &mut std::process::Child| -> Option<String> {
        match child.try_wait() {
            Ok(Some(status)) => Some(format!("the new process exited ({status})")),
            _ => None,
        }
    };
    while !sock.exists() {
        if let Some(e) = exited(&mut child) {
            return Err(e);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the new process {new_pid} did not listen on {} in time",
                sock.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // bind() creates the file just before listen(); give it that moment.
    std::thread::sleep(Duration::from_millis(50));
    send(pid, libc::SIGQUIT)?;
    let serving = || {
        std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            == Some(new_pid)
    };
    while !serving() {
        if let Some(e) = exited(&mut child) {
            return Err(e);
        }
        if Instant::now() > deadline {
            return Err(format!("the new process {new_pid} did not serve in time"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(new_pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_runs_this_binary_and_started_recently() {
        let me = std::process::id();
        assert!(!runs_older_binary(me));
        let start = started_at(me).expect("start time");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        assert!((now - start).abs() < 600, "started {start}, now {now}");
    }
}

//! A child process the harness started, and stopping exactly it.
//!
//! Each child gets its own process group, so a Ctrl-C in the terminal
//! reaches only the harness, which then stops its children in order. A
//! [`Child`] is stopped when it is dropped (on success, on error, on
//! Ctrl-C, which drops the whole run): SIGTERM to its PID, up to 5 s for it
//! to exit, then SIGKILL; then SIGKILL to each process that was its
//! descendant when the stop began and still runs (nginx or HAProxy workers
//! orphaned by a killed master), checked by PID *and* start time so that a
//! reused PID is never hit.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rustix::process::{kill_process, Pid, Signal};

use super::proc;

/// How long a process gets to exit after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

/// A started process; stopped on drop.
#[derive(Debug)]
pub struct Child {
    name: String,
    child: Option<std::process::Child>,
    log: PathBuf,
}

impl Child {
    /// Starts `cmd` in its own process group with stdout and stderr going
    /// to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Child> {
        let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        Ok(Child {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The PID, or 0 once stopped.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Everything the process wrote so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// `Some(status)` once the process has exited (and is reaped).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        child.try_wait().ok().flatten()
    }

    /// Fails with the end of the log if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.exited() {
            bail!(
                "{} exited ({status}); its log {} ends with:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log_text(), 15)
            );
        }
        Ok(())
    }

    /// Sends a signal to the process itself (not its group).
    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        let pid = Pid::from_raw(self.pid()).context("process already stopped")?;
        kill_process(pid, sig).with_context(|| format!("cannot signal {}", self.name))?;
        Ok(())
    }

    /// Stops the process and whatever it forked; see the module doc.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let root = child.id() as i32;
        let descendants: Vec<proc::Stat> = proc::tree(root).into_iter().skip(1).collect();
        if matches!(child.try_wait(), Ok(None)) {
            if let Some(pid) = Pid::from_raw(root) {
                let _ = kill_process(pid, Signal::TERM);
            }
            let start = Instant::now();
            while matches!(child.try_wait(), Ok(None)) && start.elapsed() < GRACE {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(child.try_wait(), Ok(None)) {
                eprintln!(
                    "compare: {} (pid {root}) still runs {GRACE:?} after SIGTERM: SIGKILL",
                    self.name
                );
                let _ = child.kill();
            }
        }
        let _ = child.wait();
        for d in descendants {
            if proc::still_running(&d) {
                if let Some(pid) = Pid::from_raw(d.pid) {
                    eprintln!("compare: {} left pid {} behind: SIGKILL", self.name, d.pid);
                    let _ = kill_process(pid, Signal::KILL);
                }
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `n` lines of a text.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Where an executable is: `name` looked up in `PATH`, then in `/usr/sbin`
/// and `/sbin` (where Debian puts nginx and HAProxy, often not in a user's
/// `PATH`).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }

    #[test]
    fn stops_a_child_and_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 600 & sleep 600 & wait"]);
        let mut c = Child::spawn("sh", cmd, &dir.path().join("log")).unwrap();
        let root = c.pid();
        let mut kids = Vec::new();
        for _ in 0..100 {
            kids = proc::tree(root);
            if kids.len() == 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(kids.len(), 3);
        c.stop();
        for k in kids {
            for _ in 0..100 {
                if !proc::still_running(&k) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(!proc::still_running(&k));
        }
    }
}

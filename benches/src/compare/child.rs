//! A child process the harness started, and stopping exactly it.
//!
//! Each child gets its own process group, so a Ctrl-C in the terminal
//! reaches only the harness, which then stops its children in order. A
//! [`Child`] is stopped when it is dropped (on success, on error, on
//! Ctrl-C, which drops the whole run): SIGTERM to its PID, up to 5 s for it
//! to exit, then SIGKILL; then SIGKILL to whatever is left in its process
//! group (nginx or HAProxy workers orphaned by a master that was killed, or
//! that died and was reaped earlier). A process group's id stays taken
//! while any member lives, so the signal never reaches anyone else.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rustix::process::{kill_process, kill_process_group, Pid, Signal};

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
        // Whatever it forked (nginx and HAProxy workers) is in its process
        // group, also when the root died and was reaped earlier (by
        // `check_running`) and its tree can no longer be walked. The group
        // id stays taken while any member lives, so this reaches only them.
        if let Some(group) = Pid::from_raw(root) {
            if kill_process_group(group, Signal::KILL).is_ok() {
                eprintln!(
                    "compare: {} left processes behind: SIGKILL to its group",
                    self.name
                );
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
    use super::super::procfs;
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
            kids = procfs::tree(root);
            if kids.len() == 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(kids.len(), 3);
        c.stop();
        assert_gone(kids);
    }

    #[test]
    fn stops_the_children_of_a_child_that_already_died() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        // The shell leaves two orphans behind, as a crashed master would.
        cmd.args(["-c", "sleep 600 & sleep 600 & sleep 1; exit 3"]);
        let mut c = Child::spawn("sh", cmd, &dir.path().join("log")).unwrap();
        let root = c.pid();
        let mut kids = Vec::new();
        for _ in 0..100 {
            kids = procfs::tree(root);
            if kids.len() == 4 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(kids.len(), 4, "shell, two sleeps and the foreground sleep");
        // Reaped by the check, as during a load run.
        let end = Instant::now() + Duration::from_secs(10);
        while c.check_running().is_ok() {
            assert!(Instant::now() < end, "the shell never exited");
            std::thread::sleep(Duration::from_millis(20));
        }
        c.stop();
        assert_gone(kids);
    }

    fn assert_gone(kids: Vec<procfs::Stat>) {
        for k in kids {
            for _ in 0..100 {
                if !procfs::still_running(&k) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            assert!(!procfs::still_running(&k));
        }
    }
}

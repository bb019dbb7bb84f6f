//! Starting one instance, without a shell, so that it cannot outlive the
//! balancer.
//!
//! The workspace forbids `unsafe`, so there is no `pre_exec` hook to set
//! the parent-death signal between fork and exec. The balancer instead
//! starts itself, `balancer supervise-exec --parent PID -- COMMAND...`
//! ([`exec`]): that process asks the kernel for SIGKILL when its parent
//! dies (`PR_SET_PDEATHSIG`), checks that its parent is still the balancer
//! (it may have died in between), then replaces itself with the command
//! (`execvp`, same pid; the signal setting survives exec). Two caveats
//! shape the callers:
//!
//! * the signal fires when the parent *thread* ends, so instances are
//!   spawned from the balancer's long-lived runtime threads, never from a
//!   `spawn_blocking` thread (those exit when idle);
//! * each instance leads its own process group (`process_group(0)`), so
//!   its stop signal, and the SIGKILL after `stop_timeout`, reach the
//!   processes it started too.

use std::ffi::OsString;
use std::process::Stdio;

/// The hidden subcommand that wraps every instance.
pub const EXEC_SUBCOMMAND: &str = "supervise-exec";

/// The command that starts `instance` (one slot of an instance) through
/// [`exec`]: stdout and stderr piped (see [`super::output`]), stdin
/// closed, its own process group.
pub fn command(
    instance: &config::Slot,
    processes: &config::ProcessesConfig,
) -> std::io::Result<tokio::process::Command> {
    let me = std::env::current_exe()?;
    let mut cmd = tokio::process::Command::new(me);
    cmd.arg(EXEC_SUBCOMMAND)
        .arg("--parent")
        .arg(std::process::id().to_string())
        .arg("--")
        .args(&instance.argv)
        .envs(instance.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        // The supervisor reaps it; a dropped handle must not leave it.
        .kill_on_drop(true);
    if let Some(dir) = &processes.cwd {
        cmd.current_dir(dir);
    }
    // Set in the child before it execs the wrapper (std drops the
    // supplementary groups too when the balancer is root), so the
    // wrapper's parent-death signal is set as that user and survives.
    if let Some(u) = &processes.run_as {
        cmd.uid(u.uid).gid(u.gid);
    }
    Ok(cmd)
}

/// Exit code of [`exec`] when its parent was gone before it could run.
pub const EXIT_ORPHANED: u8 = 125;
/// Exit code of [`exec`] when the command could not be started
/// (`sh` uses 127 for "not found" too).
pub const EXIT_CANNOT_EXEC: u8 = 127;

/// The body of `balancer supervise-exec --parent PID -- COMMAND...`: only
/// returns on failure, with the exit code to use.
pub fn exec(parent: u32, command: &[OsString]) -> u8 {
    use std::os::unix::process::CommandExt;
    let Some((program, args)) = command.split_first() else {
        eprintln!("supervise-exec: no command given");
        return EXIT_CANNOT_EXEC;
    };
    if let Err(e) =
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
    {
        eprintln!("supervise-exec: cannot set the parent-death signal: {e}");
        return EXIT_CANNOT_EXEC;
    }
    // The parent may have died before the line above: then nobody would
    // ever send the signal, and this process would run unsupervised.
    let ppid = rustix::process::Pid::as_raw(rustix::process::getppid());
    if u32::try_from(ppid).ok() != Some(parent) {
        eprintln!("supervise-exec: the balancer (pid {parent}) is gone; not starting");
        return EXIT_ORPHANED;
    }
    let e = std::process::Command::new(program).args(args).exec();
    eprintln!(
        "supervise-exec: cannot run {}: {e}",
        program.to_string_lossy()
    );
    EXIT_CANNOT_EXEC
}

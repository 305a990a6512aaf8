//! `--procs N`: the parent re-executes this binary N times, each child
//! taking the clients with `id % N == index`, and steps them through the
//! run together:
//!
//! ```text
//! child  → parent   @ready <connected> <failed>   clients connected (or nothing to connect)
//! parent → children go <start_ns>                 same schedule for all, on the shared clock
//! child  → parent   @settled                      window over, deliveries settled
//! parent → children stop                          (after sampling the server)
//! child  → parent   @result <json Partial>
//! ```
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::stats::{Partial, ServerFigures};
use super::target::Clock;
use super::{client::secs_ns, Scenario, ServerProbe, Settings};

/// The children; killed (by their own pid) if the parent gives up early.
struct Kids {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
}

impl Kids {
    fn tell(&mut self, line: &str) -> Result<(), String> {
        for (i, stdin) in self.stdins.iter_mut().enumerate() {
            writeln!(stdin, "{line}")
                .and_then(|()| stdin.flush())
                .map_err(|e| format!("writing to child {i}: {e}"))?;
        }
        Ok(())
    }
}

impl Drop for Kids {
    fn drop(&mut self) {
        self.stdins.clear();
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in &mut self.children {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Ok(None) => {
                        eprintln!("hubbub-load: killing child {}", c.id());
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
    }
}

type Lines = Receiver<(usize, Option<String>)>;

/// Waits for one line starting with `tag` from every child; returns the rest of each.
fn wait_all(rx: &Lines, n: usize, tag: &str, within: Duration) -> Result<Vec<String>, String> {
    let deadline = Instant::now() + within;
    let mut got: Vec<Option<String>> = vec![None; n];
    while got.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, Some(line))) => match line.strip_prefix(tag) {
                Some(rest) if got[i].is_none() => got[i] = Some(rest.trim().to_owned()),
                _ => eprintln!("hubbub-load: child {i}: {line}"),
            },
            // A child that already answered may exit (after @result).
            Ok((i, None)) if got[i].is_some() => {}
            Ok((i, None)) => {
                return Err(format!(
                    "child {i} exited while the parent waited for {tag}"
                ));
            }
            Err(RecvTimeoutError::Timeout) => {
                return Err(format!("children did not all send {tag} within {within:?}"));
            }
            Err(RecvTimeoutError::Disconnected) => return Err("children gone".to_owned()),
        }
    }
    Ok(got.into_iter().flatten().collect())
}

/// Runs the scenario in `s.procs` child processes and collects their partials.
pub fn run_parent(
    s: &Settings,
    server_pids: &[u32],
) -> Result<(Vec<Partial>, ServerFigures), String> {
    let mut probe = ServerProbe::new(server_pids);
    let clock = Clock::new(None);
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let n = s.procs as usize;
    let (tx, rx) = channel();
    let mut kids = Kids {
        children: Vec::with_capacity(n),
        stdins: Vec::with_capacity(n),
    };
    for i in 0..n {
        let mut child = Command::new(&exe)
            .args(&args)
            .args(["--child-index", &i.to_string()])
            .args(["--child-count", &n.to_string()])
            .args(["--epoch-ns", &clock.epoch_ns().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting child {i}: {e}"))?;
        let stdout = child.stdout.take().ok_or("child stdout")?;
        let stdin = child.stdin.take().ok_or("child stdin")?;
        kids.children.push(child);
        kids.stdins.push(stdin);
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((i, Some(line))).is_err() {
                    return;
                }
            }
            let _ = tx.send((i, None));
        });
    }
    drop(tx);

    let ready = wait_all(
        &rx,
        n,
        "@ready",
        Duration::from_secs_f64(s.connect_timeout_s + 40.0),
    )?;
    let connected: u64 = ready
        .iter()
        .filter_map(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    eprintln!("hubbub-load: {n} generator processes ready, {connected} clients connected");
    if s.scenario == Scenario::Idle {
        std::thread::sleep(Duration::from_secs(1));
        probe.after_connect();
    }
    let start = clock.now_ns() + 100_000_000;
    kids.tell(&format!("go {start}"))?;
    let window_start = start + secs_ns(s.warmup_s);
    std::thread::sleep(
        clock
            .instant_at(window_start)
            .saturating_duration_since(Instant::now()),
    );
    probe.window_start();
    let after_window = s.duration_s + s.settle_s + s.warmup_s + 40.0;
    wait_all(&rx, n, "@settled", Duration::from_secs_f64(after_window))?;
    probe.settled();
    kids.tell("stop")?;
    let results = wait_all(&rx, n, "@result", Duration::from_secs(40))?;
    let parts = results
        .iter()
        .enumerate()
        .map(|(i, j)| {
            serde_json::from_str::<Partial>(j).map_err(|e| format!("child {i} result: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    drop(kids);
    Ok((parts, probe.figures()))
}

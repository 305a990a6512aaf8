//! `hubbub-sim replay FILE`: a recording made by `hubbub --record-inputs`
//! fed to a fresh hub, with the hub's promises checked after every input
//! ([`crate::fuzz_targets::HubChecker`]: one close per connection, nothing
//! after it, presence and join/leave notices, chat to exactly its room,
//! the Centrifugo rules), and the hash of everything the hub output,
//! compared with the one the server wrote in the trailer.

use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::ExitCode;

use hubbub_core::record::{Engine, OutputHash, ReadError, Reader, Record};
use hubbub_core::{Hub, Input, Output, StoreEvent, Timestamp};

use crate::fuzz_targets::HubChecker;

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// A recording written by `hubbub --record-inputs`.
    pub file: PathBuf,
}

/// What a replay found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replayed {
    /// Records fed to the hub (inputs and timeouts).
    pub records: u64,
    pub outputs: u64,
    pub outputs_hash: u64,
    /// The trailer: (records, dropped, outputs hash); `None` when the
    /// recording has none (cut short: a crash, or still being written).
    pub trailer: Option<(u64, u64, u64)>,
    /// The first broken rule: input index and message.
    pub violation: Option<(u64, String)>,
    /// Why the replay stopped before the end, if it did.
    pub stopped: Option<String>,
    pub redacted: bool,
    pub config_incomplete: bool,
}

impl Replayed {
    /// Whether the recording holds everything the hub received.
    #[must_use]
    pub fn complete(&self) -> bool {
        self.stopped.is_none() && self.trailer.is_some_and(|(_, dropped, _)| dropped == 0)
    }

    /// Complete, and the replay's outputs hash as the server's did.
    #[must_use]
    pub fn same_outputs(&self) -> bool {
        self.complete()
            && self.trailer.is_some_and(|(records, _, hash)| {
                records == self.records && hash == self.outputs_hash
            })
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic".to_owned())
}

/// One recorded input, as the hub takes it.
enum Step {
    Input(Input),
    Timeout,
    Store(StoreEvent),
    Api(hubbub_core::ApiRequest),
}

/// What the server's driver takes from the hub after an input: outputs and
/// API replies into the hash (as the recorder hashed them); the requests
/// for the engine are dropped, their answers being in the recording.
fn drain(hub: &mut Hub, hash: &mut OutputHash) -> Vec<Output> {
    let mut outputs = Vec::new();
    loop {
        let before = outputs.len();
        while let Some(out) = hub.poll_output() {
            hash.output(&out);
            outputs.push(out);
        }
        let mut more = outputs.len() > before;
        while let Some(reply) = hub.poll_api() {
            hash.api_reply(&reply);
            more = true;
        }
        while hub.poll_store().is_some() {}
        while hub.poll_follow().is_some() {}
        while hub.poll_broadcast().is_some() {}
        while hub.poll_unfollow().is_some() {}
        while hub.poll_bus().is_some() {}
        if !more {
            return outputs;
        }
    }
}

/// Replays `data`, checking after every record.
///
/// # Errors
/// The bytes are not a recording this build reads.
pub fn replay(data: &[u8]) -> Result<Replayed, ReadError> {
    let (mut reader, header) = Reader::new(data)?;
    // Made as the server made it; the recorded engine's answers stand in
    // for the engine, so what the hub asks of it is not needed here.
    let mut hub = match header.engine {
        Engine::Inline => Hub::new(header.config.clone()),
        Engine::External => Hub::with_external_store(header.config.clone()),
        Engine::Delivering => Hub::with_delivering_store(header.config.clone()),
    };
    let mut checker = match header.engine {
        Engine::Inline => HubChecker::new(),
        Engine::External | Engine::Delivering => HubChecker::for_external_engine(),
    };
    let mut hash = OutputHash::default();
    let mut done = Replayed {
        records: 0,
        outputs: 0,
        outputs_hash: 0,
        trailer: None,
        violation: None,
        stopped: None,
        redacted: header.redacted,
        config_incomplete: header.config_incomplete,
    };
    loop {
        let record = match reader.next_record() {
            Ok(Some(record)) => record,
            Ok(None) => break,
            Err(e) => {
                done.stopped = Some(e.to_string());
                break;
            }
        };
        let index = done.records;
        let (at, step) = match record {
            Record::Trailer {
                records,
                dropped,
                outputs_hash,
            } => {
                done.trailer = Some((records, dropped, outputs_hash));
                break;
            }
            Record::Unsupported { kind, .. } => {
                done.stopped = Some(format!(
                    "input {index} is a {kind:?} input, which this format version does not carry"
                ));
                break;
            }
            Record::Timeout { at } => (at, Step::Timeout),
            Record::Input { at, input } => (at, Step::Input(input)),
            Record::Store { at, event } => (at, Step::Store(event)),
            Record::Api { at, call } => match call.request() {
                Ok(request) => (at, Step::Api(request)),
                Err(e) => {
                    done.stopped = Some(format!(
                        "input {index}: an API request that does not decode ({e:?}){}",
                        if header.redacted {
                            "; the recording is redacted"
                        } else {
                            ""
                        }
                    ));
                    break;
                }
            },
        };
        let now = Timestamp::from_millis(at);
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            let input = match &step {
                Step::Input(input) => Some(input),
                _ => None,
            };
            let chat = checker.before(&hub, input);
            match step {
                Step::Input(input) => hub.handle_input(now, input),
                Step::Timeout => hub.handle_timeout(now),
                Step::Store(event) => hub.handle_store(now, event),
                Step::Api(request) => hub.handle_api(now, request),
            }
            let outputs = drain(&mut hub, &mut hash);
            checker.after(&hub, &outputs, chat.as_ref());
        }));
        done.records += 1;
        if let Err(payload) = outcome {
            done.violation = Some((index, panic_message(payload.as_ref())));
            break;
        }
    }
    done.outputs = hash.outputs();
    done.outputs_hash = hash.finish();
    Ok(done)
}

/// `hubbub-sim replay`.
#[must_use]
pub fn main(args: &ReplayArgs) -> ExitCode {
    let data = match std::fs::read(&args.file) {
        Ok(data) => data,
        Err(e) => {
            eprintln!("{}: {e}", args.file.display());
            return ExitCode::from(2);
        }
    };
    // The checker reports by panicking; the replay names the input instead.
    panic::set_hook(Box::new(|_| {}));
    let done = match replay(&data) {
        Ok(done) => done,
        Err(e) => {
            eprintln!("{}: {e}", args.file.display());
            return ExitCode::from(2);
        }
    };
    println!(
        "replayed {} inputs of {}: {} outputs, outputs hash {:#018x}",
        done.records,
        args.file.display(),
        done.outputs,
        done.outputs_hash
    );
    if done.redacted {
        println!(
            "note: a redacted recording (contents replaced): outputs differ from the server's"
        );
    }
    if done.config_incomplete {
        println!("note: the server had namespaces or a token verifier this format does not keep");
    }
    if let Some(why) = &done.stopped {
        println!("INCOMPLETE: stopped early: {why}");
    }
    match done.trailer {
        None => println!(
            "INCOMPLETE: no trailer (the server did not shut down cleanly, or is still writing)"
        ),
        Some((records, dropped, hash)) => {
            println!(
                "server: {records} inputs recorded, {dropped} dropped, outputs hash {hash:#018x}"
            );
            if dropped > 0 {
                println!("INCOMPLETE: {dropped} inputs were dropped (the recorder fell behind or hit its size cap)");
            }
        }
    }
    if let Some((index, message)) = &done.violation {
        println!("VIOLATION at input {index}: {message}");
        return ExitCode::FAILURE;
    }
    if done.same_outputs() {
        println!("ok: no violation; the outputs are the server's");
        ExitCode::SUCCESS
    } else if done.complete() && !done.redacted {
        println!("DIFFERENT: the replay's outputs are not the server's");
        ExitCode::FAILURE
    } else {
        println!("ok: no violation in what was recorded");
        ExitCode::SUCCESS
    }
}

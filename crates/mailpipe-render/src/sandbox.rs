//! Templates rendered in child processes with a memory limit.
//!
//! minijinja bounds a render's instructions (fuel) and nesting, but not the
//! memory its operators and filters allocate: `{% set ns.s = ns.s ~ ns.s %}`
//! in a loop doubles a string per step, and `"x" * 100000000` or
//! `indent(1000000000)` build one huge value in a single instruction. An
//! allocation that fails aborts a Rust process, so inside the worker a
//! tenant's template could take the worker down, and with it every record
//! in flight; its offset never stored, the next worker would take the same
//! record and fall the same way.
//!
//! So templates run in a small pool of `mailpipe render-sandbox` processes,
//! each with an address-space limit (`setrlimit`) and no secrets: they get
//! the template sources and the variables, and answer with the rendered
//! parts, one JSON line each way. A render that runs out of memory kills
//! only its sandbox; the worker sees the pipe close, dead-letters the job
//! (`too_large`) and starts a fresh sandbox. A render that outlasts the
//! timeout is killed the same way (`template_error`).
//!
//! A sandbox that cannot be started, or does not answer its handshake, is
//! the platform's failure, not the job's: [`SandboxError`], which the
//! worker retries.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::RenderError;
use crate::template::{InlineCache, TemplateLimits, TemplateOutput};

/// The subcommand of the `mailpipe` binary that runs [`serve`].
pub const SUBCOMMAND: &str = "render-sandbox";

/// The platform could not render at all: retried, never a dead letter.
#[derive(Debug, thiserror::Error)]
#[error("render sandbox unavailable: {0}")]
pub struct SandboxError(String);

/// How the pool runs.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// The `mailpipe` executable to run as `mailpipe render-sandbox`.
    pub exe: PathBuf,
    /// Sandboxes at most; renders beyond wait their turn.
    pub processes: usize,
    /// Memory each sandbox may take beyond what it has at start, in MiB.
    pub memory_mb: u64,
    /// How long one render may take before its sandbox is killed.
    pub timeout: Duration,
    pub limits: TemplateLimits,
}

/// The template sources of one render.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sources<'a> {
    pub subject: &'a str,
    pub html: Option<&'a str>,
    pub text: Option<&'a str>,
}

/// The first line a sandbox reads: its limits.
#[derive(Serialize, Deserialize)]
struct Setup {
    fuel: u64,
    recursion: usize,
    max_part_bytes: usize,
    memory_mb: u64,
}

#[derive(Serialize)]
struct Request<'a> {
    #[serde(flatten)]
    sources: Sources<'a>,
    context: &'a serde_json::Value,
}

#[derive(Deserialize)]
struct OwnedRequest {
    subject: String,
    html: Option<String>,
    text: Option<String>,
    context: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Response {
    Ready,
    Ok(TemplateOutput),
    Error { reason: String, message: String },
}

/// One sandbox process and its pipes.
struct Process {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// A bounded pool of sandbox processes, started as needed.
pub struct Sandbox {
    settings: SandboxSettings,
    setup: String,
    idle: Mutex<Vec<Process>>,
    turns: tokio::sync::Semaphore,
}

impl Sandbox {
    pub fn new(settings: SandboxSettings) -> Self {
        let setup = serde_json::to_string(&Setup {
            fuel: settings.limits.fuel,
            recursion: settings.limits.recursion,
            max_part_bytes: settings.limits.max_part_bytes,
            memory_mb: settings.memory_mb,
        })
        .expect("setup serializes");
        let turns = tokio::sync::Semaphore::new(settings.processes.max(1));
        Self { settings, setup, idle: Mutex::new(Vec::new()), turns }
    }

    /// Starts one sandbox and keeps it: a wrong executable is found at
    /// start-up, not at the first job.
    pub async fn check(&self) -> Result<(), SandboxError> {
        let p = self.spawn().await?;
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(p);
        Ok(())
    }

    async fn spawn(&self) -> Result<Process, SandboxError> {
        let exe = &self.settings.exe;
        let unavailable = |what: &str| SandboxError(format!("{} {SUBCOMMAND}: {what}", exe.display()));
        // No environment: the worker's holds its secrets, and a sandbox needs none.
        // But one setting: mimalloc reserves 1 GiB of address space at start
        // by default, and the memory limit is the address space at start
        // plus `memory_mb`, so a render could fill that whole gigabyte before
        // an allocation failed: about 1.3 GB, not 256 MB, and seconds of page
        // zeroing that could outlast the render timeout. With small arenas
        // the limit bounds what a render can use.
        let mut child = Command::new(exe)
            .arg(SUBCOMMAND)
            .env_clear()
            .env("MIMALLOC_ARENA_RESERVE", "16M")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| unavailable(&e.to_string()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(unavailable("no pipes"));
        };
        let mut p = Process { child, stdin, stdout: BufReader::new(stdout) };
        let handshake = async {
            p.stdin.write_all(format!("{}\n", self.setup).as_bytes()).await?;
            p.stdin.flush().await?;
            let mut line = String::new();
            p.stdout.read_line(&mut line).await?;
            Ok::<_, std::io::Error>(line)
        };
        match tokio::time::timeout(Duration::from_secs(10), handshake).await {
            Ok(Ok(line)) if matches!(serde_json::from_str(&line), Ok(Response::Ready)) => {
                metrics::counter!("mailpipe_render_sandboxes_started_total").increment(1);
                Ok(p)
            }
            Ok(Ok(line)) => Err(unavailable(&format!("unexpected handshake {:?}", line.trim()))),
            Ok(Err(e)) => Err(unavailable(&e.to_string())),
            Err(_) => Err(unavailable("no handshake within 10 s")),
        }
    }

    /// Renders `sources` with `context` in a sandbox.
    pub async fn render(
        &self,
        sources: Sources<'_>,
        context: &serde_json::Value,
    ) -> Result<Result<TemplateOutput, RenderError>, SandboxError> {
        let _turn = self.turns.acquire().await.map_err(|_| SandboxError("closed".into()))?;
        let mut line = serde_json::to_vec(&Request { sources, context })
            .map_err(|e| SandboxError(format!("request: {e}")))?;
        line.push(b'\n');
        // A sandbox that had rendered before may die of what earlier renders
        // left it (a full cache, fragmentation) or of a kill from outside:
        // the render gets a fresh sandbox before the job is blamed. Only a
        // death on a fresh sandbox is this render's doing.
        for second_try in [false, true] {
            let idle =
                if second_try { None } else { self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() };
            let fresh = idle.is_none();
            let mut p = match idle {
                Some(p) => p,
                None => self.spawn().await?,
            };
            let exchange = async {
                p.stdin.write_all(&line).await?;
                p.stdin.flush().await?;
                let mut resp = String::new();
                p.stdout.read_line(&mut resp).await?;
                Ok::<_, std::io::Error>(resp)
            };
            let answer = match tokio::time::timeout(self.settings.timeout, exchange).await {
                Ok(Ok(resp)) if !resp.is_empty() => serde_json::from_str::<Response>(&resp).ok(),
                Ok(_) => None,
                Err(_) => {
                    let _ = p.child.kill().await;
                    metrics::counter!("mailpipe_render_sandboxes_stopped_total", "cause" => "timeout")
                        .increment(1);
                    return Ok(Err(RenderError::Sandboxed {
                        reason: "template_error",
                        message: format!(
                            "the render took longer than {} ms and was stopped",
                            self.settings.timeout.as_millis()
                        ),
                    }));
                }
            };
            match answer {
                Some(Response::Ok(out)) => {
                    self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(p);
                    return Ok(Ok(out));
                }
                Some(Response::Error { reason, message }) => {
                    self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(p);
                    return Ok(Err(RenderError::Sandboxed { reason: known_reason(&reason), message }));
                }
                // The pipe closed (the process is gone) or it answered
                // nonsense: either way this sandbox is done.
                Some(Response::Ready) | None => {
                    let _ = p.child.start_kill();
                    let status = tokio::time::timeout(Duration::from_secs(5), p.child.wait()).await;
                    if !fresh {
                        tracing::warn!(
                            ?status,
                            "a render sandbox that had rendered before died; trying a fresh one"
                        );
                        continue;
                    }
                    let aborted = matches!(&status, Ok(Ok(s)) if aborted(s));
                    let cause = if aborted { "memory" } else { "crash" };
                    metrics::counter!("mailpipe_render_sandboxes_stopped_total", "cause" => cause)
                        .increment(1);
                    let message = if aborted {
                        format!(
                            "the render ran out of its {} MiB memory limit and was stopped",
                            self.settings.memory_mb
                        )
                    } else {
                        format!("the render sandbox died rendering it ({status:?})")
                    };
                    let reason = if aborted { "too_large" } else { "template_error" };
                    return Ok(Err(RenderError::Sandboxed { reason, message }));
                }
            }
        }
        unreachable!("the second try returns")
    }
}

/// An abort: what a failed allocation under the memory limit ends in.
fn aborted(status: &std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    const SIGABRT: i32 = 6;
    status.signal() == Some(SIGABRT)
}

/// The reasons a sandbox may report, as the dead-letter vocabulary has them.
fn known_reason(r: &str) -> &'static str {
    match r {
        "too_large" => "too_large",
        "header_injection" => "header_injection",
        _ => "template_error",
    }
}

/// The sandbox's side: reads its limits, caps its own address space, then
/// answers render requests on stdin until stdin closes (the worker is gone).
pub fn serve() -> std::io::Result<()> {
    use std::io::{BufRead, Write};
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut output = std::io::BufWriter::new(std::io::stdout().lock());
    let mut line = String::new();
    input.read_line(&mut line)?;
    let setup: Setup = serde_json::from_str(&line).map_err(std::io::Error::other)?;
    limit_memory(setup.memory_mb)?;
    let limits =
        TemplateLimits { fuel: setup.fuel, recursion: setup.recursion, max_part_bytes: setup.max_part_bytes };
    // Small: what a sandbox holds counts against its memory limit.
    let cache = InlineCache::new(limits, 32);
    let mut answer = |r: &Response| -> std::io::Result<()> {
        serde_json::to_writer(&mut output, r).map_err(std::io::Error::other)?;
        output.write_all(b"\n")?;
        output.flush()
    };
    answer(&Response::Ready)?;
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let response = match serde_json::from_str::<OwnedRequest>(&line) {
            Ok(req) => {
                let ctx = minijinja::Value::from_serialize(&req.context);
                let rendered = cache
                    .get(&req.subject, req.html.as_deref(), req.text.as_deref())
                    .and_then(|c| c.render(&ctx));
                match rendered {
                    Ok(out) => Response::Ok(out),
                    Err(e) => Response::Error { reason: e.reason().into(), message: e.to_string() },
                }
            }
            Err(e) => Response::Error { reason: "template_error".into(), message: format!("request: {e}") },
        };
        answer(&response)?;
    }
}

/// Caps the address space at what the process has now plus `mb` MiB: an
/// allocation past it fails, and the process aborts. The abort writes no
/// core file: a sandbox's memory holds a tenant's templates and its
/// recipients' variables, which must not land on disk.
fn limit_memory(mb: u64) -> std::io::Result<()> {
    use rustix::process::{Resource, Rlimit, setrlimit};
    setrlimit(Resource::Core, Rlimit { current: Some(0), maximum: Some(0) })?;
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let now = pages * rustix::param::page_size() as u64;
    let cap = now + mb * 1024 * 1024;
    setrlimit(Resource::As, Rlimit { current: Some(cap), maximum: Some(cap) })?;
    Ok(())
}

//! `[render]`: what one job's templates may do, and where they run. This
//! type is the configuration section itself (config/default.toml holds the
//! values, docs/configuration.md explains them).

use std::path::PathBuf;
use std::time::Duration;

use mailpipe_core::units::millis;
use serde::Deserialize;

use crate::sandbox::SandboxSettings;
use crate::template::TemplateLimits;

/// Where templates render.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// In `mailpipe render-sandbox` child processes with a memory limit.
    Process,
    /// In the worker itself: only for templates the operator trusts, since
    /// nothing then bounds the memory a render takes.
    None,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RenderSettings {
    /// minijinja fuel per part: roughly, instructions executed.
    pub fuel: u64,
    /// Nesting depth of blocks, loops, macros and includes.
    pub recursion: usize,
    /// The most each rendered part may be, in bytes (the subject: 2 KiB).
    pub max_part_bytes: usize,
    /// The most a whole message may be, signature included, in bytes.
    pub max_message_bytes: usize,
    pub isolation: Isolation,
    /// Sandbox processes per worker; 0: two per core.
    pub processes: usize,
    /// Memory each sandbox may take for its renders, in MiB.
    pub memory_mb: u64,
    /// How long one render may take before its sandbox is killed.
    #[serde(rename = "timeout_ms", deserialize_with = "millis")]
    pub timeout: Duration,
    /// The `mailpipe` executable to run sandboxes from; unset: this one.
    #[serde(default)]
    pub sandbox_exe: Option<PathBuf>,
}

impl RenderSettings {
    pub fn limits(&self) -> TemplateLimits {
        TemplateLimits { fuel: self.fuel, recursion: self.recursion, max_part_bytes: self.max_part_bytes }
    }

    /// The sandbox pool's settings, running `this_exe` unless another
    /// executable is configured.
    pub fn sandbox(&self, this_exe: PathBuf) -> SandboxSettings {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        SandboxSettings {
            exe: self.sandbox_exe.clone().unwrap_or(this_exe),
            // Two per core: a render's round trip through a pipe waits to be
            // scheduled at both ends, so one sandbox per core leaves the
            // cores idle between renders while jobs queue for a sandbox
            // (docs/benchmarks.md, session 34).
            processes: if self.processes == 0 { 2 * cores } else { self.processes },
            memory_mb: self.memory_mb,
            timeout: self.timeout,
            limits: self.limits(),
        }
    }

    /// Every problem with these values, by key.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.fuel == 0 {
            p.push("render.fuel: must be at least 1".into());
        }
        if self.max_part_bytes < 1024 {
            p.push("render.max_part_bytes: must be at least 1024".into());
        }
        if self.max_message_bytes < self.max_part_bytes {
            p.push("render.max_message_bytes: must be at least render.max_part_bytes".into());
        }
        if self.memory_mb < 16 {
            p.push("render.memory_mb: must be at least 16".into());
        }
        if self.timeout.is_zero() {
            p.push("render.timeout_ms: must be at least 1".into());
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(processes: usize) -> RenderSettings {
        RenderSettings {
            fuel: 1000,
            recursion: 8,
            max_part_bytes: 4096,
            max_message_bytes: 8192,
            isolation: Isolation::Process,
            processes,
            memory_mb: 64,
            timeout: Duration::from_secs(1),
            sandbox_exe: None,
        }
    }

    #[test]
    fn sandboxes_default_to_two_per_core_and_a_count_given_is_kept() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(settings(0).sandbox(PathBuf::from("mailpipe")).processes, 2 * cores);
        assert_eq!(settings(3).sandbox(PathBuf::from("mailpipe")).processes, 3);
    }
}

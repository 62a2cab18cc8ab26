//! Who may use the shared services while a test restarts one.
//!
//! Every integration test runs in one binary, so tests run beside each
//! other, and PostgreSQL and Kafka are the machine's. A test that uses them
//! holds a [`Shared`] share (its [`crate::TestDatabase`] or
//! [`crate::TestEnv`] does this); a test that restarts one holds them
//! [`Exclusive`]ly, and waits until no other test uses them. Tests that
//! start later wait for it in turn: the lock is fair.
//!
//! A test holds one share at most. The lock queues new shares behind a
//! waiting exclusive holder, so a test that took a second share while a
//! restart waited would wait for itself.

use std::sync::LazyLock;

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

static SERVICES: LazyLock<std::sync::Arc<RwLock<()>>> = LazyLock::new(Default::default);

/// A share of the services: no restart happens while it lives.
pub struct Shared {
    _guard: OwnedRwLockReadGuard<()>,
}

/// The services to oneself: no other test uses them while it lives.
pub struct Exclusive {
    _guard: OwnedRwLockWriteGuard<()>,
}

pub async fn shared() -> Shared {
    Shared { _guard: SERVICES.clone().read_owned().await }
}

pub async fn exclusive() -> Exclusive {
    Exclusive { _guard: SERVICES.clone().write_owned().await }
}

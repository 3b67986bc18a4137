//! What many unit tests start from: a SQLite store, a keyring on a `file` key provider and an
//! audit trail, in a temporary directory, at a clock the test controls.

use std::path::Path;
use std::sync::Arc;

use carevault_crypto::FileKeyProvider;
use carevault_store::{SqliteStore, Store};

use crate::audit::Audit;
use crate::clock::{ManualClock, SharedClock};
use crate::keyring::Keyring;
use crate::names::NodeId;

pub(crate) struct Services {
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) keyring: Arc<Keyring>,
    pub(crate) audit: Arc<Audit>,
}

/// The services in `dir`, as node `node-test` of environment `env-test`.
pub(crate) async fn services(dir: &Path) -> Services {
    let clock = Arc::new(ManualClock::at_secs(1_800_000_000));
    let shared: SharedClock = clock.clone();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("t.db")).unwrap());
    let provider = FileKeyProvider::create(&dir.join("keys")).unwrap();
    let keyring = Arc::new(Keyring::new(
        "env-test".into(),
        Box::new(provider),
        store.clone(),
        shared.clone(),
    ));
    let node = NodeId::parse("node-test").unwrap();
    let audit = Arc::new(
        Audit::open(store.clone(), &keyring, &node, shared)
            .await
            .unwrap(),
    );
    Services {
        clock,
        store,
        keyring,
        audit,
    }
}

//! `rewrap`: re-seal every record under the current master key, with progress.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use api_keys::time::OffsetDateTime;
use api_keys::{AnyStore, KeyId, KeyRecord, KeyStore, Keyring, OrgId, RewrapReport, StoreError};
use indicatif::{ProgressBar, ProgressStyle};

use crate::output::print_json;
use crate::{EXIT_FAILED_RECORDS, Failure, Global};

/// Page size of the counting pass.
const COUNT_PAGE: usize = 1_000;

pub(crate) async fn run(store: AnyStore, keyring: Keyring, global: &Global) -> Result<u8, Failure> {
    let current = keyring.current_version();
    let total = count(&store).await?;
    let progress = Progress::new(total);
    let wrapped = AnyStore::new(Watched {
        inner: store,
        progress: progress.clone(),
    });
    let m = crate::manager(wrapped, keyring, global)?;
    let report = m.rewrap().await.map_err(|e| match e {
        // Checked before anything is re-sealed (see `KeyManager::rewrap`).
        api_keys::Error::Integrity => Failure::new(
            crate::EXIT_INTEGRITY,
            format!(
                "rewrap refused, nothing re-sealed: records sealed under the current version                  {current} exist and none opens with the current master key given here — it is                  not the key the service seals with; check the master key (if it is right,                  those records were tampered with: remove them first)"
            ),
        ),
        e => Failure::from_error(
            e,
            "rewrap stopped (records re-sealed so far stay re-sealed; run it again)",
        ),
    })?;
    progress.finish();
    if global.json {
        print_json(&Json::from((&report, current)));
    } else {
        out!(
            "rewrapped {}, already current {}, failed {}, sealed under a newer version {}, other prefix {}",
            report.rewrapped,
            report.already_current,
            report.failed,
            report.newer,
            report.other_class
        );
    }
    if report.failed > 0 {
        eprintln!(
            "api-keys: {} record(s) could not be re-sealed: they fail their integrity check \
             (tampered, or sealed under a master key this keyring lacks: {}) or could not be \
             written; see the log lines above for their ids, fix or delete them, and keep the \
             previous key until then",
            report.failed,
            crate::config::add_previous_key()
        );
        return Ok(EXIT_FAILED_RECORDS);
    }
    Ok(0)
}

#[derive(serde::Serialize)]
struct Json {
    current_version: u32,
    rewrapped: usize,
    already_current: usize,
    failed: usize,
    newer: usize,
    other_class: usize,
}

impl From<(&RewrapReport, u32)> for Json {
    fn from((r, current_version): (&RewrapReport, u32)) -> Self {
        Json {
            current_version,
            rewrapped: r.rewrapped,
            already_current: r.already_current,
            failed: r.failed,
            newer: r.newer,
            other_class: r.other_class,
        }
    }
}

/// How many records the store holds (one pass over its pages), for the progress total.
async fn count(store: &AnyStore) -> Result<u64, Failure> {
    let mut n = 0u64;
    let mut after: Option<KeyId> = None;
    loop {
        let page = store
            .scan(after.as_ref(), COUNT_PAGE)
            .await
            .map_err(|e| Failure::from_error(e.into(), "counting the records to rewrap"))?;
        n += page.len() as u64;
        match page.last() {
            Some(last) if page.len() == COUNT_PAGE => after = Some(last.id),
            _ => return Ok(n),
        }
    }
}

/// A bar on a terminal; plain lines (one per page read) otherwise, e.g. in a CI log.
#[derive(Clone)]
struct Progress {
    bar: Option<ProgressBar>,
    seen: Arc<AtomicU64>,
    total: u64,
}

impl Progress {
    fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            if let Ok(style) =
                ProgressStyle::with_template("rewrap {bar:40} {pos}/{len} records ({eta} left)")
            {
                bar.set_style(style);
            }
            bar
        });
        if bar.is_none() {
            eprintln!("rewrap: {total} records to check");
        }
        Progress {
            bar,
            seen: Arc::new(AtomicU64::new(0)),
            total,
        }
    }

    fn read(&self, n: u64) {
        let seen = self.seen.fetch_add(n, Ordering::Relaxed) + n;
        match &self.bar {
            Some(bar) => bar.set_position(seen.min(self.total)),
            None if n > 0 => eprintln!("rewrap: {seen} of {} records read", self.total),
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The store, reporting each page that rewrap reads.
struct Watched {
    inner: AnyStore,
    progress: Progress,
}

impl KeyStore for Watched {
    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.inner.insert(record).await
    }
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.get(id).await
    }
    async fn list(&self, org: &OrgId) -> Result<Vec<KeyRecord>, StoreError> {
        self.inner.list(org).await
    }
    async fn update(&self, record: KeyRecord, expected: u64) -> Result<(), StoreError> {
        self.inner.update(record, expected).await
    }
    async fn delete(&self, id: &KeyId) -> Result<bool, StoreError> {
        self.inner.delete(id).await
    }
    async fn scan(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let page = self.inner.scan(after, limit).await?;
        self.progress.read(page.len() as u64);
        Ok(page)
    }
    async fn touch(&self, id: &KeyId, at: OffsetDateTime) -> Result<(), StoreError> {
        self.inner.touch(id, at).await
    }
}

//! SQLite backend (to be written).
use super::*;
pub struct SqliteStore;
impl SqliteStore {
    pub async fn open(_d: &std::path::Path, _n: u32) -> Result<Self> {
        todo!()
    }
}
#[async_trait]
impl Journal for SqliteStore {
    async fn append(&self, _: &str, _: u32, _: &[PersistedEvent]) -> Result<()> {
        todo!()
    }
    async fn read_events(&self, _: &str, _: u64) -> Result<Vec<PersistedEvent>> {
        todo!()
    }
    async fn highest_revision(&self, _: &str) -> Result<u64> {
        todo!()
    }
    async fn delete_events_up_to(&self, _: &str, _: u64) -> Result<()> {
        todo!()
    }
}
#[async_trait]
impl SnapshotStore for SqliteStore {
    async fn save_snapshot(&self, _: &str, _: &Snapshot) -> Result<()> {
        todo!()
    }
    async fn latest_snapshot(&self, _: &str) -> Result<Option<Snapshot>> {
        todo!()
    }
    async fn retain_snapshots(&self, _: &str, _: usize) -> Result<Option<u64>> {
        todo!()
    }
}

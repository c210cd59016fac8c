//! PostgreSQL backend (to be written).
use super::*;
pub struct PostgresStore;
impl PostgresStore {
    pub async fn open(_c: &crate::config::PostgresConfig, _n: u32) -> Result<Self> {
        todo!()
    }
}
#[async_trait]
impl Journal for PostgresStore {
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
impl SnapshotStore for PostgresStore {
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

//! The cluster suite's read-side sink and invariant I4 (`shared/spec/reliability.md` §4.6): a read handler that
//! records every delivery with the node that made it, a sampler of the stored read-side offsets, and
//! [`check_read_side`] over both and the journal.
//!
//! A cluster node runs the read-side processors of the shards it hosts only (docs/cluster.md), so the sink listens
//! once per node (one port each, one `COS_READ_SIDE_CONFIG` each) and names the caller by the port it was called
//! on; a node restarted by the harness ([`ReadSink::restarted`]) delivers under a new generation. The sink answers
//! every call `successful = true` at once, so every delivery it records is one the node may store the offset of.
//!
//! The processor sends no offset; the checker maps each delivery `(entity, revision)` to its journal row's cursor
//! `(tx_id, ordering)`, the order a shard is delivered in.
//!
//! [`check_read_side`] is pure (no I/O), so its rules are unit-tested with made-up histories.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

use regent::proto::chief_of_state::v1::read_side_handler_service_server::{
    ReadSideHandlerService, ReadSideHandlerServiceServer,
};
use regent::proto::chief_of_state::v1::{HandleReadSideRequest, HandleReadSideResponse};

use super::history::{decode_op, ms};
use super::read_handler::{ReadSideSpec, ReadSidesYaml};

/// The read side every node of a sink-enabled cluster runs.
pub const READ_SIDE_ID: &str = "sink";
/// How long before a processor's first delivery an offset sample must have been read to bind it: a processor reads
/// its offset a little before it delivers, and an old owner still delivering (a downed node about to exit) may
/// store offsets meanwhile.
pub const OFFSET_GRACE: Duration = Duration::from_secs(1);

/// A read-side cursor: `(tx_id, ordering)`.
pub type Cursor = (i64, i64);

/// One `HandleReadSide` call the sink answered.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub node: String,
    /// The node's process in this test: 0 for the first, +1 per [`ReadSink::restarted`].
    pub generation: u32,
    /// The `x-cos-event-tag` metadata (the shard), when present.
    pub shard: Option<u32>,
    pub entity: String,
    pub revision: u32,
    pub op: Option<String>,
    pub start: Instant,
    pub end: Instant,
}

#[derive(Clone)]
struct Listener {
    node: String,
    log: Arc<Mutex<Vec<Delivery>>>,
    generations: Arc<Mutex<HashMap<String, u32>>>,
}

#[tonic::async_trait]
impl ReadSideHandlerService for Listener {
    async fn handle_read_side(
        &self,
        request: Request<HandleReadSideRequest>,
    ) -> Result<Response<HandleReadSideResponse>, Status> {
        let start = Instant::now();
        let shard = request.metadata().get("x-cos-event-tag").and_then(|v| v.to_str().ok()?.parse().ok());
        let body = request.into_inner();
        if body.read_side_id != READ_SIDE_ID {
            return Err(Status::invalid_argument(format!("unknown read side {:?}", body.read_side_id)));
        }
        let meta = body.meta.unwrap_or_default();
        let generation = self.generations.lock().unwrap().get(&self.node).copied().unwrap_or(0);
        self.log.lock().unwrap().push(Delivery {
            node: self.node.clone(),
            generation,
            shard,
            entity: meta.entity_id,
            revision: meta.revision_number,
            op: body.event.as_ref().and_then(|e| decode_op(e).ok()),
            start,
            end: Instant::now(),
        });
        Ok(Response::new(HandleReadSideResponse { successful: true }))
    }
}

/// The sink: one listener per node, one log.
#[derive(Default)]
pub struct ReadSink {
    log: Arc<Mutex<Vec<Delivery>>>,
    generations: Arc<Mutex<HashMap<String, u32>>>,
    listeners: BTreeMap<String, (ReadSidesYaml, oneshot::Sender<()>, JoinHandle<()>)>,
}

impl ReadSink {
    pub fn new() -> ReadSink {
        ReadSink::default()
    }

    /// The `COS_READ_SIDE_CONFIG` file for `node` (its listener starts on the first call).
    pub async fn config_for(&mut self, node: &str) -> String {
        if let Some((yaml, _, _)) = self.listeners.get(node) {
            return yaml.path_str();
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a read sink listener");
        let addr: SocketAddr = listener.local_addr().unwrap();
        let service = ReadSideHandlerServiceServer::new(Listener {
            node: node.to_string(),
            log: self.log.clone(),
            generations: self.generations.clone(),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(service)
                .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await;
        });
        // SKIP would hide a failed delivery; the sink never fails one, and a STOPped processor shows as missing
        // deliveries.
        let yaml = ReadSidesYaml::write(&[ReadSideSpec::new(READ_SIDE_ID, addr.port())]);
        let path = yaml.path_str();
        self.listeners.insert(node.to_string(), (yaml, stop, task));
        path
    }

    /// `node` was started again: its deliveries from now on belong to a new generation.
    pub fn restarted(&self, node: &str) {
        *self.generations.lock().unwrap().entry(node.to_string()).or_default() += 1;
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.log.lock().unwrap().clone()
    }

    pub async fn stop(&mut self) {
        for (_, (_yaml, stop, task)) in std::mem::take(&mut self.listeners) {
            let _ = stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for ReadSink {
    fn drop(&mut self) {
        for (_, _, task) in self.listeners.values() {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// the stored offsets

/// One stored offset, as read at `at` (after the query returned: the value is at most that recent).
#[derive(Debug, Clone)]
pub struct OffsetSample {
    pub at: Instant,
    pub shard: u32,
    pub cursor: Cursor,
}

/// The stored offsets of [`READ_SIDE_ID`] in `schema`, by shard (none before the table exists).
pub async fn read_offsets(db: &tokio_postgres::Client, schema: &str) -> Result<BTreeMap<u32, Cursor>, String> {
    let sql = format!(
        "SELECT shard::bigint, tx_id::bigint, ordering::bigint FROM \"{schema}\".read_side_offsets \
         WHERE read_side_id = $1 AND tx_id IS NOT NULL"
    );
    let rows = db.query(&sql, &[&READ_SIDE_ID]).await.map_err(|e| format!("{sql}: {e}"))?;
    Ok(rows.iter().map(|r| (r.get::<_, i64>(0) as u32, (r.get(1), r.get(2)))).collect())
}

/// Reads the stored offsets every `every` until dropped.
pub struct OffsetSampler {
    samples: Arc<Mutex<Vec<OffsetSample>>>,
    task: JoinHandle<()>,
}

impl OffsetSampler {
    pub fn start(schema: &str, every: Duration) -> OffsetSampler {
        let samples: Arc<Mutex<Vec<OffsetSample>>> = Arc::default();
        let (schema, out) = (schema.to_string(), samples.clone());
        let task = tokio::spawn(async move {
            let db = crate::support::pg::connect().await;
            loop {
                if let Ok(offsets) = read_offsets(&db, &schema).await {
                    let at = Instant::now();
                    out.lock().unwrap().extend(offsets.into_iter().map(|(shard, cursor)| OffsetSample {
                        at,
                        shard,
                        cursor,
                    }));
                }
                tokio::time::sleep(every).await;
            }
        });
        OffsetSampler { samples, task }
    }

    pub fn samples(&self) -> Vec<OffsetSample> {
        self.samples.lock().unwrap().clone()
    }
}

impl Drop for OffsetSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One journal row, as the read side orders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRow {
    pub entity: String,
    pub revision: u32,
    pub shard: u32,
    pub cursor: Cursor,
}

/// Every journal row of `schema`, in cursor order.
pub async fn read_journal_cursors(schema: &str) -> Vec<JournalRow> {
    let db = crate::support::pg::connect().await;
    let sql = format!(
        "SELECT entity_id, revision::bigint, shard::bigint, tx_id::bigint, ordering::bigint FROM \"{schema}\".journal \
         ORDER BY tx_id, ordering"
    );
    db.query(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| JournalRow {
            entity: r.get(0),
            revision: r.get::<_, i64>(1) as u32,
            shard: r.get::<_, i64>(2) as u32,
            cursor: (r.get(3), r.get(4)),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------------
// the checker

/// What [`check_read_side`] reads.
pub struct ReadCheckInput<'a> {
    /// The journal, in cursor order.
    pub journal: &'a [JournalRow],
    pub deliveries: &'a [Delivery],
    /// Stored offsets sampled during the run.
    pub samples: &'a [OffsetSample],
    /// The stored offsets once every delivery was done.
    pub final_offsets: &'a BTreeMap<u32, Cursor>,
}

/// I4's verdict.
#[derive(Debug, Default)]
pub struct ReadReport {
    pub violations: Vec<String>,
    /// Deliveries, distinct events delivered, repeats, processor runs.
    pub summary: String,
    pub duplicates: usize,
}

/// Deliveries with their journal rows.
type Deliveries<'a> = Vec<(&'a Delivery, &'a JournalRow)>;

/// A processor run: consecutive deliveries of one shard by one node process, each after the previous in cursor
/// order; a delivery at or before the previous one starts a new run (the processor restarted from its offset).
struct Run<'a> {
    shard: u32,
    stream: (String, u32),
    deliveries: Deliveries<'a>,
}

/// I4: the read side saw every journal event at least once (I4a) and nothing else; no event was delivered before
/// the one preceding it in its shard (I4b: no gap, per-entity order preserved, across owners and restarts too);
/// the stored offsets never went back and end at each shard's last event (I4c); an event is delivered again only
/// by a processor that (re)started, from after the offset stored before it started (I4d: duplicates only after
/// restarts, never of events at or before a stored offset).
pub fn check_read_side(input: &ReadCheckInput<'_>) -> ReadReport {
    let mut v = Vec::new();
    let by_key: HashMap<(&str, u32), &JournalRow> =
        input.journal.iter().map(|r| ((r.entity.as_str(), r.revision), r)).collect();
    // Each row's predecessor in its shard.
    let mut previous_in_shard: HashMap<(&str, u32), &JournalRow> = HashMap::new();
    let mut last_of_shard: BTreeMap<u32, &JournalRow> = BTreeMap::new();
    for row in input.journal {
        if let Some(prev) = last_of_shard.insert(row.shard, row) {
            previous_in_shard.insert((row.entity.as_str(), row.revision), prev);
        }
    }

    // Deliveries in start order; first completed delivery of each event.
    let mut deliveries: Vec<&Delivery> = input.deliveries.iter().collect();
    deliveries.sort_by_key(|d| d.start);
    let mut first_end: HashMap<(&str, u32), Instant> = HashMap::new();
    let mut delivered: Vec<(&Delivery, &JournalRow)> = Vec::new();
    let mut phantoms = 0;
    for d in &deliveries {
        match by_key.get(&(d.entity.as_str(), d.revision)) {
            None => {
                phantoms += 1;
                if phantoms <= 3 {
                    v.push(format!(
                        "I4 {}@{}: delivered by {} at {:.1} ms but not in the journal",
                        d.entity,
                        d.revision,
                        d.node,
                        ms(d.start)
                    ));
                }
            }
            Some(row) => {
                if d.shard != Some(row.shard) {
                    v.push(format!(
                        "I4 {}@{}: tagged {:?}, stored in shard {}",
                        d.entity, d.revision, d.shard, row.shard
                    ));
                }
                let end = first_end.entry((row.entity.as_str(), row.revision)).or_insert(d.end);
                *end = (*end).min(d.end);
                delivered.push((d, row));
            }
        }
    }
    if phantoms > 3 {
        v.push(format!("I4: ... {} more deliveries of events not in the journal", phantoms - 3));
    }

    // I4a
    let missing: Vec<&JournalRow> =
        input.journal.iter().filter(|r| !first_end.contains_key(&(r.entity.as_str(), r.revision))).collect();
    for row in missing.iter().take(5) {
        v.push(format!(
            "I4a {}@{} (shard {}, cursor {:?}) was never delivered",
            row.entity, row.revision, row.shard, row.cursor
        ));
    }
    if missing.len() > 5 {
        v.push(format!("I4a: ... {} more events never delivered", missing.len() - 5));
    }

    // I4b: every delivery starts after its shard predecessor's first delivery ended.
    let mut gaps = 0;
    for (d, row) in &delivered {
        let Some(prev) = previous_in_shard.get(&(row.entity.as_str(), row.revision)) else { continue };
        let ok = first_end.get(&(prev.entity.as_str(), prev.revision)).is_some_and(|end| *end <= d.start);
        if !ok {
            gaps += 1;
            if gaps <= 3 {
                v.push(format!(
                    "I4b {}@{} delivered by {} at {:.1} ms before {}@{}, which precedes it in shard {}: a gap",
                    row.entity,
                    row.revision,
                    d.node,
                    ms(d.start),
                    prev.entity,
                    prev.revision,
                    row.shard
                ));
            }
        }
    }
    if gaps > 3 {
        v.push(format!("I4b: ... {} more deliveries ahead of their predecessor", gaps - 3));
    }
    // The journal itself keeps each entity's revisions in cursor order (what makes the shard order the entity
    // order).
    let mut last_revision: HashMap<&str, u32> = HashMap::new();
    for row in input.journal {
        let last = last_revision.insert(row.entity.as_str(), row.revision).unwrap_or(0);
        if row.revision != last + 1 {
            v.push(format!("I4b {}: revision {} follows {last} in cursor order", row.entity, row.revision));
        }
    }

    // I4c: offsets.
    let mut samples: Vec<&OffsetSample> = input.samples.iter().collect();
    samples.sort_by_key(|s| s.at);
    let mut seen: BTreeMap<u32, &OffsetSample> = BTreeMap::new();
    let mut regressions = 0;
    for s in &samples {
        if let Some(before) = seen.get(&s.shard)
            && s.cursor < before.cursor
        {
            regressions += 1;
            if regressions <= 3 {
                v.push(format!(
                    "I4c shard {}: the stored offset went back from {:?} ({:.1} ms) to {:?} ({:.1} ms)",
                    s.shard,
                    before.cursor,
                    ms(before.at),
                    s.cursor,
                    ms(s.at)
                ));
            }
        }
        let entry = seen.entry(s.shard).or_insert(s);
        if s.cursor >= entry.cursor {
            *entry = s;
        }
    }
    for (shard, last) in &last_of_shard {
        match input.final_offsets.get(shard) {
            Some(cursor) if *cursor == last.cursor => {}
            other => v.push(format!(
                "I4c shard {shard}: the stored offset is {other:?} at the end, its last event {}@{} is at {:?}",
                last.entity, last.revision, last.cursor
            )),
        }
    }

    // I4d: runs.
    let mut streams: BTreeMap<(String, u32, u32), Deliveries<'_>> = BTreeMap::new();
    for (d, row) in &delivered {
        streams.entry((d.node.clone(), d.generation, row.shard)).or_default().push((d, row));
    }
    let mut runs: Vec<Run<'_>> = Vec::new();
    for ((node, generation, shard), list) in streams {
        for (d, row) in list {
            match runs.last_mut() {
                Some(run)
                    if run.stream == (node.clone(), generation)
                        && run.shard == shard
                        && run.deliveries.last().is_some_and(|(_, last)| last.cursor < row.cursor) =>
                {
                    run.deliveries.push((d, row))
                }
                _ => runs.push(Run { shard, stream: (node.clone(), generation), deliveries: vec![(d, row)] }),
            }
        }
    }
    let mut early = 0;
    for run in &runs {
        let (first, row) = run.deliveries[0];
        let bound = samples
            .iter()
            .filter(|s| s.shard == run.shard && s.at + OFFSET_GRACE <= first.start)
            .map(|s| s.cursor)
            .max();
        if let Some(bound) = bound
            && row.cursor <= bound
        {
            early += 1;
            if early <= 3 {
                v.push(format!(
                    "I4d shard {}: {} (generation {}) started delivering at {}@{} {:?} ({:.1} ms), at or before the \
                     offset {bound:?} stored before it started",
                    run.shard,
                    run.stream.0,
                    run.stream.1,
                    row.entity,
                    row.revision,
                    row.cursor,
                    ms(first.start)
                ));
            }
        }
    }
    if early > 3 {
        v.push(format!("I4d: ... {} more runs restarting before a stored offset", early - 3));
    }

    let distinct: BTreeSet<(&str, u32)> = delivered.iter().map(|(_, r)| (r.entity.as_str(), r.revision)).collect();
    let duplicates = delivered.len() - distinct.len();
    let mut summary = String::new();
    let _ = write!(
        summary,
        "read side: {} deliveries of {}/{} journal events, {duplicates} repeated, {} processor runs over {} shards",
        input.deliveries.len(),
        distinct.len(),
        input.journal.len(),
        runs.len(),
        last_of_shard.len()
    );
    ReadReport { violations: v, summary, duplicates }
}

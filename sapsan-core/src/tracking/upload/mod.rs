//! Delivery: how logged data reaches the server. [`Pipeline`] is the one way: the bounded log
//! queue ([`queue`]) hands items to the store (the journal, or memory), the [`Uploader`] replays
//! what the store holds with the [`Replayer`], the only code that sends runs, batches, statuses
//! and artifacts. [`sync_dir`] replays journals left on disk (`sapsan sync`).
pub mod pipeline;
pub mod plan;
pub mod queue;
pub mod replay;
pub mod sync;
pub mod uploader;

pub use pipeline::{LOCAL_RUN_PREFIX, Limits, Pipeline};
pub use plan::{JournalPlan, PlannedRun, SyncPlan, plan_sync};
pub use replay::{Replayer, is_transient};
pub use sync::{
    DEFAULT_SYNC_JOBS, JournalDone, OpenRuns, SYNC_MARK_FILE, SyncOptions, SyncReport,
    journal_dirs, sync_dir,
};
pub use uploader::{Backlog, UploadOptions, Uploader, Watch};

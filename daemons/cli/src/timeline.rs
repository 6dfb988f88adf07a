//! `rayd timeline -o trace.json`: a job's task timeline in the Chrome trace format (open
//! it in https://ui.perfetto.dev or chrome://tracing), the same events `ray.timeline()`
//! returns, read from the GCS.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};
use rayd_common::id::JobId;
use rayd_config::RaydConfig;
use rayd_gcs::{chrome_tracing, GcsClient};

/// Most events written (a job keeps its last 100,000).
const MAX_EVENTS: usize = 100_000;

/// Writes the timeline of `job` (default: the job that ran last) to `output`.
pub fn timeline(config: &RaydConfig, job: Option<&str>, output: &Path) -> anyhow::Result<ExitCode> {
    let (address, password) = crate::status::cluster_gcs(config)?;
    let job: Option<JobId> = job
        .map(|hex| {
            hex.parse()
                .with_context(|| format!("--job `{hex}` is not a job id"))
        })
        .transpose()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (job, events) = runtime.block_on(async {
        let gcs = GcsClient::connect(&address, password.as_deref())
            .await
            .with_context(|| format!("cannot reach the GCS at {address}"))?;
        let job = match job {
            Some(job) => job,
            None => latest_job(&gcs).await?,
        };
        let events = gcs.profile_events(job, MAX_EVENTS).await?;
        gcs.quit().await;
        anyhow::Ok((job, events))
    })?;
    let trace = chrome_tracing(&events);
    let file = std::fs::File::create(output)
        .with_context(|| format!("cannot create {}", output.display()))?;
    serde_json::to_writer(std::io::BufWriter::new(file), &trace)
        .with_context(|| format!("cannot write {}", output.display()))?;
    println!(
        "wrote {} events of job {job} to {} (open it in https://ui.perfetto.dev)",
        trace.len(),
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The job whose last timeline event ended last.
async fn latest_job(gcs: &GcsClient) -> anyhow::Result<JobId> {
    let mut latest: Option<(f64, JobId)> = None;
    for job in gcs.profiled_jobs().await? {
        let last = gcs.profile_events(job, 1).await?;
        let end = last.first().map_or(0.0, |e| e.end);
        if latest.is_none_or(|(t, _)| end > t) {
            latest = Some((end, job));
        }
    }
    match latest {
        Some((_, job)) => Ok(job),
        None => bail!(
            "no job has a timeline in the GCS at {}",
            gcs.primary_address()
        ),
    }
}

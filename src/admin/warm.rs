//! `s3cachefs warm PATH...`: fetches objects into the cache ahead of use, several at a
//! time, with a progress bar on a terminal and a summary at the end.
//!
//! - A path in a mount (file or directory): each file under it is read through the mount,
//!   which fills the mount's cache. Limits come from the mount's `.cache-stats`.
//! - `s3://bucket/prefix`: the live mount using the cache directory (`--cache-dir`, else
//!   the default) is asked over its control socket to list and open each object; when no
//!   mount has that cache, the cache is opened here with the S3 settings given.
//!
//! Before fetching anything, what was asked is compared with the cache's limits: objects
//! larger than the whole cache are left out, and so is whatever goes beyond the size or
//! entry limit (warming it would only evict what was just warmed), and the summary says
//! so.
//!
//! A path or URL that cannot be warmed (missing, outside any mount, in a mount with the
//! cache off, a malformed URL) is reported and the others are still warmed: the caller
//! exits non-zero at the end when anything failed.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use super::locate::{self, STATS_FILE};
use super::{AdminError, Limits, cache_config, count, human_bytes};
use crate::cache::{Cache, CacheError, LayoutError, SystemClock};
use crate::control::{Client, ControlError, Request, Response};
use crate::store::{S3Options, S3Store};
use crate::warming::{self, Warmed};

/// The validated settings of `warm`.
#[derive(Debug, Clone)]
pub struct WarmSettings {
    /// As given: paths in mounts, or `s3://` URLs.
    pub targets: Vec<PathBuf>,
    /// Objects fetched at once.
    pub jobs: usize,
    /// The cache `s3://` URLs go to.
    pub cache_dir: PathBuf,
    /// Used only when no mount holds `cache_dir`.
    pub limits: Limits,
    pub ttl: Duration,
    pub s3: S3Options,
    pub profile: String,
    /// Draw a progress bar (stderr is a terminal).
    pub progress: bool,
}

/// Which of the objects asked for to warm, in order, given the cache's limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub fit: Vec<usize>,
    /// Each larger than the whole cache: never stored.
    pub too_large: Vec<usize>,
    /// Beyond the size or entry limit once the earlier ones are in.
    pub no_room: Vec<usize>,
}

/// Goes through the objects in order, taking each one that still fits with those taken.
pub fn plan(sizes: &[u64], limits: Limits) -> Plan {
    let mut p = Plan::default();
    let (mut bytes, mut count) = (0u64, 0u64);
    for (i, &size) in sizes.iter().enumerate() {
        if size > limits.max_size {
            p.too_large.push(i);
        } else if count < limits.max_entries && bytes.saturating_add(size) <= limits.max_size {
            bytes += size;
            count += 1;
            p.fit.push(i);
        } else {
            p.no_room.push(i);
        }
    }
    p
}

#[derive(Debug, Clone)]
enum JobKind {
    File(PathBuf),
    Object { bucket: String, key: String },
}

#[derive(Debug, Clone)]
struct Job {
    label: String,
    size: u64,
    kind: JobKind,
}

/// How a group's jobs are carried out.
enum Backend {
    /// Read files through the mount at this root.
    Mount(PathBuf),
    /// Ask the mount serving this socket.
    Remote { socket: PathBuf },
    /// Our own open cache.
    Local(Cache),
}

struct Group {
    title: String,
    backend: Backend,
    limits: Limits,
    jobs: Vec<Job>,
}

/// What happened to one group, for the summary.
#[derive(Debug, Clone, Default)]
pub struct GroupReport {
    pub title: String,
    pub asked: usize,
    pub warmed: usize,
    pub bytes: u64,
    pub fetched: u64,
    pub cached: u64,
    pub not_cached: u64,
    /// Hits and misses could not be told apart per file (files read through a mount).
    pub approximate: bool,
    pub too_large: Vec<String>,
    pub no_room: Vec<(String, u64)>,
    pub failed: Vec<(String, String)>,
    pub limits: Option<Limits>,
    pub elapsed: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct WarmReport {
    pub groups: Vec<GroupReport>,
    /// Paths and URLs given that could not be warmed at all: why, each naming what it is
    /// about.
    pub not_warmed: Vec<String>,
}

impl WarmReport {
    /// What failed, in words (`1 path and 2 objects could not be warmed`), if anything.
    pub fn failures(&self) -> Option<String> {
        let objects: usize = self.groups.iter().map(|g| g.failed.len()).sum();
        let paths = self.not_warmed.len();
        let what = match (paths, objects) {
            (0, 0) => return None,
            (p, 0) => count(p as u64, "path", "paths"),
            (0, o) => count(o as u64, "object", "objects"),
            (p, o) => format!(
                "{} and {}",
                count(p as u64, "path", "paths"),
                count(o as u64, "object", "objects")
            ),
        };
        Some(format!("{what} could not be warmed"))
    }
}

/// Warms what it can; what it cannot is in the report, not an error.
pub async fn run(s: &WarmSettings) -> WarmReport {
    let (urls, paths): (Vec<&PathBuf>, Vec<&PathBuf>) = s
        .targets
        .iter()
        .partition(|t| t.to_str().is_some_and(|t| t.starts_with("s3://")));
    let mut report = WarmReport::default();
    let mut groups: Vec<Group> = Vec::new();
    for path in paths {
        if let Err(e) = add_path(&mut groups, path) {
            report.not_warmed.push(e.to_string());
        }
    }
    for g in &mut groups {
        dedup(&mut g.jobs);
    }
    if !urls.is_empty()
        && let Some(g) = url_group(s, &urls, &mut report.not_warmed).await
    {
        groups.push(g);
    }
    for g in groups {
        report.groups.push(warm_group(g, s).await);
    }
    report
}

/// Adds every file at or under `path` to the group of the mount it is in (one group per
/// mount). Every error names the path it is about.
fn add_path(groups: &mut Vec<Group>, path: &Path) -> Result<(), AdminError> {
    let root = locate::mount_root(path)?;
    let of_root = |g: &&mut Group| matches!(&g.backend, Backend::Mount(r) if *r == root);
    // Before walking the path: a mount with its cache off has nothing to warm.
    let limits = match groups.iter_mut().find(of_root) {
        Some(g) => g.limits,
        None => mount_limits(path, &root)?,
    };
    let canon = std::fs::canonicalize(path).map_err(|err| AdminError::Io {
        path: path.to_path_buf(),
        err,
    })?;
    let mut jobs = Vec::new();
    collect_files(&root, &canon, &mut jobs)?;
    match groups.iter_mut().find(of_root) {
        Some(g) => g.jobs.extend(jobs),
        None => groups.push(Group {
            title: format!("mount {}", root.display()),
            backend: Backend::Mount(root.clone()),
            limits,
            jobs,
        }),
    }
    Ok(())
}

/// The limits of the mount at `root`, which `path` is in.
fn mount_limits(path: &Path, root: &Path) -> Result<Limits, AdminError> {
    let (_, doc) = locate::read_stats(root)?;
    if locate::cache_off(&doc) {
        return Err(AdminError::CacheOff {
            path: path.to_path_buf(),
            root: root.to_path_buf(),
        });
    }
    limits_of(&doc)
        .ok_or_else(|| AdminError::Other(format!("{}: no limits", root.join(STATS_FILE).display())))
}

fn limits_of(stats: &Value) -> Option<Limits> {
    Some(Limits {
        max_size: stats.get("max_size")?.as_u64()?,
        max_entries: stats.get("max_entries")?.as_u64()?,
    })
}

/// Every file at or under `path`, in name order. The root's `.cache-stats` is no object.
fn collect_files(root: &Path, path: &Path, out: &mut Vec<Job>) -> Result<(), AdminError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |err| AdminError::Io { path: p, err }
    };
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if meta.is_file() {
        if path != root.join(STATS_FILE) {
            out.push(Job {
                label: path.display().to_string(),
                size: meta.len(),
                kind: JobKind::File(path.to_path_buf()),
            });
        }
        return Ok(());
    }
    let mut names: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(io(path))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io(path))?;
    names.sort();
    for p in names {
        collect_files(root, &p, out)?;
    }
    Ok(())
}

fn dedup(jobs: &mut Vec<Job>) {
    let mut seen = HashSet::new();
    jobs.retain(|j| seen.insert(j.label.clone()));
}

/// All `s3://` URLs go to one cache: the live mount's, or ours. What cannot be warmed
/// goes to `not_warmed`, one line per URL; `None` when none of them can be.
async fn url_group(
    s: &WarmSettings,
    urls: &[&PathBuf],
    not_warmed: &mut Vec<String>,
) -> Option<Group> {
    let mut parsed = Vec::new();
    for u in urls {
        let text = u.to_string_lossy();
        match warming::parse_s3_url(&text) {
            Some(p) => parsed.push((text, p)),
            None => not_warmed.push(format!(
                "{text}: expected s3://BUCKET or s3://BUCKET/PREFIX"
            )),
        }
    }
    if parsed.is_empty() {
        return None;
    }
    let mut group = match url_backend(s).await {
        Ok(g) => g,
        Err(e) => {
            not_warmed.extend(parsed.iter().map(|(text, _)| format!("{text}: {e}")));
            return None;
        }
    };
    for (text, (bucket, prefix)) in parsed {
        match list_url(&group.backend, &bucket, &prefix).await {
            Ok(objects) => {
                if objects.is_empty() {
                    eprintln!("s3cachefs: warning: s3://{bucket}/{prefix} names no objects");
                }
                group
                    .jobs
                    .extend(objects.into_iter().map(|(key, size)| Job {
                        label: crate::store::s3_url(&bucket, &key),
                        size,
                        kind: JobKind::Object {
                            bucket: bucket.clone(),
                            key,
                        },
                    }));
            }
            Err(e) => not_warmed.push(format!("{text}: {e}")),
        }
    }
    dedup(&mut group.jobs);
    Some(group)
}

/// The cache `s3://` URLs go to: the live mount using `--cache-dir`, or that directory
/// opened here. The group has no jobs yet.
async fn url_backend(s: &WarmSettings) -> Result<Group, AdminError> {
    let (backend, limits, title) = match locate::connect_cache_dir(&s.cache_dir).await {
        Some((_, status)) => {
            let limits = limits_of(&status.stats)
                .ok_or_else(|| AdminError::Other("the mount's stats have no limits".into()))?;
            (
                Backend::Remote {
                    socket: crate::control::socket_path(&s.cache_dir),
                },
                limits,
                format!(
                    "s3:// through the mount at {} (cache {})",
                    status.mountpoint.display(),
                    status.cache_dir.display()
                ),
            )
        }
        None => {
            let cfg = cache_config(s.cache_dir.clone(), s.limits, s.ttl, s.profile.clone());
            let store = Arc::new(S3Store::new(&s.s3).await);
            let cache = Cache::open(cfg, store, Arc::new(SystemClock)).map_err(|e| match e {
                CacheError::Layout(LayoutError::Locked { dir, holder }) => {
                    AdminError::NotAMount(format!(
                        "cache directory {} is in use by a running s3cachefs mount{holder} \
                         that does not answer on its control socket; warm paths in that \
                         mount instead",
                        dir.display()
                    ))
                }
                other => other.into(),
            })?;
            (
                Backend::Local(cache),
                s.limits,
                format!("s3:// into {} (not mounted)", s.cache_dir.display()),
            )
        }
    };
    Ok(Group {
        title,
        backend,
        limits,
        jobs: Vec::new(),
    })
}

/// (key, size) of every object `s3://bucket/prefix` names.
async fn list_url(
    backend: &Backend,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<(String, u64)>, AdminError> {
    Ok(match backend {
        Backend::Remote { socket } => {
            let mut c = Client::connect(socket).await?;
            let asked = Request::List {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            };
            match c.call(&asked).await? {
                Response::Listing { objects } => {
                    objects.into_iter().map(|o| (o.key, o.size)).collect()
                }
                other => return Err(ControlError::Protocol(format!("{other:?}")).into()),
            }
        }
        Backend::Local(cache) => warming::list(cache.store().as_ref(), bucket, prefix)
            .await
            .map_err(|e| AdminError::Other(format!("listing: {e}")))?
            .into_iter()
            .map(|o| (o.key, o.size))
            .collect(),
        Backend::Mount(_) => Vec::new(),
    })
}

/// The outcome of one job: `None` when it was a read through a mount (which cannot tell
/// a hit from a miss).
type JobResult = Result<Option<Warmed>, String>;

async fn run_job(backend: &Backend, job: &Job) -> JobResult {
    match (&job.kind, backend) {
        (JobKind::File(p), _) => {
            let p = p.clone();
            tokio::task::spawn_blocking(move || read_through(&p))
                .await
                .map_err(|e| e.to_string())?
                .map(|()| None)
                .map_err(|e| e.to_string())
        }
        (JobKind::Object { bucket, key }, Backend::Remote { socket }) => {
            let mut c = Client::connect(socket).await.map_err(|e| e.to_string())?;
            match c
                .call(&Request::Warm {
                    bucket: bucket.clone(),
                    key: key.clone(),
                })
                .await
            {
                Ok(Response::Warmed { outcome, .. }) => Ok(Some(outcome)),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        }
        (JobKind::Object { bucket, key }, Backend::Local(cache)) => {
            warming::warm_one(cache, bucket, key)
                .await
                .map(|(w, _)| Some(w))
                .map_err(|e| e.to_string())
        }
        (JobKind::Object { .. }, Backend::Mount(_)) => Err("not an object of this mount".into()),
    }
}

/// Reads the whole file: the mount fills its cache as it serves the reads.
fn read_through(path: &Path) -> std::io::Result<()> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf)? > 0 {}
    Ok(())
}

fn progress_bar(total: u64, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg} ({bytes_per_sec}, {eta})",
    ) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

async fn warm_group(g: Group, s: &WarmSettings) -> GroupReport {
    let sizes: Vec<u64> = g.jobs.iter().map(|j| j.size).collect();
    let p = plan(&sizes, g.limits);
    let mut r = GroupReport {
        title: g.title.clone(),
        asked: g.jobs.len(),
        limits: Some(g.limits),
        approximate: matches!(g.backend, Backend::Mount(_)),
        too_large: p
            .too_large
            .iter()
            .map(|&i| g.jobs[i].label.clone())
            .collect(),
        no_room: p
            .no_room
            .iter()
            .map(|&i| (g.jobs[i].label.clone(), g.jobs[i].size))
            .collect(),
        ..GroupReport::default()
    };
    if !r.too_large.is_empty() || !r.no_room.is_empty() {
        let asked: u64 = sizes.iter().sum();
        let n = g.jobs.len() as u64;
        eprintln!(
            "s3cachefs: {} ({}) {} not fit in the cache ({}, {}): warming the first {}",
            count(n, "object", "objects"),
            human_bytes(asked),
            if n == 1 { "does" } else { "do" },
            human_bytes(g.limits.max_size),
            count(g.limits.max_entries, "entry", "entries"),
            p.fit.len()
        );
    }
    let fit: Vec<&Job> = p.fit.iter().map(|&i| &g.jobs[i]).collect();
    let total: u64 = fit.iter().map(|j| j.size).sum();
    let before = match &g.backend {
        Backend::Mount(root) => read_counts(root),
        _ => None,
    };
    let bar = progress_bar(total, s.progress);
    let started = Instant::now();
    let backend = &g.backend;
    let n = fit.len();
    let mut done = 0usize;
    let mut results = futures::stream::iter(fit)
        .map(|job| async move { (job, run_job(backend, job).await) })
        .buffer_unordered(s.jobs.max(1));
    while let Some((job, result)) = results.next().await {
        done += 1;
        bar.inc(job.size);
        bar.set_message(format!("{done}/{n} objects"));
        match result {
            Ok(outcome) => {
                r.warmed += 1;
                r.bytes += job.size;
                match outcome {
                    Some(Warmed::Fetched) => r.fetched += 1,
                    Some(Warmed::Cached) => r.cached += 1,
                    Some(Warmed::NotCached) => r.not_cached += 1,
                    None => {}
                }
            }
            Err(e) => r.failed.push((job.label.clone(), e)),
        }
    }
    drop(results);
    bar.finish_and_clear();
    r.elapsed = started.elapsed();
    match (&g.backend, before) {
        (Backend::Mount(root), Some((h0, m0))) => {
            if let Some((h1, m1)) = read_counts(root) {
                r.cached = h1.saturating_sub(h0);
                r.fetched = m1.saturating_sub(m0);
            }
        }
        (Backend::Local(cache), _) => {
            if let Err(e) = cache.close() {
                r.failed.push(("closing the cache".into(), e.to_string()));
            }
        }
        _ => {}
    }
    r
}

/// (hits, misses) of a mount: its own count of what our reads found.
fn read_counts(root: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(root.join(STATS_FILE)).ok()?;
    let doc: Value = serde_json::from_str(&text).ok()?;
    Some((doc.get("hits")?.as_u64()?, doc.get("misses")?.as_u64()?))
}

impl std::fmt::Display for WarmReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for g in &self.groups {
            write!(
                f,
                "{}: warmed {} of {} ({}) in {:.1} s",
                g.title,
                g.warmed,
                count(g.asked as u64, "object", "objects"),
                human_bytes(g.bytes),
                g.elapsed.as_secs_f64()
            )?;
            let approx = if g.approximate {
                " (as the mount counted them)"
            } else {
                ""
            };
            write!(
                f,
                ": {} fetched from S3, {} already cached{approx}",
                g.fetched, g.cached
            )?;
            if g.not_cached > 0 {
                write!(f, ", {} read but not stored", g.not_cached)?;
            }
            writeln!(f)?;
            if let Some(l) = g.limits {
                if !g.too_large.is_empty() {
                    writeln!(
                        f,
                        "  left out: {} larger than the whole cache ({}), e.g. {}",
                        g.too_large.len(),
                        human_bytes(l.max_size),
                        g.too_large[0]
                    )?;
                }
                if !g.no_room.is_empty() {
                    let bytes: u64 = g.no_room.iter().map(|(_, s)| s).sum();
                    writeln!(
                        f,
                        "  left out: {} ({}) beyond the cache's limits ({}, {}), e.g. {}; raise \
                         --cache-max-size-mb / --cache-max-entries of the mount",
                        count(g.no_room.len() as u64, "object", "objects"),
                        human_bytes(bytes),
                        human_bytes(l.max_size),
                        count(l.max_entries, "entry", "entries"),
                        g.no_room[0].0
                    )?;
                }
            }
            for (what, e) in &g.failed {
                writeln!(f, "  failed: {what}: {e}")?;
            }
        }
        for why in &self.not_warmed {
            writeln!(f, "failed: {why}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_takes_what_fits_in_order() {
        let limits = Limits {
            max_size: 100,
            max_entries: 3,
        };
        let p = plan(&[40, 150, 50, 20, 5, 1], limits);
        assert_eq!(p.fit, vec![0, 2, 4]);
        assert_eq!(p.too_large, vec![1]);
        assert_eq!(p.no_room, vec![3, 5]);
        let all = plan(&[10, 10], limits);
        assert_eq!(all.fit, vec![0, 1]);
        assert!(all.too_large.is_empty() && all.no_room.is_empty());
    }
}

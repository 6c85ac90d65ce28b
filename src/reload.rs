//! What sets off a reload: SIGHUP, and a change to any file the config was read from (the config itself,
//! certificates, keys, secret files). Files are watched through their directories (`notify`, inotify on Linux), so
//! that a Kubernetes ConfigMap's `..data` symlink swap and an editor's write-to-a-temporary-and-rename are seen like a
//! write in place. An event only counts when a file's content differs from what was loaded, after a short quiet
//! period that lets an update of several files (a certificate and its key) land as one reload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::Watcher as _;
use tokio::sync::mpsc;

use crate::config::Fingerprint;

/// How long the watched directories must stay quiet before their files are compared...
const QUIET: Duration = Duration::from_millis(150);
/// ...but no longer than this after the first event: a busy directory (a database beside the config) must not
/// postpone the comparison for ever.
const MAX_QUIET: Duration = Duration::from_secs(1);

/// Why a reload is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// SIGHUP.
    Signal,
    /// These files' content changed.
    Files(Vec<PathBuf>),
}

/// The reload triggers of a running gateway.
pub struct Triggers {
    /// `None` when watching could not start (logged): SIGHUP and the admin API still reload.
    watcher: Option<notify::RecommendedWatcher>,
    events: mpsc::UnboundedReceiver<()>,
    sender: mpsc::UnboundedSender<()>,
    hangup: Option<Signal>,
    /// Each file followed, with the fingerprint of the content last loaded or tried.
    files: Vec<(PathBuf, Option<Fingerprint>)>,
    dirs: Vec<PathBuf>,
}

impl std::fmt::Debug for Triggers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Triggers")
            .field("watching", &self.watcher.is_some())
            .field("dirs", &self.dirs)
            .finish_non_exhaustive()
    }
}

impl Triggers {
    /// Follow `files` (as [`crate::gateway::Config::files`] lists them) and SIGHUP.
    pub fn new(files: &[(PathBuf, Fingerprint)]) -> Self {
        let (sender, events) = mpsc::unbounded_channel();
        let tx = sender.clone();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.as_ref().is_ok_and(|e| !may_change(&e.kind)) {
                return;
            }
            // Errors count too: a rescan may be due.
            let _ = tx.send(());
        })
        .map_err(|e| tracing::warn!(error = %e, "cannot watch the config's files; reload with SIGHUP or the admin API"))
        .ok();
        #[cfg(unix)]
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| tracing::warn!(error = %e, "cannot handle SIGHUP"))
            .ok();
        #[cfg(not(unix))]
        let hangup = None;
        let mut t = Self {
            watcher,
            events,
            sender,
            hangup,
            files: Vec::new(),
            dirs: Vec::new(),
        };
        t.follow(files);
        t
    }

    /// From now on follow `files`, the list of a config just put in force, with the content it was loaded from as
    /// the baseline. A file that changed since it was read is reported at once.
    pub fn follow(&mut self, files: &[(PathBuf, Fingerprint)]) {
        self.files = files.iter().map(|(p, d)| (p.clone(), Some(*d))).collect();
        let mut dirs: Vec<PathBuf> = Vec::new();
        for (p, _) in files {
            let dir = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        if let Some(w) = &mut self.watcher {
            for old in self.dirs.iter().filter(|d| !dirs.contains(d)) {
                let _ = w.unwatch(old);
            }
            for new in dirs.iter().filter(|d| !self.dirs.contains(d)) {
                if let Err(e) = w.watch(new, notify::RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %new.display(), error = %e, "cannot watch a config directory");
                }
            }
        }
        self.dirs = dirs;
        // Changed between being read and being watched: compare now rather than wait for an event that came early.
        let _ = self.sender.send(());
    }

    /// The next reason to reload.
    pub async fn next(&mut self) -> Why {
        loop {
            tokio::select! {
                () = hangup(&mut self.hangup) => return Why::Signal,
                Some(()) = self.events.recv() => {
                    self.quiet().await;
                    let changed = self.changed();
                    if !changed.is_empty() {
                        return Why::Files(changed);
                    }
                }
            }
        }
    }

    /// Wait until no event has come for [`QUIET`], or [`MAX_QUIET`] passed.
    async fn quiet(&mut self) {
        let until = tokio::time::Instant::now() + MAX_QUIET;
        loop {
            let wait = until
                .saturating_duration_since(tokio::time::Instant::now())
                .min(QUIET);
            match tokio::time::timeout(wait, self.events.recv()).await {
                Ok(Some(())) if !wait.is_zero() => {}
                _ => return,
            }
        }
    }

    /// The files whose content differs from the baseline, which becomes their content now: a broken file is tried
    /// once, and the next change to it is tried again.
    fn changed(&mut self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for (path, seen) in &mut self.files {
            let now = content(path);
            if now != *seen {
                *seen = now;
                out.push(path.clone());
            }
        }
        out
    }
}

/// Whether an event can mean a changed file. Opening, reading and closing a file unwritten cannot, and they must not
/// count: comparing reads every followed file, and each read would set off the next comparison, for ever.
fn may_change(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        notify::EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        notify::EventKind::Access(_) => false,
        _ => true,
    }
}

/// The fingerprint of a file's content now, `None` when it cannot be read (e.g. mid-swap).
fn content(path: &Path) -> Option<Fingerprint> {
    std::fs::read(path).ok().map(|b| Fingerprint::of(&b))
}

/// Resolves on SIGHUP; never when it cannot be handled.
async fn hangup(signal: &mut Option<Signal>) {
    #[cfg(unix)]
    if let Some(s) = signal {
        s.recv().await;
        return;
    }
    let _ = signal;
    std::future::pending().await
}

#[cfg(unix)]
type Signal = tokio::signal::unix::Signal;
/// No SIGHUP off Unix.
#[cfg(not(unix))]
type Signal = std::convert::Infallible;

#[cfg(test)]
mod tests {
    use super::*;

    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind};

    #[test]
    fn reads_do_not_count_writes_do() {
        for quiet in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
        ] {
            assert!(!may_change(&quiet), "{quiet:?}");
        }
        for change in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Any),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
        ] {
            assert!(may_change(&change), "{change:?}");
        }
    }

    /// Comparing reads the followed files; if those reads were events, the watcher would compare again every
    /// quiet period while nothing changes.
    #[tokio::test]
    async fn reading_the_followed_files_sets_nothing_off() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "a = 1\n").expect("write");
        let mut t = Triggers::new(&[(file.clone(), Fingerprint::of(b"a = 1\n"))]);
        assert!(
            t.watcher.is_some(),
            "inotify must be available for this test"
        );
        // The check that `follow` queues for a file changed before it was watched.
        assert_eq!(t.events.recv().await, Some(()));
        for _ in 0..5 {
            assert!(t.changed().is_empty());
        }
        // Two marks after the reads: once both have arrived, any event the reads caused has arrived before them.
        for mark in ["mark-1", "mark-2"] {
            std::fs::create_dir(dir.path().join(mark)).expect("mark");
            let got = tokio::time::timeout(Duration::from_secs(10), t.events.recv()).await;
            assert_eq!(got, Ok(Some(())), "the mark {mark} is an event");
        }
        assert!(
            t.events.try_recv().is_err(),
            "reading the followed file was taken for a change"
        );
    }
}

//! Object storage flags shared by `tsdb-ctl` and `tsdb-operator agent restore` (the seed's `--endpoint
//! --region --bucket --prefix`, plus `--dir` for a local directory and `--credentials-dir`), and how a backup is
//! found from them. Wiring only.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use tsdb_operator_adapters::backup::catalogue::{list_backups, list_cluster_backups};
use tsdb_operator_adapters::backup::store::{self, Credentials, Store, Tuning};
use tsdb_operator_core::backup::manifest::Layout;
use tsdb_operator_core::backup::protocol::{DEFAULT_REGION, StoreLocation};

/// Where the backups are.
#[derive(Args, Clone, Debug)]
pub struct StoreArgs {
    /// S3-compatible endpoint URL (path-style addressing when set); AWS when unset.
    #[arg(long, default_value = "")]
    pub endpoint: String,
    /// Region of the bucket.
    #[arg(long, default_value = DEFAULT_REGION)]
    pub region: String,
    /// Bucket (required unless --dir is given).
    #[arg(long, default_value = "")]
    pub bucket: String,
    /// Key prefix (spec.backup.prefix of the cluster).
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// A local directory that plays the bucket, instead of S3.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Directory with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY files; the AWS environment variables otherwise.
    #[arg(long)]
    pub credentials_dir: Option<PathBuf>,
}

impl StoreArgs {
    /// The store location.
    pub fn location(&self) -> Result<StoreLocation> {
        if let Some(dir) = &self.dir {
            return Ok(StoreLocation::Local { dir: dir.to_string_lossy().into_owned(), prefix: self.prefix.clone() });
        }
        if self.bucket.is_empty() {
            bail!("--bucket is required");
        }
        Ok(StoreLocation::S3 {
            bucket: self.bucket.clone(),
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            prefix: self.prefix.clone(),
        })
    }

    /// Opens the store.
    pub fn open(&self) -> Result<Store> {
        let location = self.location()?;
        let credentials = self.credentials_dir.as_deref().and_then(Credentials::from_dir);
        Ok(store::open(&location, credentials.as_ref(), &Tuning::default())?)
    }
}

/// Which backup: by manifest key, or by cluster and id; the newest when no id is given.
#[derive(Args, Clone, Debug)]
pub struct BackupArgs {
    /// The source cluster as NAMESPACE/NAME.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Backup id (for example 20260413T001900Z); the newest when unset.
    #[arg(long)]
    pub backup: Option<String>,
    /// The full key of the backup's manifest, as `tsdb-ctl list` prints it.
    #[arg(long)]
    pub key: Option<String>,
}

/// Finds the backup: its cluster root and id.
pub async fn find_backup(store: &Store, args: &StoreArgs, which: &BackupArgs) -> Result<(Layout, String)> {
    if let Some(key) = &which.key {
        let (layout, id) = Layout::split_manifest_key(key)
            .with_context(|| format!("{key} is not a manifest key (<root>/backups/<id>/manifest.json)"))?;
        return Ok((layout, id.to_owned()));
    }
    // With --cluster, only that cluster's own backups: not those of another cluster whose root is nested in it.
    let (scope, entries) = match &which.cluster {
        Some(c) => {
            let (ns, name) =
                c.split_once('/').with_context(|| format!("--cluster {c:?}: write it as NAMESPACE/NAME"))?;
            let layout = Layout::new(&args.prefix, ns, name);
            let entries = list_cluster_backups(store, &layout).await?;
            (layout.root().to_owned(), entries)
        }
        None => (args.prefix.clone(), list_backups(store, &args.prefix).await?),
    };
    let found =
        entries.iter().filter(|e| e.manifest.is_ok()).find(|e| which.backup.as_deref().is_none_or(|id| e.id() == id));
    match found {
        Some(e) => Ok((e.layout.clone(), e.id().to_owned())),
        None => match &which.backup {
            Some(id) => bail!("backup {id} not found under {} {scope}", store.describe()),
            None => bail!("no backups under {} {scope}", store.describe()),
        },
    }
}

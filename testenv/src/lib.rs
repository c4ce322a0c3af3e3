//! Test environment for tsdb-operator: real processes on loopback, supervised so that none outlives the
//! test binary.
//!
//! ```text
//!  test ──► ControlPlane::shared() ──► etcd ◄── kube-apiserver ◄── kube-controller-manager
//!   │            (one per test binary)                  ▲      ◄── kube-scheduler
//!   │                                                   └── kube::Client per test (fresh, per runtime)
//!   ├──► S3Server::start()        s3s-fs on 127.0.0.1:<free port>, fresh bucket, stop/restart/freeze
//!   └──► Postgres::fresh_database  the machine's PostgreSQL, one database per test
//!
//!  every process: bash supervise.sh ──► program      (stops it when the test process is gone)
//!  every workdir: bash janitor.sh                    (removes it when the test process is gone)
//! ```
//!
//! Binaries come from `scripts/install-deps.sh` ([`paths`]). See `docs/testenv.md`.

pub mod audit;
pub mod controlplane;
pub mod kubelet;
pub mod openmetrics;
pub mod paths;
pub mod postgres;
pub mod process;
pub mod s3;

pub use controlplane::ControlPlane;
pub use postgres::Postgres;
pub use s3::S3Server;

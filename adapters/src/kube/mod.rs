//! The Kubernetes adapter: reads the children of a PrometheusCluster and executes the core's plan with
//! server-side apply under one field manager. I/O: the Kubernetes API.

pub mod children;
pub mod decode;
pub mod discovery;

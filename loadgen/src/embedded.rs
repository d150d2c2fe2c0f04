//! The in-process cluster of `--embedded`: central + nodes (`central::dev::DevCluster`) on
//! loopback, in-memory directory, real gRPC between them.

use anyhow::{bail, Context};
use central::dev::{DevCluster, DevOptions};

use crate::config::Config;

/// A running embedded cluster.
pub struct Embedded {
    cluster: DevCluster,
}

impl Embedded {
    /// Starts central and `config.embedded_nodes` nodes; central asks for JWTs when
    /// `--jwt-secret` is given (so the JWT login path can be tried locally).
    pub async fn start(config: &Config) -> anyhow::Result<Embedded> {
        let mut central = central::Config::dev();
        central.jwt_secret = config.jwt_secret.clone();
        central.jwt_audience = config.jwt_audience.clone();
        central.jwt_issuer = config.jwt_issuer.clone();
        let opts = DevOptions {
            central,
            nodes: config.embedded_nodes,
            node_drain: config.drain_window,
            ..DevOptions::default()
        };
        let cluster = DevCluster::start(opts).await.context("dev cluster")?;
        Ok(Embedded { cluster })
    }

    pub fn central_url(&self) -> String {
        self.cluster.central_url()
    }

    pub fn node_ids(&self) -> Vec<String> {
        self.cluster
            .node_ids()
            .into_iter()
            .map(|id| id.into_string())
            .collect()
    }

    /// Starts node `i`'s graceful drain (its users get 1012 and go back to central).
    pub fn drain_node(&self, i: usize) -> anyhow::Result<()> {
        if !self.cluster.drain_node(i) {
            bail!("--drain-node {i}: there is no such node");
        }
        Ok(())
    }

    /// Drains node `i`, waits until it has stopped, starts it again (same id) and waits until
    /// it has registered: one step of a rolling restart.
    pub async fn restart_node(&mut self, i: usize) -> anyhow::Result<()> {
        self.cluster
            .restart_node(i)
            .await
            .with_context(|| format!("restarting node {i}"))
    }

    /// Stops the nodes, then central.
    pub async fn shutdown(self) {
        if let Err(e) = self.cluster.shutdown().await {
            tracing::warn!(error = %e, "embedded cluster did not stop cleanly");
        }
    }
}

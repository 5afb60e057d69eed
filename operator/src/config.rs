//! The operator's configuration: flags, each also read from the
//! environment (the downward API's `POD_NAME` and `POD_NAMESPACE` among
//! them), checked all together into a [`Config`] before anything talks to
//! the API server.
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser};
use ipnet::Ipv4Net;

use crate::leader::LeaseConfig;
use crate::pod_cidrs::pool::{Pool, PoolError};

/// weir operator: the cluster-wide controllers (identities, pod CIDRs,
/// policy status), run by the one replica that holds the Lease.
#[derive(Debug, Clone, Parser)]
#[command(name = "weir-operator", version)]
pub struct Args {
    /// The API server, from this kubeconfig; without it, the pod's service
    /// account (in-cluster config).
    #[arg(long, env = "WEIR_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Log filter (tracing-subscriber EnvFilter syntax).
    #[arg(long, env = "WEIR_LOG", default_value = "info")]
    pub log: String,
    /// Run the controllers only while holding the Lease, so that of several
    /// replicas one is active. `false` runs them at once: one replica only.
    #[arg(long, env = "WEIR_LEADER_ELECT", default_value_t = true, action = ArgAction::Set)]
    pub leader_elect: bool,
    /// The Lease's namespace: the operator's own.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    pub leader_elect_namespace: String,
    /// The Lease's name (install/rbac.yaml grants this name only).
    #[arg(long, env = "WEIR_LEADER_ELECT_LEASE_NAME", default_value = "weir-operator")]
    pub leader_elect_lease_name: String,
    /// This replica's name in the Lease (`holderIdentity`), unique among
    /// the replicas: its pod's name; default HOSTNAME_PID.
    #[arg(long, env = "POD_NAME")]
    pub leader_elect_identity: Option<String>,
    /// How long the Lease holds after its last renewal: a replica that sees
    /// no renewal for this long takes it over (whole seconds).
    #[arg(long, env = "WEIR_LEADER_ELECT_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub leader_elect_lease_duration: Duration,
    /// The leader stops its controllers when no renewal succeeded for this
    /// long; shorter than the lease duration, so they have stopped before
    /// another replica may take over.
    #[arg(long, env = "WEIR_LEADER_ELECT_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub leader_elect_renew_deadline: Duration,
    /// How often the leader renews and a standby replica tries the Lease.
    #[arg(long, env = "WEIR_LEADER_ELECT_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub leader_elect_retry_period: Duration,
    /// Give Nodes without `spec.podCIDR` one from this pool (IPv4). Off
    /// unless given; kube-controller-manager's allocator must then be off
    /// (`--allocate-node-cidrs=false`).
    #[arg(long, env = "WEIR_CLUSTER_CIDR")]
    pub cluster_cidr: Option<Ipv4Net>,
    /// The prefix length of each node's pod CIDR.
    #[arg(long, env = "WEIR_NODE_CIDR_MASK_SIZE", default_value_t = 24)]
    pub node_cidr_mask_size: u8,
    /// Issue and renew the Observer API's certificates (weir's CA, the
    /// agents' server certificate, the relay's client and server ones) in
    /// Secrets of the operator's namespace (`POD_NAMESPACE`).
    #[arg(long, env = "WEIR_HUBBLE_CERTS", default_value_t = false, action = ArgAction::Set)]
    pub hubble_certs: bool,
    /// How long each issued certificate is valid (renewed with a third
    /// left; the CA lives ten times as long): 365d, 12h, 20s.
    #[arg(long, env = "WEIR_HUBBLE_CERT_VALIDITY", default_value = "365d", value_parser = parse_duration)]
    pub hubble_cert_validity: Duration,
}

/// What the operator runs, checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// `None`: no leader election (`--leader-elect=false`).
    pub leader: Option<LeaseConfig>,
    /// `None`: pod CIDRs are not allocated (no `--cluster-cidr`).
    pub pod_cidrs: Option<Pool>,
    /// `None`: no certificates issued (no `--hubble-certs`).
    pub hubble_certs: Option<HubbleCerts>,
}

/// Where and for how long the Observer API's certificates are issued.
#[derive(Debug, Clone)]
pub struct HubbleCerts {
    pub namespace: String,
    pub validity: Duration,
}

/// One thing wrong with the flags.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The Lease stores its duration in whole seconds.
    #[error("--leader-elect-lease-duration {0:?} must be a whole number of seconds, at least 1")]
    LeaseDuration(Duration),
    /// The leader must have stopped before its lease can be taken.
    #[error("--leader-elect-renew-deadline {renew:?} must be shorter than --leader-elect-lease-duration {lease:?}")]
    RenewDeadline { renew: Duration, lease: Duration },
    /// A leader must get more than one try to renew within the deadline.
    #[error(
        "--leader-elect-retry-period {retry:?} must be shorter than --leader-elect-renew-deadline {renew:?} (and not 0)"
    )]
    RetryPeriod { retry: Duration, renew: Duration },
    #[error("--leader-elect-identity must not be empty")]
    Identity,
    #[error("--leader-elect-namespace and --leader-elect-lease-name must not be empty")]
    LeaseName,
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("--hubble-cert-validity {0:?} must be at least 10s")]
    CertValidity(Duration),
}

/// Everything wrong with the flags, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

impl std::error::Error for ConfigErrors {}

impl Args {
    /// The checked configuration, or every error found.
    pub fn config(&self) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let pod_cidrs = match self.cluster_cidr.map(|c| Pool::new(c, self.node_cidr_mask_size)) {
            Some(Ok(p)) => Some(p),
            Some(Err(e)) => {
                errors.push(e.into());
                None
            }
            None => None,
        };
        let (lease, renew, retry) = (
            self.leader_elect_lease_duration,
            self.leader_elect_renew_deadline,
            self.leader_elect_retry_period,
        );
        if lease.subsec_nanos() != 0 || lease < Duration::from_secs(1) || lease.as_secs() > i32::MAX as u64 {
            errors.push(ConfigError::LeaseDuration(lease));
        }
        if renew >= lease {
            errors.push(ConfigError::RenewDeadline { renew, lease });
        }
        if retry >= renew || retry.is_zero() {
            errors.push(ConfigError::RetryPeriod { retry, renew });
        }
        let identity = self.leader_elect_identity.clone().unwrap_or_else(default_identity);
        if identity.is_empty() {
            errors.push(ConfigError::Identity);
        }
        if self.leader_elect_namespace.is_empty() || self.leader_elect_lease_name.is_empty() {
            errors.push(ConfigError::LeaseName);
        }
        if self.hubble_certs && self.hubble_cert_validity < Duration::from_secs(10) {
            errors.push(ConfigError::CertValidity(self.hubble_cert_validity));
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(Config {
            leader: self.leader_elect.then(|| LeaseConfig {
                namespace: self.leader_elect_namespace.clone(),
                name: self.leader_elect_lease_name.clone(),
                identity,
                lease_duration: lease,
                renew_deadline: renew,
                retry_period: retry,
            }),
            pod_cidrs,
            hubble_certs: self.hubble_certs.then(|| HubbleCerts {
                namespace: self.leader_elect_namespace.clone(),
                validity: self.hubble_cert_validity,
            }),
        })
    }
}

/// `HOSTNAME_PID`: unique among replicas on one host too.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}_{}", host.trim(), std::process::id())
}

/// `15s`, `500ms`, `2m`, `1.5s`, `12h`, `365d`, or a bare number of
/// seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (like 15s, 500ms, 2m)"))?;
    let seconds = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        other => return Err(format!("{s:?}: unknown unit {other:?} (ms, s, m, h or d)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        Args::parse_from(std::iter::once("weir-operator").chain(extra.iter().copied()))
    }

    #[test]
    fn durations_read_as_kubernetes_components_write_them() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_duration("365d"), Ok(Duration::from_secs(365 * 86400)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert!(parse_duration("3w").is_err());
    }

    #[test]
    fn defaults_elect_a_leader_and_allocate_no_cidrs() {
        let c = args(&["--leader-elect-identity", "op-0"]).config().expect("valid");
        let l = c.leader.expect("leader election on by default");
        assert_eq!(
            (l.namespace.as_str(), l.name.as_str(), l.identity.as_str()),
            ("kube-system", "weir-operator", "op-0")
        );
        assert_eq!(
            (l.lease_duration, l.renew_deadline, l.retry_period),
            (Duration::from_secs(15), Duration::from_secs(10), Duration::from_secs(2))
        );
        assert!(c.pod_cidrs.is_none());
        assert!(args(&["--leader-elect=false"]).config().unwrap().leader.is_none());
        let pool = args(&["--cluster-cidr", "10.244.0.0/16", "--node-cidr-mask-size", "26"])
            .config()
            .unwrap()
            .pod_cidrs
            .unwrap();
        assert_eq!(pool.size(), 1024);
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let e = args(&[
            "--leader-elect-lease-duration",
            "1500ms",
            "--leader-elect-renew-deadline",
            "2s",
            "--leader-elect-retry-period",
            "2s",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--node-cidr-mask-size",
            "12",
        ])
        .config()
        .unwrap_err();
        assert_eq!(e.0.len(), 4, "{e}");
        assert!(matches!(
            e.0[0],
            ConfigError::Pool(PoolError::Mask { mask: 12, prefix: 16 })
        ));
        assert!(e.to_string().contains("whole number of seconds"), "{e}");
    }
}

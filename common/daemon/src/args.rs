//! The command-line flags that several rayd binaries share.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rayd_config::{ConfigMap, ConfigValue, Overrides};

/// The flags every rayd binary takes to find and check its configuration.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// Configuration file (TOML); /etc/rayd/rayd.toml is read when it exists and this is not given.
    #[arg(long, value_name = "FILE", env = "RAYD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Load and check the configuration, print "configuration ok" and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// The flags that set what a node offers, shared by `rayd start` and `rayd-raylet`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ResourceArgs {
    /// CPUs this node schedules (default: the machine's).
    #[arg(long)]
    pub num_cpus: Option<f64>,
    /// GPUs this node schedules (default: those detected).
    #[arg(long)]
    pub num_gpus: Option<f64>,
    /// Custom resources as JSON, e.g. '{"Custom": 2}'.
    #[arg(long)]
    pub resources: Option<String>,
    /// Workers the raylet starts ahead of demand (default: one per CPU).
    #[arg(long)]
    pub num_workers: Option<u32>,
}

impl ResourceArgs {
    /// Adds the given flags to `overrides`. Malformed `--resources` JSON is passed on as
    /// text, so that loading reports it as an invalid value for `resources`.
    pub fn apply(&self, overrides: &mut Overrides) {
        overrides
            .set("num_cpus", self.num_cpus)
            .set("num_gpus", self.num_gpus)
            .set("num_workers", self.num_workers);
        if let Some(json) = &self.resources {
            let value = match serde_json::from_str::<BTreeMap<String, f64>>(json) {
                Ok(map) => ConfigValue::from(
                    map.into_iter()
                        .map(|(k, v)| (k, ConfigValue::from(v)))
                        .collect::<ConfigMap>(),
                ),
                Err(e) => {
                    ConfigValue::from(format!("`{json}` is not a JSON object of numbers: {e}"))
                }
            };
            overrides.set("resources", Some(value));
        }
    }
}

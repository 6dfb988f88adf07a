//! The command-line flags that several rayd binaries share.
//!
//! A binary's flag struct derives both `clap::Parser` and `serde::Serialize`: clap makes
//! each field a flag, [`rayd_config::Overrides::from_flags`] makes it an override of the
//! config key of the same name, so no key is spelled twice.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Serialize, Serializer};

/// The flags every rayd binary takes to find and check its configuration (no keys:
/// flatten it with `#[serde(skip)]`).
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

/// The flags that set what a node offers, shared by `rayd start` and `rayd-raylet`
/// (flatten it with `#[serde(flatten)]`).
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct ResourceArgs {
    /// CPUs this node schedules (default: the machine's).
    #[arg(long)]
    pub num_cpus: Option<f64>,
    /// GPUs this node schedules (default: those detected).
    #[arg(long)]
    pub num_gpus: Option<f64>,
    /// Custom resources as JSON, e.g. '{"Custom": 2}'.
    #[arg(long)]
    #[serde(serialize_with = "resources_json")]
    pub resources: Option<String>,
    /// Workers the raylet starts ahead of demand (default: one per CPU).
    #[arg(long)]
    pub num_workers: Option<u32>,
}

/// `--resources` as a table. Malformed JSON is passed on as text, so that loading
/// reports it as an invalid value for `resources` (exit 64, naming the key).
fn resources_json<S: Serializer>(json: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    let Some(json) = json else {
        return serializer.serialize_none();
    };
    match serde_json::from_str::<BTreeMap<String, f64>>(json) {
        Ok(table) => table.serialize(serializer),
        Err(e) => {
            serializer.serialize_str(&format!("`{json}` is not a JSON object of numbers: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayd_config::Overrides;

    fn load(resources: &str) -> Result<rayd_config::RaydConfig, rayd_config::ConfigError> {
        let flags = ResourceArgs {
            num_cpus: Some(3.0),
            resources: Some(resources.into()),
            ..ResourceArgs::default()
        };
        rayd_config::load(None, &Default::default(), &Overrides::from_flags(&flags)?)
    }

    #[test]
    fn resources_are_a_json_table_and_bad_json_names_the_key() {
        let config = load(r#"{"Custom": 2}"#).unwrap();
        assert_eq!(config.resources.get("Custom"), Some(&2.0));
        assert_eq!(config.num_cpus, Some(3.0));
        let err = load("{oops").unwrap_err().to_string();
        assert!(
            err.contains("resources") && err.contains("not a JSON object"),
            "{err}"
        );
    }
}

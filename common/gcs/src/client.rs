//! Connections to the GCS: the primary Redis, each shard, and pub/sub subscriptions.

use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, Message};

use crate::keys;
use rayd_common::id::ID_LEN;
use rayd_config::parse_host_port;

/// How long a connection attempt or a command may take before it fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between reconnection attempts after a Redis server went away (it is restarted by
/// its supervisor within a second).
const RECONNECT_DELAY_MS: u32 = 100;

/// Why a GCS operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GcsError {
    #[error("invalid redis address: {0}")]
    Address(String),
    #[error("cannot connect to redis at {address}: {}", plain(source))]
    Connect {
        address: String,
        #[source]
        source: fred::error::Error,
    },
    #[error("redis at {address} {reason}")]
    Auth {
        address: String,
        reason: &'static str,
    },
    #[error("redis at {0} has no shard list at `rayd:shards`: is it a rayd head?")]
    NoShards(String),
    #[error("redis command failed: {}", plain(.0))]
    Redis(#[from] fred::error::Error),
    #[error("malformed {what} in the GCS: {reason}")]
    Malformed { what: &'static str, reason: String },
}

/// A fred error as a sentence: its IO errors carry the `Debug` form of the OS error
/// (`Os { code: 111, kind: ConnectionRefused, message: "Connection refused" }`), of which
/// the message is what a person needs.
fn plain(error: &fred::error::Error) -> String {
    let details = error.details();
    let message = details
        .split_once("message: \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(message, _)| message);
    match message {
        Some(message) => message.to_lowercase(),
        None => details.to_string(),
    }
}

/// Which Redis server a subscription listens on.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// The primary (heartbeats, node events, errors).
    Primary,
    /// The shard that holds this ID (object and actor events).
    ShardOf(&'a [u8; ID_LEN]),
}

/// Which Redis server a raw command ([`GcsClient::command`]) goes to.
#[derive(Debug, Clone, Copy)]
pub enum Server<'a> {
    Primary,
    /// The shard that holds this ID's keys.
    ShardOf(&'a [u8; ID_LEN]),
    /// Shard `n` (0-based), to visit every shard.
    Shard(usize),
}

/// The reply to a raw command: Redis's types, bulk strings as bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum GcsReply {
    Nil,
    Int(i64),
    Bytes(Vec<u8>),
    Array(Vec<GcsReply>),
}

impl From<Value> for GcsReply {
    fn from(value: Value) -> Self {
        match value {
            Value::Null | Value::Queued => GcsReply::Nil,
            Value::Boolean(b) => GcsReply::Int(i64::from(b)),
            Value::Integer(i) => GcsReply::Int(i),
            Value::Double(f) => GcsReply::Bytes(f.to_string().into_bytes()),
            Value::String(s) => GcsReply::Bytes(s.as_bytes().to_vec()),
            Value::Bytes(b) => GcsReply::Bytes(b.to_vec()),
            Value::Array(items) => GcsReply::Array(items.into_iter().map(Self::from).collect()),
            Value::Map(map) => GcsReply::Array(
                map.inner()
                    .into_iter()
                    .flat_map(|(k, v)| [GcsReply::Bytes(k.as_bytes().to_vec()), v.into()])
                    .collect(),
            ),
        }
    }
}

/// A client of the whole GCS. Cheap to clone; every clone shares the connections.
#[derive(Clone)]
pub struct GcsClient {
    primary_address: String,
    password: Option<String>,
    primary: Client,
    shards: Vec<Client>,
    shard_addresses: Vec<String>,
}

impl std::fmt::Debug for GcsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsClient")
            .field("primary", &self.primary_address)
            .field("shards", &self.shard_addresses)
            .finish_non_exhaustive()
    }
}

fn builder(address: &str, password: Option<&str>) -> Result<Builder, GcsError> {
    let (host, port) = parse_host_port(address).map_err(GcsError::Address)?;
    let config = Config {
        server: ServerConfig::new_centralized(host, port),
        password: password.map(str::to_string),
        ..Config::default()
    };
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = COMMAND_TIMEOUT;
            c.tcp = TcpConfig {
                nodelay: Some(true),
                ..TcpConfig::default()
            };
        })
        .with_performance_config(|p| p.default_command_timeout = COMMAND_TIMEOUT)
        .set_policy(ReconnectPolicy::new_constant(0, RECONNECT_DELAY_MS));
    Ok(builder)
}

/// Connects one client to the Redis server at `address` (`host:port`).
pub async fn connect_server(address: &str, password: Option<&str>) -> Result<Client, GcsError> {
    let client = builder(address, password)?.build()?;
    // A server that requires a password may accept the connection and refuse the first
    // command: PING makes that happen here, where it can be said clearly.
    let ready = async {
        client.init().await?;
        client.ping::<Value>(None).await
    };
    if let Err(source) = ready.await {
        let _ = client.quit().await;
        return Err(connect_error(address, password.is_some(), source));
    }
    Ok(client)
}

/// A failed connection, with a refused or missing password said in words.
fn connect_error(address: &str, gave_password: bool, source: fred::error::Error) -> GcsError {
    let details = source.details().to_ascii_uppercase();
    let refused = ["WRONGPASS", "INVALID PASSWORD", "INVALID USERNAME-PASSWORD"]
        .iter()
        .any(|m| details.contains(m));
    let required = details.contains("NOAUTH") || details.contains("AUTHENTICATION REQUIRED");
    let address = address.to_string();
    if refused || (required && gave_password) {
        GcsError::Auth {
            address,
            reason: "refused the password: give the cluster's secret (redis_password / _redis_password, or redis_password_file)",
        }
    } else if required || (details.contains("AUTH") && !gave_password) {
        GcsError::Auth {
            address,
            reason: "requires the cluster's secret: give redis_password / _redis_password (or redis_password_file; `rayd start --head` printed where it is)",
        }
    } else {
        GcsError::Connect { address, source }
    }
}

impl GcsClient {
    /// Connects to the primary at `address`, reads the shard list and connects to every
    /// shard.
    pub async fn connect(address: &str, password: Option<&str>) -> Result<Self, GcsError> {
        let primary = connect_server(address, password).await?;
        let shard_addresses: Vec<String> = primary.lrange(keys::SHARDS, 0, -1).await?;
        if shard_addresses.is_empty() {
            return Err(GcsError::NoShards(address.to_string()));
        }
        let mut shards = Vec::with_capacity(shard_addresses.len());
        for shard in &shard_addresses {
            shards.push(connect_server(shard, password).await?);
        }
        Ok(Self {
            primary_address: address.to_string(),
            password: password.map(str::to_string),
            primary,
            shards,
            shard_addresses,
        })
    }

    /// The primary's `host:port`.
    pub fn primary_address(&self) -> &str {
        &self.primary_address
    }

    /// The shards' `host:port`, in shard order.
    pub fn shard_addresses(&self) -> &[String] {
        &self.shard_addresses
    }

    /// The connection to the primary.
    pub fn primary(&self) -> &Client {
        &self.primary
    }

    /// The connection to the shard that holds `id`'s keys.
    pub fn shard_for(&self, id: &[u8; ID_LEN]) -> &Client {
        &self.shards[keys::shard_index(id, self.shards.len())]
    }

    /// The connection to shard `index`, if there is one.
    pub fn shard(&self, index: usize) -> Option<&Client> {
        self.shards.get(index)
    }

    /// Runs one Redis command (`name` and its arguments) on `server`: for the SDK's tables
    /// that no daemon reads (see the SDK's key list), and for reading every table.
    pub async fn command(
        &self,
        server: Server<'_>,
        name: &str,
        args: Vec<Vec<u8>>,
    ) -> Result<GcsReply, GcsError> {
        let client = match server {
            Server::Primary => &self.primary,
            Server::ShardOf(id) => self.shard_for(id),
            Server::Shard(index) => self.shards.get(index).ok_or_else(|| {
                GcsError::Address(format!("shard {index} of {}", self.shards.len()))
            })?,
        };
        let command = CustomCommand::new(name.to_string(), ClusterHash::FirstKey, false);
        let args: Vec<Value> = args.into_iter().map(|a| Value::Bytes(a.into())).collect();
        let reply: Value = client.custom(command, args).await?;
        Ok(reply.into())
    }

    /// Subscribes to `channels` on `target`; messages arrive on the returned stream.
    pub async fn subscribe(
        &self,
        target: Target<'_>,
        channels: Vec<String>,
    ) -> Result<Subscription, GcsError> {
        let address = match target {
            Target::Primary => self.primary_address.as_str(),
            Target::ShardOf(id) => {
                self.shard_addresses[keys::shard_index(id, self.shards.len())].as_str()
            }
        };
        let client = builder(address, self.password.as_deref())?.build_subscriber_client()?;
        client.init().await.map_err(|source| GcsError::Connect {
            address: address.to_string(),
            source,
        })?;
        // Subscriptions are renewed after a reconnect (a restarted Redis server).
        let _resubscribe = client.manage_subscriptions();
        let rx = client.message_rx();
        client.subscribe(channels).await?;
        Ok(Subscription { client, rx })
    }

    /// Closes every connection.
    pub async fn quit(&self) {
        let _ = self.primary.quit().await;
        for shard in &self.shards {
            let _ = shard.quit().await;
        }
    }
}

/// One message received on a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub channel: String,
    pub payload: Vec<u8>,
}

/// A live subscription; dropping it unsubscribes.
pub struct Subscription {
    client: SubscriberClient,
    rx: tokio::sync::broadcast::Receiver<Message>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next message; `None` once the connection is closed for good.
    pub async fn next(&mut self) -> Option<Notification> {
        loop {
            match self.rx.recv().await {
                Ok(message) => {
                    let payload = message
                        .value
                        .as_bytes()
                        .map(<[u8]>::to_vec)
                        .unwrap_or_default();
                    return Some(Notification {
                        channel: message.channel.to_string(),
                        payload,
                    });
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    log::warn!(missed = n; "gcs subscriber fell behind; notifications dropped");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let client = self.client.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = client.quit().await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_os_error_reads_as_its_message() {
        let error = fred::error::Error::new(
            fred::error::ErrorKind::IO,
            "Os { code: 111, kind: ConnectionRefused, message: \"Connection refused\" }",
        );
        assert_eq!(plain(&error), "connection refused");
        let other = fred::error::Error::new(fred::error::ErrorKind::Timeout, "request timed out");
        assert_eq!(plain(&other), "request timed out");
    }
}

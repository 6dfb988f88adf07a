//! The async client: the blocking client's calls, run on tokio's blocking pool so that
//! a waiting `get` never stalls the runtime. Buffers and builders are the same types.

use std::path::PathBuf;
use std::time::Duration;

use rayd_common::id::{NodeId, ObjectId};
use rayd_common::proto::plasma::v1 as pb;

use crate::{ClientError, DeleteReport, ObjectBuffer, ObjectBuilder, ObjectEntry, PlasmaClient};

/// An async connection to the node's plasma store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AsyncPlasmaClient {
    client: PlasmaClient,
}

impl AsyncPlasmaClient {
    /// Connects to the store at `socket`.
    pub async fn connect(socket: impl Into<PathBuf>, name: &str) -> Result<Self, ClientError> {
        let socket = socket.into();
        let name = name.to_string();
        let client = blocking(move || PlasmaClient::connect(socket, &name)).await?;
        Ok(Self { client })
    }

    /// The blocking client underneath (for code that fills builders on its own threads).
    pub fn blocking(&self) -> &PlasmaClient {
        &self.client
    }

    /// The node this store serves.
    pub fn node_id(&self) -> NodeId {
        self.client.node_id()
    }

    /// See [`PlasmaClient::create`].
    pub async fn create(
        &self,
        id: ObjectId,
        data_size: u64,
        metadata_size: u64,
    ) -> Result<ObjectBuilder, ClientError> {
        let client = self.client.clone();
        blocking(move || client.create(id, data_size, metadata_size)).await
    }

    /// Seals a builder (see [`ObjectBuilder::seal`]).
    pub async fn seal(&self, builder: ObjectBuilder) -> Result<ObjectBuffer, ClientError> {
        blocking(move || builder.seal()).await
    }

    /// See [`PlasmaClient::put`].
    pub async fn put(
        &self,
        id: ObjectId,
        data: Vec<u8>,
        metadata: Vec<u8>,
    ) -> Result<ObjectBuffer, ClientError> {
        let client = self.client.clone();
        blocking(move || client.put(id, &data, &metadata)).await
    }

    /// See [`PlasmaClient::get`].
    pub async fn get(
        &self,
        ids: Vec<ObjectId>,
        timeout: Option<Duration>,
    ) -> Result<Vec<Option<ObjectBuffer>>, ClientError> {
        let client = self.client.clone();
        blocking(move || client.get(&ids, timeout)).await
    }

    /// See [`PlasmaClient::contains`].
    pub async fn contains(&self, id: ObjectId) -> Result<bool, ClientError> {
        let client = self.client.clone();
        blocking(move || client.contains(id)).await
    }

    /// See [`PlasmaClient::delete`].
    pub async fn delete(&self, ids: Vec<ObjectId>) -> Result<DeleteReport, ClientError> {
        let client = self.client.clone();
        blocking(move || client.delete(&ids)).await
    }

    /// See [`PlasmaClient::list`].
    pub async fn list(&self) -> Result<Vec<ObjectEntry>, ClientError> {
        let client = self.client.clone();
        blocking(move || client.list()).await
    }

    /// See [`PlasmaClient::stats`].
    pub async fn stats(&self) -> Result<pb::StoreStats, ClientError> {
        let client = self.client.clone();
        blocking(move || client.stats()).await
    }

    /// See [`PlasmaClient::pull`].
    pub async fn pull(&self, id: ObjectId, source: String) -> Result<(), ClientError> {
        let client = self.client.clone();
        blocking(move || client.pull(id, &source)).await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ClientError> + Send + 'static,
) -> Result<T, ClientError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ClientError::Invalid(format!("client task failed: {e}")))?
}

//! One client connection: reads requests, answers them against the store, and passes
//! memory descriptors. A malformed frame gets an error reply and closes this connection
//! only; whatever way a connection ends, the client's unsealed objects are aborted and
//! its pins released.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use rayd_common::id::ObjectId;
use rayd_common::proto::plasma::v1 as pb;
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::memory::MemoryError;
use crate::object_manager;
use crate::protocol::{self, FrameReader, Outgoing, ProtocolError, MAX_IDS_PER_REQUEST};
use crate::revocations::Revocations;
use crate::state::State;
use crate::store::{
    ClientId, DeleteOutcome, Memory, ObjectView, StoreError, StoreEvent, ARENA_SEGMENT,
};

type Code = pb::error::Code;

/// A request that failed: what the client is told.
#[derive(Debug)]
struct Failure {
    code: Code,
    message: String,
}

impl Failure {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            code: Code::InvalidRequest,
            message: message.into(),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        let code = match &e {
            StoreError::Exists(_) => Code::ObjectExists,
            StoreError::NotFound(_) => Code::ObjectNotFound,
            StoreError::Full { .. } => Code::StoreFull,
            StoreError::TooLarge { .. } => Code::TooLarge,
            // The creator still maps its segment writable: its mistake.
            StoreError::Memory {
                source: MemoryError::StillWritable,
                ..
            } => Code::InvalidRequest,
            StoreError::Memory { .. } | StoreError::LeaseMemory(_) => Code::OutOfMemory,
            // The spill directory failed (a disk error), not the memory.
            StoreError::Restore { .. }
            | StoreError::Spill(_)
            | StoreError::OutsideMapping { .. } => Code::Internal,
            StoreError::NoRoomForLease { .. } => Code::StoreFull,
            StoreError::NoLeases | StoreError::OutsideLease { .. } | StoreError::BadPut { .. } => {
                Code::InvalidRequest
            }
            StoreError::AlreadySealed(_)
            | StoreError::NotSealed(_)
            | StoreError::NotCreator(_)
            | StoreError::NotPinned(_) => Code::InvalidRequest,
        };
        Self {
            code,
            message: e.to_string(),
        }
    }
}

impl From<ProtocolError> for Failure {
    fn from(e: ProtocolError) -> Self {
        Self::invalid(e.to_string())
    }
}

/// Why a connection ended other than by the client closing it.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    #[error("subscriber fell {0} events behind")]
    Lagged(u64),
    #[error("an unfinished frame ({0} bytes so far) got no byte for {STALL_TIMEOUT:?}")]
    Stalled(usize),
}

/// How long an unfinished request frame may wait for its next byte.
const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A reply and the segments whose descriptors go with it.
struct Answer {
    reply: pb::reply::Kind,
    segments: Vec<SegmentToSend>,
}

/// A segment whose descriptor goes with a reply.
enum SegmentToSend {
    /// The arena, read-only.
    Arena,
    /// The revocation page, read-only.
    Revocations,
    /// An object's own segment (its files, end to end): read-write to its creator before
    /// the seal, read-only to readers (and to the creator at the seal).
    Own {
        id: u64,
        size: u64,
        parts: Vec<u64>,
        fds: Vec<OwnedFd>,
    },
}

impl Answer {
    fn plain(reply: pb::reply::Kind) -> Self {
        Self {
            reply,
            segments: Vec::new(),
        }
    }
}

/// Where `view`'s bytes are: the arena, whose descriptor each client got when it
/// connected, or a segment, whose descriptor goes with the reply.
fn location(view: &ObjectView) -> pb::Location {
    let (segment, offset) = view.segment_offset();
    pb::Location {
        object_id: view.id.as_bytes().to_vec(),
        segment,
        offset,
        data_size: view.data_size,
        metadata_size: view.metadata_size,
    }
}

/// Serves one client until it leaves, errs, or the daemon stops.
pub async fn serve(state: Arc<State>, stream: UnixStream, cancel: CancellationToken) {
    let client = state.with_store(|s| s.connect());
    let mut connection = Connection {
        state: state.clone(),
        stream,
        reader: FrameReader::new(protocol::MAX_REQUEST_FRAME),
        client,
        name: String::new(),
        connected: false,
    };
    let result = tokio::select! {
        result = connection.run() => result,
        _ = cancel.cancelled() => Ok(()),
    };
    match result {
        Ok(()) => log::debug!(client = client, name = connection.name.as_str(); "client left"),
        Err(e) => {
            log::warn!(client = client, name = connection.name.as_str(), error:% = e; "closing a client connection")
        }
    }
    state.with_store(|s| s.disconnect(client));
}

struct Connection {
    state: Arc<State>,
    stream: UnixStream,
    reader: FrameReader,
    client: ClientId,
    name: String,
    connected: bool,
}

impl Connection {
    async fn run(&mut self) -> Result<(), ConnectionError> {
        loop {
            let Some(body) = self.next_frame().await? else {
                return Ok(());
            };
            if self.reader.discard_fds() > 0 {
                log::warn!(client = self.client; "dropped descriptors a client sent");
            }
            let request: pb::Request = match protocol::decode("request", &body) {
                Ok(request) => request,
                Err(e) => {
                    self.send_error(Failure::from(e)).await?;
                    return Err(ProtocolError::Invalid("undecodable request".into()).into());
                }
            };
            let Some(kind) = request.kind else {
                self.send_error(Failure::invalid("empty request")).await?;
                continue;
            };
            if let pb::request::Kind::Subscribe(_) = kind {
                return self.stream_events().await;
            }
            // The client waits for no reply to a one-way request: an answer would be taken
            // for the reply to its next request, and a mistake can only be logged.
            let one_way = is_one_way(&kind);
            match self.handle(kind).await {
                Ok(Some(answer)) if !one_way => self.send(answer).await?,
                Ok(_) => {}
                Err(failure) if one_way => {
                    log::warn!(client = self.client, name = self.name.as_str(), error = failure.message.as_str(); "bad request without a reply")
                }
                Err(failure) => self.send_error(failure).await?,
            }
        }
    }

    /// The next frame, or `None` when the client closed the connection cleanly.
    async fn next_frame(&mut self) -> Result<Option<Vec<u8>>, ConnectionError> {
        loop {
            match self.reader.next_frame() {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(e) => {
                    self.send_error(Failure::from(ProtocolError::Invalid(e.to_string())))
                        .await?;
                    return Err(e.into());
                }
            }
            // A client that stops in the middle of a frame is dropped: it would hold its
            // connection (and the frame's bytes) for ever.
            let more = if self.reader.buffered() == 0 {
                self.fill().await?
            } else {
                match tokio::time::timeout(STALL_TIMEOUT, self.fill()).await {
                    Ok(more) => more?,
                    Err(_) => {
                        return Err(ConnectionError::Stalled(self.reader.buffered()));
                    }
                }
            };
            if !more {
                return Ok(None);
            }
        }
    }

    /// Reads more bytes; false at end of stream.
    async fn fill(&mut self) -> Result<bool, ConnectionError> {
        loop {
            self.stream.readable().await?;
            let reader = &mut self.reader;
            let fd = self.stream.as_fd();
            match self.stream.try_io(Interest::READABLE, || reader.recv(fd)) {
                Ok(more) => return Ok(more),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn handle(&mut self, kind: pb::request::Kind) -> Result<Option<Answer>, Failure> {
        use pb::request::Kind;
        if !self.connected && !matches!(kind, Kind::Connect(_)) {
            return Err(Failure::invalid("the first request must be connect"));
        }
        let state = self.state.clone();
        let client = self.client;
        match kind {
            Kind::Connect(connect) => {
                if self.connected {
                    return Err(Failure::invalid("already connected"));
                }
                self.connected = true;
                self.name = connect.client_name.chars().take(128).collect();
                log::debug!(client = client, name = self.name.as_str(); "client connected");
                let layout = state.with_store(|s| s.layout());
                Ok(Some(Answer {
                    reply: pb::reply::Kind::Connected(pb::Connected {
                        node_id: state.node_id.as_bytes().to_vec(),
                        capacity_bytes: layout.capacity,
                        small_object_max: layout.small_object_max,
                        lease_size: layout.lease_size,
                        leased_object_max: layout.leased_object_max,
                        arena_object_max: layout.arena_object_max,
                        revocation_segment: protocol::REVOCATION_SEGMENT,
                        revocation_slot: Revocations::slot(client),
                    }),
                    segments: vec![SegmentToSend::Arena, SegmentToSend::Revocations],
                }))
            }
            Kind::Create(create) => {
                let id = protocol::object_id(&create.object_id)?;
                let view = state
                    .with_store(|s| s.create(client, id, create.data_size, create.metadata_size))?;
                let prepared = match &view.memory {
                    Memory::Segment(segment) => segment.prepared(),
                    Memory::Arena(_) => true,
                };
                Ok(Some(Answer {
                    reply: pb::reply::Kind::Created(pb::Created {
                        location: Some(location(&view)),
                        prepared,
                    }),
                    segments: segment_of(&view)?.into_iter().collect(),
                }))
            }
            Kind::Seal(seal) => {
                let id = protocol::object_id(&seal.object_id)?;
                let view = state.with_store(|s| s.seal(client, id))?;
                Ok(Some(Answer {
                    reply: pb::reply::Kind::Ack(pb::Ack {}),
                    segments: segment_of(&view)?.into_iter().collect(),
                }))
            }
            Kind::Abort(abort) => {
                let id = protocol::object_id(&abort.object_id)?;
                state.with_store(|s| s.abort(client, id))?;
                Ok(Some(Answer::plain(pb::reply::Kind::Ack(pb::Ack {}))))
            }
            Kind::Lease(_) => {
                let (offset, size) = state.with_store(|s| s.lease(client))?;
                Ok(Some(Answer::plain(pb::reply::Kind::Leased(pb::Leased {
                    offset,
                    size,
                }))))
            }
            Kind::Put(put) => {
                let id = protocol::object_id(&put.object_id)?;
                let lease_offset = put.leased.then_some(put.offset);
                state.with_store(|s| {
                    s.put_small(
                        client,
                        id,
                        (put.data_size, put.metadata_size),
                        &put.bytes,
                        lease_offset,
                    )
                })?;
                Ok(Some(Answer::plain(pb::reply::Kind::Ack(pb::Ack {}))))
            }
            Kind::Release(release) => {
                let id = protocol::object_id(&release.object_id)?;
                if release.retain {
                    state.with_store(|s| s.release_retained(client, id))?;
                } else {
                    state.with_store(|s| s.release(client, id))?;
                }
                Ok(None)
            }
            Kind::Reuse(reuse) => {
                let id = protocol::object_id(&reuse.object_id)?;
                state.with_store(|s| s.reuse(client, id));
                Ok(None)
            }
            Kind::Forget(forget) => {
                let ids = parse_ids(&forget.object_ids)?;
                state.with_store(|s| {
                    for id in ids {
                        s.forget(client, id);
                    }
                });
                Ok(None)
            }
            Kind::Get(get) => self.get(get).await.map(Some),
            Kind::Contains(contains) => {
                let id = protocol::object_id(&contains.object_id)?;
                let sealed = state.with_store(|s| s.contains(&id));
                Ok(Some(Answer::plain(pb::reply::Kind::Contains(
                    pb::ContainsReply { sealed },
                ))))
            }
            Kind::Delete(delete) => {
                let ids = parse_ids(&delete.object_ids)?;
                let mut reply = pb::Deleted::default();
                state.with_store(|s| {
                    for id in ids {
                        let list = match s.delete(id) {
                            DeleteOutcome::Deleted => &mut reply.deleted,
                            DeleteOutcome::Deferred => &mut reply.deferred,
                            DeleteOutcome::NotFound => &mut reply.not_found,
                        };
                        list.push(id.as_bytes().to_vec());
                    }
                });
                Ok(Some(Answer::plain(pb::reply::Kind::Deleted(reply))))
            }
            Kind::List(_) => {
                let rows = state.with_store(|s| s.list());
                let objects = rows
                    .into_iter()
                    .map(|r| pb::ObjectEntry {
                        object_id: r.id.as_bytes().to_vec(),
                        data_size: r.data_size,
                        metadata_size: r.metadata_size,
                        sealed: r.sealed,
                        pins: r.pins,
                    })
                    .collect();
                Ok(Some(Answer::plain(pb::reply::Kind::Listing(pb::Listing {
                    objects,
                }))))
            }
            Kind::Stats(_) => Ok(Some(Answer::plain(pb::reply::Kind::Stats(stats_reply(
                &state,
            ))))),
            Kind::Pull(pull) => {
                let id = protocol::object_id(&pull.object_id)?;
                object_manager::pull(&state, id, &pull.source)
                    .await
                    .map_err(|e| Failure {
                        code: Code::TransferFailed,
                        message: e.to_string(),
                    })?;
                Ok(Some(Answer::plain(pb::reply::Kind::Ack(pb::Ack {}))))
            }
            Kind::Subscribe(_) => Err(Failure::invalid("subscribe is handled before")),
        }
    }

    async fn get(&mut self, get: pb::Get) -> Result<Answer, Failure> {
        let ids = parse_ids(&get.object_ids)?;
        let deadline = u64::try_from(get.timeout_ms)
            .ok()
            .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
        // Subscribe before looking, so a seal between the look and the wait is not missed.
        let mut events = self.state.subscribe();
        let mut found: Vec<Option<ObjectView>> = vec![None; ids.len()];
        // Freed while a reader holds them: answered as such, not waited for (they only go).
        let mut freed = vec![false; ids.len()];
        loop {
            let client = self.client;
            let looked = self.state.with_store(|s| {
                let mut missing = 0;
                for ((slot, freed), id) in found.iter_mut().zip(freed.iter_mut()).zip(&ids) {
                    if slot.is_none() && !*freed {
                        match s.try_get(client, *id) {
                            Ok(view) => *slot = view,
                            Err(e) => return Err(e),
                        }
                        *freed = slot.is_none() && s.freed_in_use(id);
                        missing += usize::from(slot.is_none() && !*freed);
                    }
                }
                Ok(missing)
            });
            let missing = match looked {
                Ok(missing) => missing,
                Err(e) => {
                    // A spilled object that cannot come back fails the get; what it
                    // pinned so far goes back.
                    self.state.with_store(|s| {
                        for (view, id) in found.iter().zip(&ids) {
                            if view.is_some() {
                                let _ = s.release(client, *id);
                            }
                        }
                    });
                    return Err(e.into());
                }
            };
            if missing == 0 {
                break;
            }
            if !self.wait_for_seal(&mut events, &ids, deadline).await? {
                break;
            }
        }
        let objects = found
            .iter()
            .zip(freed)
            .map(|(view, freed)| pb::MaybeLocation {
                location: view.as_ref().map(location),
                freed,
            })
            .collect();
        let mut segments = Vec::new();
        for view in found.iter().flatten() {
            segments.extend(segment_of(view)?);
        }
        Ok(Answer {
            reply: pb::reply::Kind::Objects(pb::Objects { objects }),
            segments,
        })
    }

    /// Waits until one of `ids` may have been sealed (true) or the deadline passed
    /// (false). Watches the socket meanwhile, so a client that dies while waiting is
    /// noticed at once.
    async fn wait_for_seal(
        &mut self,
        events: &mut broadcast::Receiver<StoreEvent>,
        ids: &[ObjectId],
        deadline: Option<tokio::time::Instant>,
    ) -> Result<bool, Failure> {
        let sleep = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(StoreEvent::Sealed { id, .. }) if ids.contains(&id) => return Ok(true),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return Ok(true),
                    Err(broadcast::error::RecvError::Closed) => return Ok(false),
                },
                _ = &mut sleep => return Ok(false),
                more = self.fill() => match more {
                    // Pipelined requests wait in the buffer until this get is answered.
                    Ok(true) => {}
                    Ok(false) | Err(_) => return Err(Failure::invalid("client left while waiting")),
                },
            }
        }
    }

    async fn stream_events(&mut self) -> Result<(), ConnectionError> {
        let mut events = self.state.subscribe();
        // The ack tells the subscriber that every event from now on will reach it.
        self.send(Answer::plain(pb::reply::Kind::Ack(pb::Ack {})))
            .await?;
        loop {
            tokio::select! {
                event = events.recv() => {
                    let event = match event {
                        Ok(event) => event,
                        Err(broadcast::error::RecvError::Lagged(n)) => return Err(ConnectionError::Lagged(n)),
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    };
                    let message = match event {
                        StoreEvent::Sealed { id, data_size, metadata_size } => pb::Event {
                            kind: pb::event::Kind::Sealed.into(),
                            object_id: id.as_bytes().to_vec(),
                            data_size,
                            metadata_size,
                        },
                        StoreEvent::Removed { id, .. } => pb::Event {
                            kind: pb::event::Kind::Deleted.into(),
                            object_id: id.as_bytes().to_vec(),
                            ..Default::default()
                        },
                    };
                    self.write(Outgoing::new(protocol::encode_frame(&message), Vec::new())).await?;
                }
                more = self.fill() => {
                    if !more? {
                        return Ok(());
                    }
                    // A subscriber sends nothing more; ignore what it does send.
                    while let Ok(Some(_)) = self.reader.next_frame() {}
                }
            }
        }
    }

    async fn send_error(&mut self, failure: Failure) -> Result<(), ConnectionError> {
        log::debug!(client = self.client, error = failure.message.as_str(); "request failed");
        let reply = pb::Reply {
            new_segments: Vec::new(),
            kind: Some(pb::reply::Kind::Error(pb::Error {
                code: failure.code.into(),
                message: failure.message,
            })),
        };
        self.write(Outgoing::new(protocol::encode_frame(&reply), Vec::new()))
            .await
    }

    async fn send(&mut self, answer: Answer) -> Result<(), ConnectionError> {
        let state = self.state.clone();
        let mut new_segments = Vec::with_capacity(answer.segments.len());
        let mut fds: Vec<BorrowedFd<'_>> = Vec::with_capacity(answer.segments.len());
        for segment in &answer.segments {
            let (id, size) = match segment {
                SegmentToSend::Arena => {
                    fds.push(state.arena_reader_fd.as_fd());
                    (ARENA_SEGMENT, state.arena_size)
                }
                SegmentToSend::Revocations => {
                    fds.push(state.revocations_reader_fd.as_fd());
                    (protocol::REVOCATION_SEGMENT, state.revocations_size)
                }
                SegmentToSend::Own {
                    id,
                    size,
                    fds: files,
                    ..
                } => {
                    fds.extend(files.iter().map(AsFd::as_fd));
                    (*id, *size)
                }
            };
            // Parts are listed only for a segment of several files.
            let parts = match segment {
                SegmentToSend::Own { parts, .. } if parts.len() > 1 => parts.clone(),
                _ => Vec::new(),
            };
            new_segments.push(pb::Segment { id, size, parts });
        }
        let reply = pb::Reply {
            new_segments,
            kind: Some(answer.reply),
        };
        self.write(Outgoing::new(protocol::encode_frame(&reply), fds))
            .await
    }

    async fn write(&self, mut out: Outgoing<'_>) -> Result<(), ConnectionError> {
        while !out.is_done() {
            self.stream.writable().await?;
            let fd = self.stream.as_fd();
            match self.stream.try_io(Interest::WRITABLE, || out.send_some(fd)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Whether the client expects no reply to `kind`.
fn is_one_way(kind: &pb::request::Kind) -> bool {
    use pb::request::Kind;
    match kind {
        Kind::Release(_) | Kind::Reuse(_) | Kind::Forget(_) => true,
        Kind::Put(put) => put.leased,
        Kind::Delete(delete) => delete.quiet,
        _ => false,
    }
}

/// The descriptor of `view`'s own segment to send with a reply, if it has one.
fn segment_of(view: &ObjectView) -> Result<Option<SegmentToSend>, Failure> {
    let Memory::Segment(segment) = &view.memory else {
        return Ok(None);
    };
    let fds = segment.dup_fds().map_err(|e| Failure {
        code: Code::Internal,
        message: format!("object {}: cannot share its memory: {e}", view.id),
    })?;
    Ok(Some(SegmentToSend::Own {
        id: segment.id(),
        size: segment.size(),
        parts: segment.parts().to_vec(),
        fds,
    }))
}

fn parse_ids(raw: &[Vec<u8>]) -> Result<Vec<ObjectId>, Failure> {
    if raw.len() > MAX_IDS_PER_REQUEST {
        return Err(Failure::invalid(format!(
            "{} object IDs in one request; at most {MAX_IDS_PER_REQUEST}",
            raw.len()
        )));
    }
    raw.iter()
        .map(|b| protocol::object_id(b).map_err(Failure::from))
        .collect()
}

/// The `stats` reply.
pub fn stats_reply(state: &State) -> pb::StoreStats {
    let stats = state.stats();
    pb::StoreStats {
        capacity_bytes: stats.capacity_bytes,
        used_bytes: stats.used_bytes,
        objects: stats.objects,
        sealed_objects: stats.sealed_objects,
        evictions: stats.evictions,
        evicted_bytes: stats.evicted_bytes,
        arena_bytes: stats.arena_bytes,
        arena_used_bytes: stats.arena_used_bytes,
        clients: stats.clients,
        spilled_objects: stats.spill.objects,
        spilled_bytes: stats.spill.bytes,
        spill_written_bytes: stats.spill.written_bytes,
        spill_restored_bytes: stats.spill.restored_bytes,
        reserved_bytes: stats.reserved_bytes,
        pulls: state.pulls(),
        node_id: state.node_id.as_bytes().to_vec(),
        object_manager_address: state.object_manager_address.clone(),
    }
}

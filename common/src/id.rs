//! 20-byte identifiers for jobs, tasks, objects, actors, workers and nodes.
//!
//! Every ID prints as 40 lowercase hex digits. Object IDs are derived from the ID of the
//! task that made them: the first 16 bytes are the task's, the last 4 a big-endian index
//! whose top bit marks `ray.put` objects. Task IDs therefore keep their last 4 bytes zero,
//! so [`ObjectId::task_id`] recovers the producing task (the lineage used for
//! reconstruction). Child task IDs are a hash of the parent ID and a counter, which makes
//! every ID of a job deterministic once the job ID is (see [`JobId::from_seed`]).

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// Length in bytes of every rayd identifier.
pub const ID_LEN: usize = 20;

/// Bytes of a task ID that carry its identity; the rest index its objects.
const TASK_UNIQUE_LEN: usize = 16;

/// Top bit of an object index: set for `ray.put` objects, clear for task returns.
const PUT_FLAG: u32 = 0x8000_0000;

/// Why text or bytes could not be turned into an ID.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IdError {
    #[error("{kind} must be {ID_LEN} bytes, got {len}")]
    Length { kind: &'static str, len: usize },
    #[error("{kind} must be {} hex digits: {source}", ID_LEN * 2)]
    Hex {
        kind: &'static str,
        #[source]
        source: hex::FromHexError,
    },
}

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name([u8; ID_LEN]);

        impl $name {
            /// The all-zero ID, meaning "none".
            pub const NIL: Self = Self([0; ID_LEN]);

            /// Wraps raw bytes.
            pub const fn from_bytes(bytes: [u8; ID_LEN]) -> Self {
                Self(bytes)
            }

            /// Copies an ID out of a slice that must be exactly [`ID_LEN`] bytes long.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, IdError> {
                let array: [u8; ID_LEN] = bytes.try_into().map_err(|_| IdError::Length {
                    kind: stringify!($name),
                    len: bytes.len(),
                })?;
                Ok(Self(array))
            }

            /// A fresh ID from the operating system's random source.
            pub fn random() -> Self {
                Self(random_bytes())
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; ID_LEN] {
                &self.0
            }

            /// Whether this is [`Self::NIL`].
            pub fn is_nil(&self) -> bool {
                self.0 == [0; ID_LEN]
            }

            /// Lowercase hex, as used in GCS keys and logs.
            pub fn hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.hex())
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut bytes = [0u8; ID_LEN];
                hex::decode_to_slice(s, &mut bytes).map_err(|source| IdError::Hex {
                    kind: stringify!($name),
                    source,
                })?;
                Ok(Self(bytes))
            }
        }

        impl AsRef<[u8; ID_LEN]> for $name {
            fn as_ref(&self) -> &[u8; ID_LEN] {
                &self.0
            }
        }
    };
}

define_id!(
    /// A job: one driver's run. Every task and object of the job descends from it.
    JobId
);
define_id!(
    /// A task (a remote function call, an actor creation or an actor method call).
    TaskId
);
define_id!(
    /// An immutable object: a task's return value or a `ray.put` value.
    ObjectId
);
define_id!(
    /// An actor.
    ActorId
);
define_id!(
    /// A worker process (or a driver).
    WorkerId
);
define_id!(
    /// A node: one raylet and its plasma store.
    NodeId
);
define_id!(
    /// An exported function or actor class: a hash of its pickled definition.
    FunctionId
);

fn random_bytes() -> [u8; ID_LEN] {
    let mut bytes = [0u8; ID_LEN];
    // The OS random source only fails on a broken system; an ID from a weaker source
    // would risk collisions that corrupt the cluster, so there is no fallback.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut bytes).expect("operating system random source unavailable");
    bytes
}

fn hash_to_id(parts: &[&[u8]]) -> [u8; ID_LEN] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; ID_LEN];
    bytes.copy_from_slice(&digest[..ID_LEN]);
    bytes
}

impl JobId {
    /// The job ID for a given `object_id_seed`: the same seed gives the same IDs for every
    /// task and object of the job, run after run.
    pub fn from_seed(seed: u64) -> Self {
        Self(hash_to_id(&[b"rayd-job", &seed.to_be_bytes()]))
    }
}

impl FunctionId {
    /// The ID of a function or class, from its pickled definition.
    pub fn for_definition(definition: &[u8]) -> Self {
        Self(hash_to_id(&[b"rayd-function", definition]))
    }
}

impl TaskId {
    fn with_unique(unique: &[u8]) -> Self {
        let mut bytes = [0u8; ID_LEN];
        bytes[..TASK_UNIQUE_LEN].copy_from_slice(&unique[..TASK_UNIQUE_LEN]);
        Self(bytes)
    }

    /// A task ID with fresh random identity.
    pub fn random_task() -> Self {
        Self::with_unique(&random_bytes())
    }

    /// The root task of a driver: the parent of every task the driver submits.
    pub fn for_driver(job: JobId) -> Self {
        Self::with_unique(&hash_to_id(&[b"rayd-driver", job.as_bytes()]))
    }

    /// The `index`-th child submitted by the task `parent`.
    pub fn for_child(parent: TaskId, index: u64) -> Self {
        Self::with_unique(&hash_to_id(&[
            b"rayd-task",
            parent.as_bytes(),
            &index.to_be_bytes(),
        ]))
    }
}

impl ObjectId {
    fn derive(task: TaskId, index: u32) -> Self {
        let mut bytes = *task.as_bytes();
        bytes[TASK_UNIQUE_LEN..].copy_from_slice(&index.to_be_bytes());
        Self(bytes)
    }

    /// The `index`-th return value (counting from 1) of `task`.
    ///
    /// # Panics
    /// When `index` is 0 or does not fit below the put flag: a task with that many
    /// return values is rejected long before it gets here.
    pub fn for_return(task: TaskId, index: u32) -> Self {
        assert!(
            index > 0 && index < PUT_FLAG,
            "return index {index} out of range"
        );
        Self::derive(task, index)
    }

    /// The `index`-th object (counting from 1) that `task` stored with `ray.put`.
    ///
    /// # Panics
    /// When `index` is 0 or too large, as for [`Self::for_return`].
    pub fn for_put(task: TaskId, index: u32) -> Self {
        assert!(
            index > 0 && index < PUT_FLAG,
            "put index {index} out of range"
        );
        Self::derive(task, index | PUT_FLAG)
    }

    fn index_bits(&self) -> u32 {
        let mut tail = [0u8; 4];
        tail.copy_from_slice(&self.0[TASK_UNIQUE_LEN..]);
        u32::from_be_bytes(tail)
    }

    /// The task that made this object (by returning or putting it).
    pub fn task_id(&self) -> TaskId {
        TaskId::with_unique(&self.0)
    }

    /// Whether the object was stored with `ray.put` (rather than returned by a task).
    pub fn is_put(&self) -> bool {
        self.index_bits() & PUT_FLAG != 0
    }

    /// The return or put index (counting from 1).
    pub fn index(&self) -> u32 {
        self.index_bits() & !PUT_FLAG
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_for_every_kind() {
        let job = JobId::random();
        assert_eq!(job.to_string().len(), 40);
        assert_eq!(job.to_string().parse::<JobId>(), Ok(job));
        let node = NodeId::random();
        assert_eq!(node.hex().parse::<NodeId>(), Ok(node));
        let actor = ActorId::random();
        assert_eq!(ActorId::from_slice(actor.as_bytes()), Ok(actor));
        let worker = WorkerId::random();
        assert_eq!(format!("{worker:?}"), format!("WorkerId({})", worker.hex()));
    }

    #[test]
    fn bad_text_and_lengths_are_refused_with_the_kind_named() {
        let err = "abc".parse::<ObjectId>().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("ObjectId must be 40 hex digits"),
            "{err}"
        );
        let err = "zz".repeat(20).parse::<TaskId>().unwrap_err();
        assert!(matches!(err, IdError::Hex { kind: "TaskId", .. }));
        assert_eq!(
            ObjectId::from_slice(&[1, 2, 3]),
            Err(IdError::Length {
                kind: "ObjectId",
                len: 3
            })
        );
    }

    #[test]
    fn nil_is_zero_and_random_ids_differ() {
        assert!(ObjectId::NIL.is_nil());
        assert!(!ObjectId::random().is_nil());
        assert_ne!(TaskId::random(), TaskId::random());
    }

    #[test]
    fn object_ids_derive_from_their_task() {
        let task = TaskId::random_task();
        let r1 = ObjectId::for_return(task, 1);
        let r2 = ObjectId::for_return(task, 2);
        let p1 = ObjectId::for_put(task, 1);
        assert_ne!(r1, r2);
        assert_ne!(r1, p1);
        for (id, index, put) in [(r1, 1, false), (r2, 2, false), (p1, 1, true)] {
            assert_eq!(id.task_id(), task);
            assert_eq!(id.index(), index);
            assert_eq!(id.is_put(), put);
        }
    }

    #[test]
    fn a_seed_makes_every_id_of_a_job_deterministic() {
        let run = |seed| {
            let job = JobId::from_seed(seed);
            let driver = TaskId::for_driver(job);
            let child = TaskId::for_child(driver, 7);
            (job, driver, child, ObjectId::for_return(child, 1))
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
        let (_, driver, child, _) = run(1);
        assert_ne!(TaskId::for_child(driver, 0), TaskId::for_child(driver, 1));
        assert_eq!(&child.as_bytes()[16..], &[0, 0, 0, 0]);
    }
}

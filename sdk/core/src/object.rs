//! An object as a reader holds it: pinned in plasma's shared memory, or a small value that
//! came from the raylet in a message. Both are read-only.

use std::sync::Arc;

use rayd_common::proto::raylet::v1 as pb;
use rayd_plasma_client::ObjectBuffer;

/// A readable object.
#[derive(Debug, Clone)]
pub enum Object {
    Plasma(ObjectBuffer),
    Inline(Arc<pb::InlineObject>),
}

impl Object {
    pub fn data(&self) -> &[u8] {
        match self {
            Object::Plasma(buffer) => buffer.data(),
            Object::Inline(object) => &object.data,
        }
    }

    pub fn metadata(&self) -> &[u8] {
        match self {
            Object::Plasma(buffer) => buffer.metadata(),
            Object::Inline(object) => &object.metadata,
        }
    }
}

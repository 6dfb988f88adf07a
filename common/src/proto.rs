//! Message and service types generated at build time from `common/proto/`.

/// Types shared by every process (task specs).
pub mod common {
    /// Version 1 of the shared messages.
    pub mod v1 {
        tonic::include_proto!("rayd.common.v1");
    }
}

/// The object manager service through which plasma stores pull objects from each other.
pub mod objectmanager {
    /// Version 1 of the object manager service.
    pub mod v1 {
        tonic::include_proto!("rayd.objectmanager.v1");
    }
}

/// The plasma store's local protocol (framed over its Unix socket).
pub mod plasma {
    /// Version 1 of the plasma protocol.
    pub mod v1 {
        tonic::include_proto!("rayd.plasma.v1");
    }
}

/// The raylet's local protocol with drivers and workers (framed over its Unix socket).
pub mod raylet {
    /// Version 1 of the raylet protocol.
    pub mod v1 {
        tonic::include_proto!("rayd.raylet.v1");
    }
}

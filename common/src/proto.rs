//! Message types generated at build time from `common/proto/`, and with the `grpc`
//! feature the services' tonic clients and servers (the same generated files then hold
//! both). Without it no gRPC or HTTP/2 code is built: the Python extension and the local
//! protocols need the messages only.

/// Types shared by every process (task specs).
pub mod common {
    /// Version 1 of the shared messages.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/rayd.common.v1.rs"));
    }
}

/// The global scheduler's service, to which raylets spill tasks.
pub mod globalscheduler {
    /// Version 1 of the global scheduler service.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/rayd.globalscheduler.v1.rs"));
    }
}

/// The node manager service through which raylets hand tasks to each other.
pub mod nodemanager {
    /// Version 1 of the node manager service.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/rayd.nodemanager.v1.rs"));
    }
}

/// The object manager service through which plasma stores pull objects from each other.
pub mod objectmanager {
    /// Version 1 of the object manager service.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/rayd.objectmanager.v1.rs"));
    }
}

/// The plasma store's local protocol (framed over its Unix socket).
pub mod plasma {
    /// Version 1 of the plasma protocol.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/rayd.plasma.v1.rs"));
    }
}

/// The raylet's local protocol with drivers and workers (framed over its Unix socket).
pub mod raylet {
    /// Version 1 of the raylet protocol.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/rayd.raylet.v1.rs"));
    }
}

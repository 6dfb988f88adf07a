//! Starting and stopping the daemons of one node by hand: what `rayd start` / `rayd stop`
//! (the CLI) and `ray.init()` (the Python SDK) share.
//!
//! [`launch`] starts one daemon in the background and waits for its `READY=1`;
//! [`node`] starts a node's daemons in order (and stops them); [`node_state`] is the
//! record of what `rayd start` launched, in `<temp_dir>/node.json`.

pub mod launch;
pub mod node;
pub mod node_state;

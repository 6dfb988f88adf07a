//! `rayd-worker`: a Rust process that embeds CPython and runs tasks for its raylet.
//!
//! The interpreter is set up as the Python of the environment the worker is installed in:
//! when a `python3` sits next to this executable (a virtual env's `bin/`, where the rayd
//! wheel puts its binaries), CPython is told it *is* that program, so it finds the env's
//! `pyvenv.cfg` and site-packages as that `python3` would. `RAYD_WORKER_PYTHONPATH` adds
//! entries in front (`ray.init()` passes the driver's `sys.path` this way). Then the task
//! loop of `ray._raylet` (Rust, in the SDK's extension module) takes over; Python is
//! entered only to load functions, run them and (un)pickle values.

use std::ffi::CString;
use std::path::PathBuf;

use pyo3::ffi;
use pyo3::prelude::*;

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot initialize the Python interpreter: {0}")]
    Init(String),
    #[error("python: {0}")]
    Python(String),
}

/// The `python3` next to this executable, if any.
fn sibling_python() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let python = exe.parent()?.join("python3");
    python.exists().then_some(python)
}

/// Initializes CPython as `program` (when given), so that its prefix and site-packages
/// are those of the environment `program` belongs to.
fn initialize(program: Option<PathBuf>) -> Result<(), WorkerError> {
    let Some(program) = program else {
        Python::initialize();
        return Ok(());
    };
    let name = CString::new(program.as_os_str().as_encoded_bytes())
        .map_err(|e| WorkerError::Init(e.to_string()))?;
    // SAFETY: the PyConfig is initialized by CPython before use and cleared after;
    // `name` outlives the call that copies it; initialization happens once, on this
    // thread, before any other Python API call. After it, the GIL is released so that
    // PyO3 can attach.
    unsafe {
        let mut config = std::mem::MaybeUninit::<ffi::PyConfig>::uninit();
        ffi::PyConfig_InitPythonConfig(config.as_mut_ptr());
        let mut config = config.assume_init();
        // Don't let the worker's own argv (none of Python's flags) be parsed.
        config.parse_argv = 0;
        let status =
            ffi::PyConfig_SetBytesString(&mut config, &mut config.program_name, name.as_ptr());
        if ffi::PyStatus_Exception(status) != 0 {
            ffi::PyConfig_Clear(&mut config);
            return Err(WorkerError::Init(format!(
                "cannot set the program name to {}",
                program.display()
            )));
        }
        let status = ffi::Py_InitializeFromConfig(&config);
        ffi::PyConfig_Clear(&mut config);
        if ffi::PyStatus_Exception(status) != 0 {
            return Err(WorkerError::Init(format!(
                "initialization as {} failed",
                program.display()
            )));
        }
        ffi::PyEval_SaveThread();
    }
    Ok(())
}

/// Runs the worker until its raylet tells it to exit or goes away.
pub fn run() -> Result<(), WorkerError> {
    initialize(sibling_python())?;
    Python::attach(|py| -> PyResult<()> {
        let sys = py.import("sys")?;
        sys.setattr("argv", vec!["rayd-worker"])?;
        if let Ok(extra) = std::env::var("RAYD_WORKER_PYTHONPATH") {
            let path = sys.getattr("path")?;
            for (i, entry) in std::env::split_paths(&extra).enumerate() {
                path.call_method1("insert", (i, entry.display().to_string()))?;
            }
        }
        py.import("ray._private.worker_main")?
            .call_method0("main")?;
        Ok(())
    })
    .map_err(|e| {
        Python::attach(|py| {
            let traceback = e
                .traceback(py)
                .and_then(|t| t.format().ok())
                .unwrap_or_default();
            WorkerError::Python(format!("{traceback}{e}"))
        })
    })
}

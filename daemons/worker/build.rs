//! Where the worker finds libpython (its RUNPATH).
//!
//! A dev build points at the libpython it was built against, so that a machine with
//! several Pythons (a distribution's and a pyenv one, say) loads the right one.
//! `make wheel` sets `RAYD_WORKER_RPATH` (`$ORIGIN/../lib`): a wheel must not name the
//! build machine's directories, so its worker finds libpython as a shared-library Python's
//! own `python3` does: next to its prefix (`bin/../lib`, e.g. /usr/local/lib), else on the
//! system's library path (`libpython3.11` of Debian and Ubuntu). See docs/decisions.md.

fn main() {
    println!("cargo:rerun-if-env-changed=RAYD_WORKER_RPATH");
    let rpath = match std::env::var("RAYD_WORKER_RPATH") {
        Ok(rpath) => Some(rpath),
        Err(_) => pyo3_build_config::get().lib_dir().map(str::to_string),
    };
    if let Some(rpath) = rpath.filter(|r| !r.is_empty()) {
        // RUNPATH (not RPATH): LD_LIBRARY_PATH still wins, as for any program.
        println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags,-rpath,{rpath}");
    }
}

//! Points the worker at the libpython it was built against (rpath), so that a machine
//! with several Pythons (a distribution's and a pyenv one, say) loads the right one.

fn main() {
    let config = pyo3_build_config::get();
    if let Some(dir) = config.lib_dir() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}

//! What both binaries share beyond the model (`reflow-crds` stays pure: no clap, no runtime):
//! the `token` subcommand's flags ([`cli`]) and the debounced folder watch both the standalone
//! dataplane and the controller's folder mode recompile from ([`folder`]).

pub mod cli;
pub mod folder;

pub use folder::{FolderWatch, WatchError, watch_folder};

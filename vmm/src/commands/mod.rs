//! The logic of each subcommand, one module each (`main.rs` parses the command line and calls
//! them), and the guest every one of them boots.
#![forbid(unsafe_code)]

pub mod corpus;
pub mod fuzz;
mod guest;
pub mod inspect;
pub mod replay;
pub mod run;

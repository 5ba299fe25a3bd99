//! The one PIM binary's library: hosting services (`pim serve`, `pim up`), bootstrap, and the
//! command line people use.

pub mod approval_bot;
pub mod bootstrap;
pub mod cli;
pub mod gateway;
pub mod host;

pub use host::{ServiceName, Suite, SuiteOptions};

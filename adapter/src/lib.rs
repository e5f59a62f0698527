pub mod clock;
pub mod config;
pub mod error;
pub mod secret;
pub mod store;

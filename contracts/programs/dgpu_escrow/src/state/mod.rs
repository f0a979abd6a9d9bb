pub mod config;
pub mod escrow;

pub use config::*;
pub use escrow::*;

pub mod config;
pub mod escrow;
pub mod renter;

pub use config::*;
pub use escrow::*;
pub use renter::*;

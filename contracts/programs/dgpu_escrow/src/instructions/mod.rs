//! One file per instruction (Squads v4 style): the accounts struct, an `XxxArgs` struct where
//! the instruction takes arguments, `validate()` (run by `#[access_control]`) with the rule
//! checks in the order of docs/escrow-rules.md (authority, status, then the instruction's own
//! conditions), and the handler.
//!
//! Structural account checks (PDAs, pinned mint and token program, destinations constrained by
//! owner and mint, the vault pinned to the escrow's ATA) are Anchor constraints and run before
//! `validate()`.

pub mod claim;
pub mod close;
pub mod initialize_config;
pub mod open;
pub mod refund_unstarted;
pub mod settle_expired;
pub mod start;
pub mod top_up;
pub mod update_config;
pub mod vault;

pub use claim::*;
pub use close::*;
pub use initialize_config::*;
pub use open::*;
pub use refund_unstarted::*;
pub use settle_expired::*;
pub use start::*;
pub use top_up::*;
pub use update_config::*;

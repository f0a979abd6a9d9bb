//! Seeds and limits.
//!
//! Every PDA kind has its own seed prefix, so a `Config` and an `Escrow` can never share an
//! address, and a future account kind must pick a new prefix.

use anchor_lang::prelude::*;

/// Seed of the single `Config` PDA: `[SEED_CONFIG]`.
#[constant]
pub const SEED_CONFIG: &[u8] = b"config";

/// Seed prefix of an `Escrow` PDA: `[SEED_ESCROW, renter, provider, rental_id.to_le_bytes()]`.
#[constant]
pub const SEED_ESCROW: &[u8] = b"escrow";

/// Hard cap on the protocol fee, in basis points (20%). Neither `initialize_config` nor
/// `update_config` can set more, and every escrow copies the fee it was opened with.
#[constant]
pub const MAX_FEE_BPS: u16 = 2_000;

/// Basis points in one whole.
pub const BPS_DENOMINATOR: u128 = 10_000;

/// Seconds in one billed minute.
pub const SECONDS_PER_MINUTE: i64 = 60;

/// Layout version written into every new `Escrow` (bump it when the layout changes).
#[constant]
pub const ESCROW_LAYOUT_VERSION: u8 = 1;

/// Layout version written into the `Config`.
#[constant]
pub const CONFIG_LAYOUT_VERSION: u8 = 1;

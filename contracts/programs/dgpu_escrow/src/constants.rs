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

/// Seed prefix of a `Renter` PDA: `[SEED_RENTER, renter]`.
#[constant]
pub const SEED_RENTER: &[u8] = b"renter";

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

/// Layout version written into every new `Renter`.
#[constant]
pub const RENTER_LAYOUT_VERSION: u8 = 1;

/// Layout version written into the `Config`.
#[constant]
pub const CONFIG_LAYOUT_VERSION: u8 = 1;

/// The public development admin: the Ed25519 key whose 32-byte secret seed is the ASCII text
/// `dgpu-escrow-dev-admin-NOT-SECRET`. Its secret is public on purpose: it is the admin of the
/// native tests and of the local development endpoint, never of a cluster.
pub const DEV_ADMIN: Pubkey = pubkey!("1KEqa8WFZd5TJsp5293z1hNZ2cTgvrCfePy8LdP17zg");

/// The only key that may run `initialize_config`, fixed when the program is built: the base58
/// key in the `DGPU_ESCROW_ADMIN` environment variable (the deployer's multisig), else
/// `DEV_ADMIN`. Whoever calls first therefore cannot take the config.
pub const ADMIN: Pubkey = match option_env!("DGPU_ESCROW_ADMIN") {
    Some(key) => Pubkey::from_str_const(key),
    None => DEV_ADMIN,
};

// A build for a cluster must name its admin (the development admin's secret is public); the
// `dev-admin` feature allows it anyway, for a throwaway local cluster.
#[cfg(all(target_os = "solana", not(feature = "dev-admin")))]
const _: () = assert!(
    option_env!("DGPU_ESCROW_ADMIN").is_some(),
    "set DGPU_ESCROW_ADMIN=<base58 admin key> to build dgpu_escrow for a cluster"
);

//! The program's errors: one enum.
//!
//! The first thirteen variants and `RentalIdUsed` are the error names of `docs/escrow-rules.md`,
//! shared with the Python ledgers (`dgpu.protocol.escrow`) and the test vectors; keep every
//! name and its position (the code is 6000 + position). The variants between them are
//! on-chain-only account checks that the ledger model has no counterpart for (a wrong mint, a
//! substituted vault, a fee above the cap, ...); new variants go at the end.

use anchor_lang::prelude::*;

#[error_code]
pub enum EscrowError {
    // ---- shared with the Python ledger (docs/escrow-rules.md) ----
    #[msg("rate_per_minute and max_minutes (or extra_minutes) must be greater than zero")]
    InvalidAmount,
    #[msg("amount does not fit the integer type")]
    Overflow,
    #[msg("start_deadline must be in the future")]
    InvalidDeadline,
    #[msg("new escrows are paused")]
    Paused,
    #[msg("signer is not allowed to do this")]
    Unauthorized,
    #[msg("escrow is closed")]
    EscrowClosed,
    #[msg("escrow has already started")]
    AlreadyStarted,
    #[msg("the start deadline has passed")]
    StartDeadlinePassed,
    #[msg("escrow has not started")]
    NotStarted,
    #[msg("no whole minute to claim")]
    NothingToClaim,
    #[msg("escrow has expired")]
    Expired,
    #[msg("escrow has not expired")]
    NotExpired,
    #[msg("the start deadline has not been reached")]
    StartDeadlineNotReached,

    // ---- on-chain account checks (not part of the ledger model) ----
    #[msg("fee_bps is above MAX_FEE_BPS")]
    FeeTooHigh,
    #[msg("renter and provider must be different keys")]
    SameParty,
    #[msg("mint is not the pinned dGPU mint")]
    InvalidMint,
    #[msg("treasury is not the configured treasury token account")]
    InvalidTreasury,
    #[msg("vault is not the escrow's associated token account")]
    InvalidVault,
    #[msg("vault holds less than the escrow's accounting says")]
    VaultBalanceMismatch,
    #[msg("the same token account is passed twice")]
    DuplicateAccount,

    // ---- shared with the Python ledger again (added after the account checks, codes are stable) ----
    #[msg("rental ids of a renter must increase: this one is not above the renter's last")]
    RentalIdUsed,
}

//! Events: one for every state change an indexer needs.

use anchor_lang::prelude::*;

#[event]
pub struct ConfigInitialized {
    pub admin: Pubkey,
    pub mint: Pubkey,
    pub treasury: Pubkey,
    pub fee_bps: u16,
    pub paused: bool,
}

#[event]
pub struct ConfigUpdated {
    pub admin: Pubkey,
    pub treasury: Pubkey,
    pub fee_bps: u16,
    pub paused: bool,
}

#[event]
pub struct EscrowOpened {
    pub escrow: Pubkey,
    pub renter: Pubkey,
    pub provider: Pubkey,
    pub mint: Pubkey,
    pub rental_id: u64,
    pub rate_per_minute: u64,
    pub max_minutes: u32,
    pub deposited: u64,
    pub fee_bps: u16,
    pub start_deadline: i64,
}

#[event]
pub struct EscrowStarted {
    pub escrow: Pubkey,
    pub started_at: i64,
    pub expires_at: i64,
}

#[event]
pub struct EscrowClaimed {
    pub escrow: Pubkey,
    /// Minutes paid before this claim.
    pub from_minutes: u32,
    /// Minutes paid after this claim.
    pub to_minutes: u32,
    pub provider_amount: u64,
    pub fee_amount: u64,
}

#[event]
pub struct EscrowToppedUp {
    pub escrow: Pubkey,
    pub extra_minutes: u32,
    pub amount: u64,
    pub max_minutes: u32,
    pub deposited: u64,
}

/// How an escrow reached `Closed`.
#[derive(AnchorSerialize, AnchorDeserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SettleKind {
    /// `close`, by the renter or the provider.
    Close,
    /// `settle_expired`, by anyone after expiry.
    SettleExpired,
    /// `refund_unstarted`, by the renter after the start deadline.
    RefundUnstarted,
}

#[event]
pub struct EscrowSettled {
    pub escrow: Pubkey,
    pub kind: SettleKind,
    /// What this final step paid the provider and the treasury.
    pub provider_amount: u64,
    pub fee_amount: u64,
    /// What went back to the renter (the accounting refund; any dust sent to the vault by
    /// a third party goes back to the renter as well and is not counted here).
    pub refund: u64,
    /// Final totals (paid + fee_paid + refunded == deposited).
    pub claimed_minutes: u32,
    pub paid: u64,
    pub fee_paid: u64,
    pub refunded: u64,
}
